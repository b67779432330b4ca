"""Tests of the embedded CA (estproto.ca): init, issuing through the handler,
authorization, manual approval, serverkeygen, fullcmc, durability, faults."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder
from cryptography.x509.verification import Store as TrustStore

from estproto import (
    AuthenticationRequired,
    CACertsRequest,
    CACertsResponse,
    CertificateResponse,
    ConnectionFacts,
    CSRAttrsRequest,
    CSRAttrsResponse,
    ErrorResponse,
    FullCMCRequest,
    FullCMCResponse,
    RetryLater,
    ServerKeygenRequest,
    ServerKeygenResponse,
    ServerRequest,
    ServerResponse,
    ServerTLSContext,
    SimpleEnrollRequest,
    SimpleReenrollRequest,
)
from estproto import auth
from estproto.ca import (
    CABackend,
    CAError,
    CASettings,
    EmbeddedCA,
    PendingState,
    Principal,
    SQLiteStore,
    StoreError,
    make_handler,
)
from estproto.codecs import cmc, csrattrs, pkcs10, serverkey
from test_store import read_only

BASIC = auth.BasicCredentials("alice", "secret")
FACTS = ConnectionFacts(peer="127.0.0.1:1")


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_csr(key: Any, cn: str = "device", sans: tuple[str, ...] = ("device.example",),
             **kwargs: Any) -> pkcs10.CertificationRequest:
    der = pkcs10.build_csr(key, name(cn), subject_alt_names=[x509.DNSName(s) for s in sans], **kwargs)
    return pkcs10.decode_csr(der)


def enroll(csr: pkcs10.CertificationRequest, creds: Any = BASIC, facts: ConnectionFacts = FACTS,
           label: str = "") -> SimpleEnrollRequest:
    return SimpleEnrollRequest(label=label, credentials=creds, facts=facts, csr=csr)


def cert_facts(cert: x509.Certificate, verified: bool = True) -> ConnectionFacts:
    return ConnectionFacts(client_certificate=cert, client_certificate_verified=verified)


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ca") / "data"
    with EmbeddedCA.init(d, hostnames=("127.0.0.1", "localhost", "est.example")) as ca:
        ca.add_user("alice", "secret")
    return d


@pytest.fixture
def ca(ca_dir: Path) -> Iterator[EmbeddedCA]:
    with EmbeddedCA.open(ca_dir) as c:
        yield c


# ---------------------------------------------------------------------------
# init, files, trust


def test_init_is_idempotent_and_files_are_private(ca_dir: Path) -> None:
    root_before = (ca_dir / "root.pem").read_bytes()
    key_before = (ca_dir / "root.key").read_bytes()
    with EmbeddedCA.init(ca_dir, hostnames=("127.0.0.1",)) as again:
        assert (ca_dir / "root.pem").read_bytes() == root_before
        assert (ca_dir / "root.key").read_bytes() == key_before
        assert again.list_users() == ["alice"]
    for private in ("root.key", "server.key", "digest.secret", "estproto.db"):
        assert (ca_dir / private).stat().st_mode & 0o777 == 0o600, private
    assert (ca_dir / "ca.pem").read_bytes() == root_before


def test_open_uninitialised_directory_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="estproto ca init"):
        EmbeddedCA.open(tmp_path)


def test_init_adds_new_hostnames_to_the_server_certificate(tmp_path: Path) -> None:
    with EmbeddedCA.init(tmp_path, hostnames=("127.0.0.1",)) as ca:
        first = ca.server_certificate
    with EmbeddedCA.init(tmp_path, hostnames=("est.local",)) as ca:
        san = ca.server_certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert x509.DNSName("est.local") in san
        assert x509.IPAddress(ipaddress.ip_address("127.0.0.1")) in san
        assert ca.server_certificate.serial_number != first.serial_number
        assert ca.store.get_issued(format(ca.server_certificate.serial_number, "x")) is not None


def verify_server(trust: list[x509.Certificate], cert: x509.Certificate, host: x509.GeneralName,
                  intermediates: list[x509.Certificate]) -> None:
    verifier = PolicyBuilder().store(TrustStore(trust)).build_server_verifier(host)  # type: ignore[arg-type]
    verifier.verify(cert, intermediates)


@pytest.mark.parametrize("intermediate", [False, True])
def test_ca_pem_verifies_server_and_issued_certificates(
    tmp_path: Path, key: Any, openssl: str, intermediate: bool
) -> None:
    with EmbeddedCA.init(tmp_path, intermediate=intermediate) as ca:
        ca.add_user("alice", "secret")
        response = ca.handler()(enroll(make_csr(key)))
        assert isinstance(response, CertificateResponse)
        trust_pem = (tmp_path / "ca.pem").read_bytes()
        trust = x509.load_pem_x509_certificates(trust_pem)
        assert len(trust) == (2 if intermediate else 1)
        roots = [c for c in trust if c.subject == c.issuer]
        chain = [c for c in trust if c.subject != c.issuer]
        verify_server(roots, ca.server_certificate, x509.IPAddress(ipaddress.ip_address("127.0.0.1")), chain)
        verify_server(roots, ca.server_certificate, x509.DNSName("localhost"), chain)
        client_verifier = PolicyBuilder().store(TrustStore(roots)).build_client_verifier()
        client_verifier.verify(response.certificate, chain)
        leaf = tmp_path / "leaf.pem"
        server = tmp_path / "server.pem"
        leaf.write_bytes(response.certificate.public_bytes(serialization.Encoding.PEM))
        for path, purpose in ((leaf, "sslclient"), (server, "sslserver")):
            proc = subprocess.run([openssl, "verify", "-purpose", purpose, "-CAfile",
                                   str(tmp_path / "ca.pem"), str(path)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        # The TLS context builds with our chain and trust anchors.
        assert isinstance(ca.server_tls_context(), ServerTLSContext)


def test_fingerprint_is_sha256_of_root(ca: EmbeddedCA, openssl: str, ca_dir: Path) -> None:
    out = subprocess.run([openssl, "x509", "-noout", "-fingerprint", "-sha256", "-in",
                          str(ca_dir / "root.pem")], capture_output=True, text=True, check=True)
    assert out.stdout.strip().split("=", 1)[1] == ca.fingerprint()


def test_issued_certificate_profile(ca: EmbeddedCA, key: Any) -> None:
    csr = make_csr(key, "dev-1", ("dev-1.example",), extensions=[
        x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=True, path_length=None)),
    ])
    response = ca.handler()(enroll(csr))
    assert isinstance(response, CertificateResponse)
    cert = response.certificate
    assert cert.subject == name("dev-1")
    assert cert.issuer == ca.issuer_certificate.subject
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False  # request ignored
    assert list(ext.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.DNSName("dev-1.example")]
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in ext.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    ku = ext.get_extension_for_class(x509.KeyUsage).value
    # An EC key: signing, and key agreement (RFC 7030 4.4.1.2: it may receive
    # an encrypted server-generated key); never key transport or commitment.
    assert ku.digital_signature and ku.key_agreement
    assert not ku.key_encipherment and not ku.content_commitment
    # RFC 5280 4.2.1.2 method (1) over the requested key; AKI names the issuer's.
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == \
        x509.SubjectKeyIdentifier.from_public_key(ca.issuer_certificate.public_key()).digest
    record = ca.store.get_issued(format(cert.serial_number, "x"))
    assert record is not None and record.requester == "user:alice" and record.request_der == csr.der
    assert record.operation == "simpleenroll" and "dev-1.example" in record.san


@pytest.mark.parametrize("key_type, digest", [("p256", "sha256"), ("rsa", "sha256"), ("ed25519", None)])
def test_each_ca_key_type_signs_with_its_digest(tmp_path: Path, key: Any, key_type: str,
                                                digest: str | None) -> None:
    # The signer picks the digest once per key: a wrong pick would still
    # sign, with the wrong algorithm (or fail for EdDSA, which takes none).
    with EmbeddedCA.init(tmp_path / "data", hostnames=("127.0.0.1",), key_type=key_type) as ca:
        ca.add_user("alice", "secret")
        for handler in (ca.handler(), ca.inline_handler()):
            response = handler(enroll(make_csr(key, f"dev-{key_type}", ())))
            if not isinstance(response, CertificateResponse):
                response = _wait(response)  # the inline handler's ResponseFuture
            cert = response.certificate
            algorithm = cert.signature_hash_algorithm
            assert (algorithm.name if algorithm else None) == digest
            cert.verify_directly_issued_by(ca.issuer_certificate)


def _wait(future: Any) -> CertificateResponse:
    """An inline handler's ResponseFuture, flushed and waited for."""
    if future.flush is not None:
        future.flush()
    done = threading.Event()
    future.on_done(done.set)
    assert done.wait(10)
    result = future.result()
    assert isinstance(result, CertificateResponse)
    return result


def test_cacerts_and_csrattrs_need_no_authentication(ca: EmbeddedCA) -> None:
    h = ca.handler()
    got = h(CACertsRequest(label="", credentials=None, facts=FACTS))
    assert isinstance(got, CACertsResponse) and got.certificates == ca.ca_certificates
    attrs = h(CSRAttrsRequest(label="", credentials=None, facts=FACTS))
    assert isinstance(attrs, CSRAttrsResponse) and attrs.attributes is not None
    decoded = csrattrs.decode_csrattrs(csrattrs.encode_csrattrs(attrs.attributes))
    assert decoded.key_type is not None and decoded.key_type.algorithm == csrattrs.ID_EC_PUBLIC_KEY
    assert not decoded.challenge_password_required
    assert h(CACertsRequest(label="nope", credentials=None, facts=FACTS)) == ErrorResponse(
        404, "unknown CA label")


def test_csrattrs_lists_challenge_password_when_pop_is_required(ca_dir: Path) -> None:
    with EmbeddedCA.open(ca_dir, settings=CASettings(pop_policy=auth.PoPPolicy.REQUIRE)) as ca:
        attrs = ca.csrattrs("")
        assert attrs is not None and attrs.challenge_password_required
        assert ca.est_settings().pop_policy is auth.PoPPolicy.REQUIRE


# ---------------------------------------------------------------------------
# authorization


def test_wrong_password_and_unknown_user_get_the_same_401(ca: EmbeddedCA, key: Any) -> None:
    h = ca.handler()
    csr = make_csr(key)
    for creds in (auth.BasicCredentials("alice", "wrong"), auth.BasicCredentials("mallory", "secret"),
                  None):
        response = h(enroll(csr, creds))
        assert isinstance(response, AuthenticationRequired)
        schemes = [c.split(" ", 1)[0] for c in response.challenges]
        assert schemes == ["Basic", "Digest", "Digest"]  # the default order (CASettings.auth_schemes)
    assert ca.store.count_issued() >= 1


def test_digest_authentication(ca: EmbeddedCA, key: Any) -> None:
    h = ca.handler()
    csr = make_csr(key)
    first = h(enroll(csr, None))
    assert isinstance(first, AuthenticationRequired)
    challenges = auth.parse_challenges(first.challenges)
    for algorithm in ("digest-sha-256", "digest-md5"):
        value = auth.answer_challenge(challenges, "alice", "secret", "POST",
                                      "/.well-known/est/simpleenroll", server_authorized=True,
                                      prefer=(algorithm,))
        assert value is not None
        creds = auth.parse_authorization(value)
        assert isinstance(h(enroll(csr, creds)), CertificateResponse)
    wrong = auth.parse_authorization(auth.answer_challenge(
        challenges, "alice", "nope", "POST", "/.well-known/est/simpleenroll", server_authorized=True)
        or "")
    assert isinstance(h(enroll(csr, wrong)), AuthenticationRequired)
    # A response computed for another resource does not authorize this one.
    other = auth.parse_authorization(auth.answer_challenge(
        challenges, "alice", "secret", "POST", "/.well-known/est/serverkeygen",
        server_authorized=True) or "")
    assert isinstance(h(enroll(csr, other)), AuthenticationRequired)


def test_client_certificate_authorization_and_revocation(ca: EmbeddedCA, key: Any) -> None:
    h = ca.handler()
    issued = h(enroll(make_csr(key, "certdev", ("certdev.example",))))
    assert isinstance(issued, CertificateResponse)
    cert = issued.certificate
    csr = make_csr(key, "other", ("other.example",))
    by_cert = h(enroll(csr, None, cert_facts(cert)))
    assert isinstance(by_cert, CertificateResponse)
    record = ca.store.get_issued(format(by_cert.certificate.serial_number, "x"))
    assert record is not None and record.requester == f"cert:{cert.serial_number:x}"
    # Not verified by the TLS layer: not accepted.
    assert isinstance(h(enroll(csr, None, cert_facts(cert, verified=False))), AuthenticationRequired)
    # Re-enrollment with the certificate works until it is revoked.
    renew_csr = make_csr(key, "certdev", ("certdev.example",))
    reenroll = SimpleReenrollRequest(label="", credentials=None, facts=cert_facts(cert), csr=renew_csr)
    assert isinstance(h(reenroll), CertificateResponse)
    ca.revoke(cert.serial_number, "keyCompromise")
    assert isinstance(h(enroll(csr, None, cert_facts(cert))), AuthenticationRequired)
    refused = h(reenroll)
    assert isinstance(refused, ErrorResponse) and refused.status == 403
    # Even with a valid password, a revoked certificate cannot re-enroll.
    refused = h(SimpleReenrollRequest(label="", credentials=BASIC, facts=cert_facts(cert), csr=renew_csr))
    assert isinstance(refused, ErrorResponse) and refused.status == 403


def test_foreign_certificate_cannot_reenroll(ca: EmbeddedCA, key: Any) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    # Same subject and key as a real device, signed by somebody else.
    foreign = (x509.CertificateBuilder().subject_name(name("device")).issuer_name(name("device"))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
               .sign(other_key, hashes.SHA256()))
    request = SimpleReenrollRequest(label="", credentials=BASIC, facts=cert_facts(foreign),
                                    csr=make_csr(key))
    refused = ca.handler()(request)
    assert isinstance(refused, ErrorResponse) and refused.status == 403


def test_secrets_never_reach_the_logs(ca: EmbeddedCA, key: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    h = ca.handler()
    h(enroll(make_csr(key), auth.BasicCredentials("alice", "hunter2-very-secret")))
    h(enroll(make_csr(key), auth.BasicCredentials("hunter3-user", "hunter3-pass")))
    assert "Basic authentication failed" in caplog.text
    assert "hunter2" not in caplog.text and "hunter3-pass" not in caplog.text


# ---------------------------------------------------------------------------
# manual approval


def test_manual_approval_flow(ca_dir: Path, key: Any) -> None:
    settings = CASettings(manual_approval=True, retry_after=7)
    with EmbeddedCA.open(ca_dir, settings=settings) as ca:
        h = ca.handler()
        csr = make_csr(key, "waiting", ("waiting.example",), challenge_password="binding-one")
        first = h(enroll(csr))
        assert isinstance(first, RetryLater) and first.retry_after == 7
        pending = ca.list_pending()
        assert len(pending) == 1 and pending[0].requester == "user:alice"
        # The retry on a new TLS connection regenerates the PoP-linked CSR:
        # different bytes, same key and names: still the same request.
        again = make_csr(key, "waiting", ("waiting.example",), challenge_password="binding-two")
        assert again.der != csr.der
        assert isinstance(h(enroll(again)), RetryLater)
        assert len(ca.list_pending()) == 1
        # Another requester with the same CSR is another request.
        cert_user = ca.store.list_issued()[0].certificate
        assert isinstance(h(enroll(again, None, cert_facts(cert_user))), RetryLater)
        assert len(ca.list_pending()) == 2
        count = ca.store.count_issued()
        # The operator approves (from another process: a separate store).
        with EmbeddedCA.open(ca_dir) as operator:
            operator.approve(pending[0].id)
        issued = h(enroll(again))
        assert isinstance(issued, CertificateResponse)
        assert issued.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == csr.public_key_der
        assert ca.store.count_issued() == count + 1
        record = ca.store.get_pending(pending[0].id)
        assert record is not None and record.state is PendingState.ISSUED
        assert record.serial == format(issued.certificate.serial_number, "x")
        # A lost response is answered again with the same certificate.
        repeat = h(enroll(csr))
        assert isinstance(repeat, CertificateResponse) and repeat.certificate == issued.certificate
        assert ca.store.count_issued() == count + 1
        # Rejection.
        other = ca.list_pending()[0]
        ca.reject(other.id, "unknown device")
        refused = h(enroll(again, None, cert_facts(cert_user)))
        assert isinstance(refused, ErrorResponse) and refused.status == 403
        with pytest.raises(Exception, match="already"):
            ca.approve(other.id)


def test_pending_request_survives_a_restart(tmp_path: Path, key: Any) -> None:
    # Issue 6: pending (202) requests live in the store, not in memory.
    data = tmp_path / "data"
    settings = CASettings(manual_approval=True, retry_after=5)
    with EmbeddedCA.init(data, hostnames=("127.0.0.1",), settings=settings) as ca:
        ca.add_user("alice", "secret")
        csr = make_csr(key, "restart", ("restart.example",))
        assert isinstance(ca.handler()(enroll(csr)), RetryLater)
    with EmbeddedCA.open(data, settings=settings) as ca:  # the "restarted" server
        pending = ca.list_pending()
        assert [p.requester for p in pending] == ["user:alice"]
        ca.approve(pending[0].id)
        issued = ca.handler()(enroll(csr))
        assert isinstance(issued, CertificateResponse)
        assert issued.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == csr.public_key_der


# ---------------------------------------------------------------------------
# serverkeygen and fullcmc


@pytest.mark.parametrize("kind", ["p256", "rsa"])
def test_serverkeygen_follows_the_csr_key_type(ca: EmbeddedCA, kind: str) -> None:
    request_key = ec.generate_private_key(ec.SECP384R1()) if kind == "p256" else \
        rsa.generate_private_key(65537, 2048)
    csr = make_csr(request_key, "keygen", ("keygen.example",))
    response = ca.handler()(ServerKeygenRequest(label="", credentials=BASIC, facts=FACTS, csr=csr))
    assert isinstance(response, ServerKeygenResponse) and response.private_key is not None
    generated = response.private_key
    assert type(generated.public_key()) is type(request_key.public_key())  # noqa: E721
    assert generated.public_key() != request_key.public_key()
    assert response.certificate.public_key() == generated.public_key()
    assert ca.store.get_issued(format(response.certificate.serial_number, "x")) is not None


def test_serverkeygen_encrypted_to_a_kek(ca_dir: Path, key: Any) -> None:
    kek, kek_id = os.urandom(32), b"kek-1"
    with EmbeddedCA.open(ca_dir, settings=CASettings(keks={kek_id: kek})) as ca:
        h = ca.handler()
        csr = make_csr(key, "enc", ("enc.example",), decrypt_key_identifier=kek_id)
        response = h(ServerKeygenRequest(label="", credentials=BASIC, facts=FACTS, csr=csr))
        assert isinstance(response, ServerKeygenResponse) and response.encrypted_key is not None
        package = serverkey.decrypt_key_package(response.encrypted_key, kek=kek, key_identifier=kek_id)
        assert package.private_key.public_key() == response.certificate.public_key()
        unknown = make_csr(key, "enc", ("enc.example",), decrypt_key_identifier=b"nope")
        refused = h(ServerKeygenRequest(label="", credentials=BASIC, facts=FACTS, csr=unknown))
        assert isinstance(refused, ErrorResponse) and refused.status == 400


def _device_cert(ca: EmbeddedCA, device_key: Any, cn: str) -> x509.Certificate:
    issued = ca.handler()(enroll(make_csr(device_key, cn, (f"{cn}.example",))))
    assert isinstance(issued, CertificateResponse)
    return issued.certificate


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa"])
def test_serverkeygen_encrypted_to_the_client_certificate(ca: EmbeddedCA, kind: str) -> None:
    # RFC 7030 4.4.2: ktri for an RSA key, kari for an EC key; 4.4.1.2: the
    # identifier must name the (verified) client certificate's key.
    device_key: Any = (rsa.generate_private_key(65537, 2048) if kind == "rsa" else
                       ec.generate_private_key(ec.SECP256R1() if kind == "p256" else ec.SECP384R1()))
    device = _device_cert(ca, device_key, f"enc-{kind}")
    ski = device.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    csr = make_csr(device_key, f"enc-{kind}", (f"enc-{kind}.example",),
                   asymmetric_decrypt_key_identifier=ski)
    h = ca.handler()
    response = h(ServerKeygenRequest(label="", credentials=None, facts=cert_facts(device), csr=csr))
    assert isinstance(response, ServerKeygenResponse) and response.encrypted_key is not None
    assert response.private_key is None
    kinds = [ri.name for ri in cms.ContentInfo.load(response.encrypted_key)["content"]["recipient_infos"]]
    assert kinds == (["ktri"] if kind == "rsa" else ["kari"])
    package = serverkey.decrypt_key_package(
        response.encrypted_key, recipient_private_key=device_key, subject_key_identifier=ski)
    assert package.private_key.public_key() == response.certificate.public_key()

    # An identifier that is not the certificate's, or an unverified
    # certificate, is refused (the request "MUST be terminated").
    other = make_csr(device_key, f"enc-{kind}", (f"enc-{kind}.example",),
                     asymmetric_decrypt_key_identifier=b"not-the-ski")
    for facts, request_csr in ((cert_facts(device), other), (cert_facts(device, verified=False), csr)):
        refused = h(ServerKeygenRequest(label="", credentials=BASIC, facts=facts, csr=request_csr))
        assert isinstance(refused, ErrorResponse) and refused.status == 400


def test_serverkeygen_refuses_a_key_not_allowed_to_receive_keys(ca: EmbeddedCA, key: Any) -> None:
    # 4.4.1.2: "the key MUST either explicitly support keyTransport or
    # keyAgreement or its use MUST be unrestricted": an EC certificate
    # whose keyUsage is digitalSignature only may not receive a kari.
    signing_only = (
        x509.CertificateBuilder()
        .subject_name(name("signer")).issuer_name(name("signer"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2024, 1, 1)).not_valid_after(datetime.datetime(2034, 1, 1))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    ski = signing_only.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    csr = make_csr(key, "signer", ("signer.example",), asymmetric_decrypt_key_identifier=ski)
    refused = ca.handler()(ServerKeygenRequest(
        label="", credentials=BASIC, facts=cert_facts(signing_only), csr=csr))
    assert isinstance(refused, ErrorResponse) and refused.status == 400
    assert "keyAgreement" in refused.reason


def test_fullcmc_success_and_pop_failure(ca: EmbeddedCA, key: Any) -> None:
    h = ca.handler()
    csr_der = pkcs10.build_csr(key, name("cmc"), subject_alt_names=[x509.DNSName("cmc.example")])
    der = cmc.build_full_pki_request(csr_der, key, transaction_id=42, sender_nonce=b"n" * 16)
    request = FullCMCRequest(label="", credentials=BASIC, facts=FACTS,
                             request=cmc.decode_full_pki_request(der), der=der)
    response = h(request)
    assert isinstance(response, FullCMCResponse) and response.status == 200
    decoded = cmc.decode_full_pki_response(response.der)
    assert decoded.status is cmc.CMCStatus.SUCCESS and decoded.verified
    assert decoded.transaction_id == 42 and decoded.recipient_nonce == b"n" * 16
    issued = [c for c in decoded.certificates if c.subject == name("cmc")]
    assert len(issued) == 1
    assert ca.store.get_issued(format(issued[0].serial_number, "x")) is not None
    # A challengePassword that does not match the channel binding: popFailed.
    bad_der = pkcs10.build_csr(key, name("cmc"), challenge_password="AAAA")
    der = cmc.build_full_pki_request(bad_der, key)
    facts = ConnectionFacts(channel_binding=b"x" * 12)
    response = h(FullCMCRequest(label="", credentials=BASIC, facts=facts,
                                request=cmc.decode_full_pki_request(der), der=der))
    assert isinstance(response, FullCMCResponse) and response.status == 400
    failed = cmc.decode_full_pki_response(response.der)
    assert failed.status is cmc.CMCStatus.FAILED and failed.fail_info is cmc.CMCFailInfo.POP_FAILED


# ---------------------------------------------------------------------------
# the handler's error handling


def make_ca_cert() -> x509.Certificate:
    k = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name("x")).issuer_name(name("x"))
            .public_key(k.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(k, hashes.SHA256()))


class Broken(CABackend):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def authorize(self, request: ServerRequest) -> Principal | ServerResponse:
        return Principal("test", "test")

    def cacerts(self, label: str) -> tuple[x509.Certificate, ...]:
        raise self.error

    def csrattrs(self, label: str) -> csrattrs.CsrAttributes | None:
        return None

    def enroll(self, request: SimpleEnrollRequest, principal: Principal) -> ServerResponse:
        raise self.error

    def reenroll(self, request: SimpleReenrollRequest, principal: Principal) -> ServerResponse:
        # A response of the wrong kind for the operation: a backend bug.
        return CACertsResponse((make_ca_cert(),))


def test_handler_turns_backend_failures_into_5xx(key: Any, caplog: pytest.LogCaptureFixture) -> None:
    h = make_handler(Broken(RuntimeError("db password=topsecret")))
    response = h(enroll(make_csr(key)))
    assert response == ErrorResponse(500, "internal CA error")
    assert "topsecret" not in str(response)
    h = make_handler(Broken(StoreError("disk full")))
    assert h(enroll(make_csr(key))) == ErrorResponse(
        503, "certificate store unavailable, try again later")
    csr = make_csr(key)
    h = make_handler(Broken(RuntimeError()))
    # Optional operations default to 501 (RFC 7030 4.3.2: "not implemented").
    assert h(ServerKeygenRequest(label="", credentials=None, facts=FACTS, csr=csr)) == ErrorResponse(
        501, "server-side key generation is not offered")
    reenroll = SimpleReenrollRequest(label="", credentials=None, facts=FACTS, csr=csr)
    assert h(reenroll) == ErrorResponse(500, "internal CA error")
    assert "CACertsResponse" in caplog.text


# ---------------------------------------------------------------------------
# concurrency, durability, faults


def test_concurrent_issuing_gives_unique_serials(ca_dir: Path, key: Any) -> None:
    with EmbeddedCA.open(ca_dir) as ca:
        h = ca.handler()
        before = ca.store.count_issued()
        serials: list[int] = []
        errors: list[object] = []
        lock = threading.Lock()
        csr = make_csr(key, "many", ("many.example",))

        def work() -> None:
            for _ in range(50):
                response = h(enroll(csr))
                if not isinstance(response, CertificateResponse):
                    errors.append(response)
                    continue
                with lock:
                    serials.append(response.certificate.serial_number)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(serials) == 400 and len(set(serials)) == 400
        assert ca.store.count_issued() == before + 400
        for serial in serials[::40]:
            assert ca.store.get_issued(format(serial, "x")) is not None
        assert isinstance(ca.store, SQLiteStore) and ca.store.commits < ca.store.jobs


KILL_SCRIPT = textwrap.dedent('''
    import sys, threading
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from estproto import ConnectionFacts, SimpleEnrollRequest, CertificateResponse
    from estproto.auth import BasicCredentials
    from estproto.ca import EmbeddedCA
    from estproto.codecs import pkcs10

    ca = EmbeddedCA.open(sys.argv[1])
    handler = ca.handler()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "killed")])
    csr = pkcs10.decode_csr(pkcs10.build_csr(key, name))
    request = SimpleEnrollRequest(label="", credentials=BasicCredentials("alice", "secret"),
                                  facts=ConnectionFacts(), csr=csr)
    lock = threading.Lock()

    def loop():
        while True:
            response = handler(request)
            assert isinstance(response, CertificateResponse), response
            # Printed only after the handler returned the certificate.
            with lock:
                sys.stdout.write(format(response.certificate.serial_number, "x") + "\\n")
                sys.stdout.flush()

    for _ in range(4):
        threading.Thread(target=loop, daemon=True).start()
    threading.Event().wait()
''')


def test_kill_9_loses_no_issued_certificate(ca_dir: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(ca_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    received: list[str] = []
    try:
        for raw in proc.stdout:
            received.append(raw.decode())
            if len(received) >= 150:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
    received += rest.decode().splitlines(keepends=True)
    serials = [line.strip() for line in received if line.endswith("\n")]
    assert len(serials) >= 150, err.decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    with SQLiteStore(ca_dir / "estproto.db") as store:
        missing = [s for s in serials if store.get_issued(s) is None]
    assert missing == []


def test_read_only_data_dir_is_a_store_error(tmp_path: Path) -> None:
    d = tmp_path / "data"
    EmbeddedCA.init(d).close()
    with read_only(d):
        with pytest.raises(StoreError, match="read-only"):
            EmbeddedCA.open(d)


def test_disk_full_answers_503_and_never_an_unrecorded_certificate(tmp_path: Path, key: Any) -> None:
    d = tmp_path / "data"
    with EmbeddedCA.init(d) as ca:
        ca.add_user("alice", "secret")
    import sqlite3

    conn = sqlite3.connect(d / "estproto.db")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    store = SQLiteStore(d / "estproto.db", max_pages=pages + 3)
    with EmbeddedCA.open(d, store=store) as ca:
        h = ca.handler()
        csr = make_csr(key)
        got: list[ServerResponse] = [h(enroll(csr)) for _ in range(60)]
        certs = [r for r in got if isinstance(r, CertificateResponse)]
        failures = [r for r in got if not isinstance(r, CertificateResponse)]
        assert failures and all(r == ErrorResponse(503, "certificate store unavailable, try again later")
                                for r in failures)
        for response in certs:
            assert store.get_issued(format(response.certificate.serial_number, "x")) is not None
        # Still answering (reads work).
        assert isinstance(h(CACertsRequest(label="", credentials=None, facts=FACTS)), CACertsResponse)
