"""Interop: openssl reads what estproto produces; openssl's CSRs enroll.

Issue 5, "Interop tests", openssl row. Each structure estproto builds is
handed to the matching openssl subcommand (a real process):

* certs-only PKCS#7 (``encode_certs_only``, and the /cacerts and
  /simpleenroll bodies of the running server): ``openssl pkcs7
  -print_certs`` lists exactly the certificates put in;
* PKCS#8 (``serverkey.encode_private_key``, every key kind):
  ``openssl pkey`` reads it and derives the same public key;
* CMS: the /fullcmc Full PKI Response of the running server
  (``openssl cms -verify -noverify``: the signature verifies with the
  certificate carried inside; content type id-cct-PKIResponse), and the
  encrypted /serverkeygen key (EnvelopedData -> SignedData ->
  AsymmetricKeyPackage) opened with ``openssl cms -decrypt`` for a KEK
  (kekri) and an RSA (ktri) recipient, then verified with ``openssl cms
  -verify``; our Full PKI Request is printed by ``openssl cms -cmsout``;
* PKCS#10 (``pkcs10.build_csr``, all key kinds and attribute kinds):
  ``openssl req -verify``.

Then CSRs made by ``openssl req`` (RSA-2048, EC P-256, Ed25519) enroll
through the server with estproto's own clients (trio and asyncio adapters)
and the certificates are checked with openssl (key, chain, subject).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import re
from pathlib import Path
from typing import Iterator

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import estproto.asyncio as est_asyncio
import estproto.trio as est_trio
import pki
from conftest import require_tool
from estproto import ClientTLSContext, Credentials, DecodeError
from estproto.codecs import cmc, pkcs7, pkcs10, serverkey
from interop_server import (
    PASSWORD,
    USER,
    RunningServer,
    certs_from_pkcs7,
    check_issued,
    describe,
    pubkey_of,
    run,
)

#: Seconds curl may spend on one exchange.
CURL_TIMEOUT = "15"

#: Keys are expensive (RSA); make each kind once per module.
_key = functools.lru_cache(maxsize=None)(pki.make_key)


@pytest.fixture(scope="module")
def openssl_tool() -> str:
    return require_tool("openssl")


@pytest.fixture
def openssl(openssl_tool: str) -> str:
    return openssl_tool


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, openssl_tool: str,
           server_framework: str) -> Iterator[RunningServer]:
    srv = RunningServer(tmp_path_factory.mktemp("openssl-ca"), framework=server_framework).start()
    try:
        yield srv
    finally:
        srv.stop()


def pem_public(key: pki.PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def content_info(oid_der_content: bytes, inner: bytes) -> bytes:
    """DER ContentInfo { contentType, [0] EXPLICIT content } (RFC 5652 3)."""
    def tlv(tag: int, body: bytes) -> bytes:
        n = len(body)
        if n < 0x80:
            length = bytes([n])
        else:
            raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
            length = bytes([0x80 | len(raw)]) + raw
        return bytes([tag]) + length + body
    return tlv(0x30, tlv(0x06, oid_der_content) + tlv(0xA0, inner))


_OID_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2


# ---------------------------------------------------------------------------
# PKCS#7 certs-only


def test_certs_only_pkcs7_is_read_by_openssl(openssl: str, tmp_path: Path) -> None:
    root, root_key = pki.make_ca("Interop Root")
    leaves = [pki.issue(root, root_key, _key(kind).public_key(), cn=f"leaf-{kind}")
              for kind in ("p256", "ed25519")]
    der = pkcs7.encode_certs_only([root, *leaves])
    listed = certs_from_pkcs7(openssl, write(tmp_path / "p7.der", der), "-inform", "DER")
    assert sorted(listed) == sorted(pki.pem(c) for c in [root, *leaves])
    # openssl keeps its input order (no DER SET OF sorting); given the
    # certificates in our order, its encoding is byte-identical to ours.
    pem_in = write(tmp_path / "in.pem", b"".join(listed))
    theirs = run([openssl, "crl2pkcs7", "-nocrl", "-certfile", pem_in, "-outform", "DER"]).stdout
    assert theirs == der


def test_server_pkcs7_bodies_are_read_by_openssl(openssl: str, server: RunningServer,
                                                 tmp_path: Path) -> None:
    """/cacerts and /simpleenroll bodies of the running server, fetched with
    curl, decoded from base64 with ``openssl base64 -d -A`` (one line)."""
    curl = require_tool("curl")
    csr = pkcs10.build_csr(_key("p256"), pki.name("openssl-p7"))
    b64 = write(tmp_path / "csr.b64", base64.b64encode(csr))
    for op, extra in (("cacerts", []), ("simpleenroll", [
            "--user", f"{USER}:{PASSWORD}", "--data", f"@{b64}",
            "-H", "Content-Type: application/pkcs10"])):
        body = tmp_path / f"{op}.b64"
        proc = run([curl, "-sS", "--max-time", CURL_TIMEOUT, "--cacert", server.trust, *extra,
                    "-o", body, f"{server.url}/{op}"], check=False)
        assert proc.returncode == 0, describe(proc, server)
        text = body.read_bytes()
        assert text.endswith(b"\n") and text.count(b"\n") == 1, "single line + LF by default"
        der = run([openssl, "base64", "-d", "-A", "-in", body]).stdout
        assert der == base64.b64decode(text)
        certs = certs_from_pkcs7(openssl, write(tmp_path / f"{op}.der", der), "-inform", "DER")
        assert len(certs) == 1
        if op == "simpleenroll":
            assert pubkey_of(openssl, "x509", write(tmp_path / "leaf.pem", certs[0])) == \
                pem_public(_key("p256"))


# ---------------------------------------------------------------------------
# PKCS#8


@pytest.mark.parametrize("kind", pki.KEY_KINDS)
def test_pkcs8_is_read_by_openssl(openssl: str, tmp_path: Path, kind: str) -> None:
    key = _key(kind)
    der = write(tmp_path / "key.p8", serverkey.encode_private_key(key))
    run([openssl, "pkey", "-inform", "DER", "-in", der, "-noout"])
    assert pubkey_of(openssl, "pkey", der, "-inform", "DER") == pem_public(key)
    # And back: openssl's PKCS#8 of it decodes to the same key ...
    again = run([openssl, "pkcs8", "-topk8", "-nocrypt", "-inform", "DER", "-in", der,
                 "-outform", "DER"]).stdout
    assert pem_public(serverkey.decode_private_key(again)) == pem_public(key)
    # ... and so does its "traditional" DER (what libest labels pkcs8), in
    # lenient mode only, for the kinds that have one (RSA, EC).
    traditional = run([openssl, "pkey", "-inform", "DER", "-in", der, "-outform", "DER"]).stdout
    if traditional != again:
        assert pem_public(serverkey.decode_private_key(traditional, lenient=True)) == pem_public(key)
        with pytest.raises(DecodeError):
            serverkey.decode_private_key(traditional)


# ---------------------------------------------------------------------------
# CMS


def test_fullcmc_response_verifies_with_openssl_cms(openssl: str, server: RunningServer,
                                                    tmp_path: Path) -> None:
    """The server's Full PKI Response is a SignedData whose signature openssl
    verifies with the signer certificate carried inside (``-noverify``
    skips only the chain check), with eContentType id-cct-PKIResponse."""
    curl = require_tool("curl")
    key = _key("p256")
    csr = pkcs10.build_csr(key, pki.name("openssl-fullcmc"))
    request = cmc.build_full_pki_request(csr, key, transaction_id=7, sender_nonce=b"n" * 16)
    req_file = write(tmp_path / "req.der", request)
    # Our request: openssl parses it as CMS (signed by the CSR key, named by
    # SKI, so there is no certificate to verify it with).
    printed = run([openssl, "cms", "-cmsout", "-print", "-inform", "DER", "-in", req_file]).stdout
    assert b"1.3.6.1.5.5.7.12.2" in printed or b"id-cct-PKIData" in printed, printed[:400]

    b64 = write(tmp_path / "req.b64", base64.b64encode(request))
    body = tmp_path / "resp.b64"
    proc = run([curl, "-sS", "--max-time", CURL_TIMEOUT, "--cacert", server.trust,
                "--user", f"{USER}:{PASSWORD}", "--data", f"@{b64}", "-o", body, "-w", "%{http_code}",
                "-H", "Content-Type: application/pkcs7-mime; smime-type=CMC-request",
                f"{server.url}/fullcmc"], check=False)
    assert proc.returncode == 0 and proc.stdout == b"200", describe(proc, server)
    resp = write(tmp_path / "resp.der", base64.b64decode(body.read_bytes()))
    econtent = tmp_path / "pkiresponse.der"
    verified = run([openssl, "cms", "-verify", "-noverify", "-inform", "DER", "-in", resp,
                    "-binary", "-out", econtent], check=False)
    assert verified.returncode == 0, verified.stderr
    assert b"Verification successful" in verified.stderr
    printed = run([openssl, "cms", "-cmsout", "-print", "-inform", "DER", "-in", resp]).stdout
    assert re.search(rb"eContentType: (1\.3\.6\.1\.5\.5\.7\.12\.3|id-cct-PKIResponse)", printed), \
        printed[:600]
    # The full chain check as well: the signer is our issuing CA.
    run([openssl, "cms", "-verify", "-inform", "DER", "-in", resp, "-binary", "-CAfile",
         server.trust, "-purpose", "any", "-out", tmp_path / "again.der"])
    parsed = run([openssl, "asn1parse", "-inform", "DER", "-in", econtent]).stdout
    assert b":1.3.6.1.5.5.7.7.25" in parsed or b"id-cmc-statusInfoV2" in parsed, parsed[:600]
    # The issued certificate is in the response's certificates.
    certs = certs_from_pkcs7(openssl, resp, "-inform", "DER")
    assert any(pubkey_of(openssl, "x509", write(tmp_path / f"c{i}.pem", c)) == pem_public(key)
               for i, c in enumerate(certs))


def _verify_key_package(openssl: str, signed_data: Path, signer: x509.Certificate,
                        key: pki.PrivateKey, tmp_path: Path) -> None:
    """``openssl cms -verify`` of the decrypted SignedData (wrapped in a
    ContentInfo), then the AsymmetricKeyPackage holds *key*."""
    wrapped = write(tmp_path / "signed.der", content_info(_OID_SIGNED_DATA, signed_data.read_bytes()))
    signer_pem = write(tmp_path / "signer.pem", pki.pem(signer))
    package = tmp_path / "package.der"
    run([openssl, "cms", "-verify", "-inform", "DER", "-in", wrapped, "-binary", "-CAfile", signer_pem,
         "-certfile", signer_pem, "-partial_chain", "-purpose", "any", "-out", package])
    printed = run([openssl, "cms", "-cmsout", "-print", "-inform", "DER", "-in", wrapped]).stdout
    assert b"2.16.840.1.101.2.1.2.78.5" in printed or b"aKeyPackage" in printed, printed[:500]
    # AsymmetricKeyPackage ::= SEQUENCE OF OneAsymmetricKey: strip the outer
    # SEQUENCE header and openssl reads the PKCS#8 inside.
    body = package.read_bytes()
    header = 2 if body[1] < 0x80 else 2 + (body[1] & 0x7F)
    inner = write(tmp_path / "inner.p8", body[header:])
    assert pubkey_of(openssl, "pkey", inner, "-inform", "DER") == pem_public(key)


def test_encrypted_serverkeygen_kek_opened_by_openssl(openssl: str, tmp_path: Path) -> None:
    """RFC 7030 4.4.1.1 / 4.4.2: kekri (AES key wrap) EnvelopedData."""
    signer, signer_key = pki.make_ca("Key Generator")
    kek, kek_id = bytes(range(32)), b"kek-for-interop"
    key = _key("p256")
    der = serverkey.encrypt_key_package(
        key, signer_key=signer_key, signer_cert=signer,
        recipient=serverkey.KEKRecipient(kek_id, kek))
    enveloped = write(tmp_path / "env.der", der)
    signed = tmp_path / "decrypted.der"
    run([openssl, "cms", "-decrypt", "-inform", "DER", "-in", enveloped, "-binary",
         "-secretkey", kek.hex(), "-secretkeyid", kek_id.hex(), "-out", signed])
    _verify_key_package(openssl, signed, signer, key, tmp_path)


def test_encrypted_serverkeygen_ktri_opened_by_openssl(openssl: str, tmp_path: Path) -> None:
    """RFC 7030 4.4.1.2 / 4.4.2: ktri (RSAES-OAEP) EnvelopedData, recipient
    named by subjectKeyIdentifier."""
    signer, signer_key = pki.make_ca("Key Generator")
    recipient_key = _key("rsa2048")
    assert isinstance(recipient_key, rsa.RSAPrivateKey)
    # A certificate with a subjectKeyIdentifier extension, as CAs issue
    # them: openssl's -recip matches a ktri rid against that extension only.
    recipient_cert = (
        x509.CertificateBuilder().subject_name(pki.name("recipient")).issuer_name(signer.subject)
        .public_key(recipient_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(signer.not_valid_before_utc).not_valid_after(signer.not_valid_after_utc)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(recipient_key.public_key()), False)
        .sign(signer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key = _key("p384")
    der = serverkey.encrypt_key_package(
        key, signer_key=signer_key, signer_cert=signer,
        recipient=serverkey.KeyTransRecipient.from_certificate(recipient_cert))
    enveloped = write(tmp_path / "env.der", der)
    key_pem = write(tmp_path / "recipient.key", recipient_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_pem = write(tmp_path / "recipient.pem", pki.pem(recipient_cert))
    signed = tmp_path / "decrypted.der"
    run([openssl, "cms", "-decrypt", "-inform", "DER", "-in", enveloped, "-binary",
         "-recip", cert_pem, "-inkey", key_pem, "-out", signed])
    _verify_key_package(openssl, signed, signer, key, tmp_path)


# ---------------------------------------------------------------------------
# PKCS#10 built by estproto


@pytest.mark.parametrize("kind", pki.KEY_KINDS)
def test_build_csr_verified_by_openssl(openssl: str, tmp_path: Path, kind: str) -> None:
    key = _key(kind)
    csr = pkcs10.build_csr(
        key, pki.name(f"csr-{kind}"),
        subject_alt_names=[x509.DNSName(f"{kind}.example"),
                           x509.IPAddress(ipaddress.ip_address("192.0.2.1"))],
        challenge_password=pkcs10.channel_binding_password(b"\x01" * 12),
        decrypt_key_identifier=b"kek-1",
        smime_capabilities=["2.16.840.1.101.3.4.1.42"],
    )
    path = write(tmp_path / "csr.der", csr)
    out = run([openssl, "req", "-inform", "DER", "-in", path, "-verify", "-noout", "-text"])
    assert b"verify OK" in out.stderr + out.stdout, out
    text = out.stdout.decode()
    assert f"CN = csr-{kind}" in text or f"CN=csr-{kind}" in text
    assert f"DNS:{kind}.example" in text and "IP Address:192.0.2.1" in text
    assert "challengePassword" in text
    assert pubkey_of(openssl, "req", path, "-inform", "DER") == pem_public(key)


def test_build_csr_rsa_pss_verified_by_openssl(openssl: str, tmp_path: Path) -> None:
    csr = pkcs10.build_csr(_key("rsa2048"), pki.name("csr-pss"), rsa_pss=True)
    path = write(tmp_path / "csr.der", csr)
    out = run([openssl, "req", "-inform", "DER", "-in", path, "-verify", "-noout", "-text"])
    assert b"verify OK" in out.stderr + out.stdout
    assert b"rsassaPss" in out.stdout


def test_corrupted_csr_is_refused_by_openssl(openssl: str, tmp_path: Path) -> None:
    """The verify check above can fail: one flipped signature bit."""
    csr = bytearray(pkcs10.build_csr(_key("p256"), pki.name("csr-bad")))
    csr[-3] ^= 0x01
    proc = run([openssl, "req", "-inform", "DER", "-in", write(tmp_path / "bad.der", bytes(csr)),
                "-verify", "-noout"], check=False)
    assert proc.returncode != 0 or b"verify failure" in proc.stderr + proc.stdout


# ---------------------------------------------------------------------------
# CSRs made by openssl enroll (estproto's clients)

_OPENSSL_KEYGEN = {
    "rsa2048": ["-newkey", "rsa:2048"],
    "p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ed25519": ["-newkey", "ed25519"],
}


def _openssl_csr(openssl: str, kind: str, tmp_path: Path) -> tuple[bytes, Path]:
    csr_pem = tmp_path / f"{kind}.csr"
    run([openssl, "req", "-new", *_OPENSSL_KEYGEN[kind], "-nodes", "-keyout", tmp_path / f"{kind}.key",
         "-subj", f"/O=Example/CN=openssl-{kind}", "-addext", f"subjectAltName=DNS:{kind}.example",
         "-out", csr_pem])
    der = run([openssl, "req", "-in", csr_pem, "-outform", "DER"]).stdout
    return der, csr_pem


def _client_kwargs(server: RunningServer) -> dict[str, object]:
    root = x509.load_pem_x509_certificate(server.trust.read_bytes())
    return dict(tls=ClientTLSContext(trust_anchors=[root]),
                credentials=Credentials(USER, PASSWORD, preemptive_basic=True),
                request_timeout=15, connect_timeout=15)


async def _enroll_trio(server: RunningServer, csr: bytes) -> x509.Certificate:
    async with est_trio.ESTClient("127.0.0.1", server.port, **_client_kwargs(server)) as client:  # type: ignore[arg-type]
        with trio.fail_after(30):
            return await client.simpleenroll(csr)


async def _enroll_asyncio(server: RunningServer, csr: bytes) -> x509.Certificate:
    async with est_asyncio.ESTClient("127.0.0.1", server.port, **_client_kwargs(server)) as client:  # type: ignore[arg-type]
        return await asyncio.wait_for(client.simpleenroll(csr), 30)


@pytest.mark.parametrize("adapter", ["trio", "asyncio"])
@pytest.mark.parametrize("kind", list(_OPENSSL_KEYGEN))
def test_openssl_csr_enrolls(openssl: str, server: RunningServer, tmp_path: Path,
                             kind: str, adapter: str) -> None:
    csr, csr_pem = _openssl_csr(openssl, kind, tmp_path)
    if adapter == "trio":
        cert = trio.run(_enroll_trio, server, csr)
    else:
        cert = asyncio.run(_enroll_asyncio(server, csr))
    cert_pem = write(tmp_path / "cert.pem", pki.pem(cert))
    check_issued(openssl, server.trust, cert_pem, pubkey=pubkey_of(openssl, "req", csr_pem),
                 subject=f"CN=openssl-{kind},O=Example", san=f"DNS:{kind}.example")
