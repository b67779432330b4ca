"""ClientConnection and ServerConnection together, over real TLS, in memory.

Every test runs twice: bytes delivered whole and ONE BYTE AT A TIME (the
``bytewise`` fixture), so framing and TLS record reassembly are exercised at
every boundary. The pair, the certificates and the reference server
application live in ``conn_helpers``.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import os
import re

import pytest
from cryptography.hazmat.primitives import serialization

import pki
from conn_helpers import (
    Pair,
    ReferenceApp,
    client_config,
    csr_for,
    get_pki,
    new_key,
    server_config,
    terminated,
)
from estproto import LocalProtocolError, RemoteProtocolError, auth
from estproto._events import (
    ConnectionFacts,
    NEED_DATA,
    PAUSED,
    AuthenticationChallenged,
    CACertsReceived,
    CACertsResponse,
    CertificateResponse,
    CertificateIssued,
    ConnectionClosed,
    ConnectionTerminated,
    CSRAttrsReceived,
    EnrollmentPending,
    ErrorReceived,
    FullCMC,
    FullCMCReceived,
    GetCACerts,
    GetCSRAttrs,
    RawRequest,
    RawResponseReceived,
    ServerKeygen,
    ServerKeyReceived,
    SimpleEnroll,
    SimpleEnrollRequest,
    SimpleReenroll,
    SimpleReenrollRequest,
    ServerRequest,
)
from estproto._est_server import RequestRejected
from estproto._state import ConnectionState
from estproto._tls import TLSError
from estproto.client import ClientConnection, Credentials, check_fingerprint
from estproto.codecs import cmc, csrattrs, serverkey
from estproto.server import ServerConnection

VERSIONS = ("1.2", "1.3")


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def make_pair(bytewise: bool, *, version: str = "1.3", identity: str | None = None,
              app: ReferenceApp | None = None, credentials: Credentials | None = None,
              verify: bool = True, **server_kwargs: object) -> Pair:
    return Pair(
        server_config(version, **server_kwargs),
        client_config(version, identity, verify=verify),
        app=app if app is not None else ReferenceApp(),
        credentials=credentials,
        byte_at_a_time=bytewise,
    )


def assert_checked_facts(facts: ConnectionFacts) -> None:
    """The server builds its facts without the field checks: they must be
    what the checked constructor makes of the same values, field for field."""
    values = {f.name: getattr(facts, f.name) for f in dataclasses.fields(ConnectionFacts)}
    assert set(vars(facts)) == set(values)
    assert ConnectionFacts(**values) == facts


def der_of_key(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ---------------------------------------------------------------------------
# Every operation


@pytest.mark.parametrize("label", ["", "ca1"])
@pytest.mark.parametrize("version", VERSIONS)
def test_cacerts_and_simpleenroll(bytewise: bool, version: str, label: str) -> None:
    app = ReferenceApp()
    pair = make_pair(bytewise, version=version, app=app)
    result = pair.roundtrip(GetCACerts(label=label))
    assert isinstance(result, CACertsReceived)
    assert result.certificates == (get_pki().ca,)
    key = new_key()
    result = pair.roundtrip(SimpleEnroll(csr=csr_for(key), label=label))
    assert isinstance(result, CertificateIssued)
    assert der_of_key(result.certificate) == der_of_key(key)
    assert [r.label for r in app.requests] == [label, label]
    assert pair.client.state is ConnectionState.IDLE
    assert pair.server.state is ConnectionState.IDLE


def test_labels_restricted_to_configured_set(bytewise: bool) -> None:
    pair = make_pair(bytewise, labels=frozenset({"ca1"}))
    assert isinstance(pair.roundtrip(GetCACerts(label="ca1")), CACertsReceived)
    result = pair.roundtrip(GetCACerts(label="other"))
    assert isinstance(result, ErrorReceived) and result.status == 404
    # unlabelled paths are always served (7030 3.2.2)
    assert isinstance(pair.roundtrip(GetCACerts()), CACertsReceived)


@pytest.mark.parametrize("label", ["", "ca1"])
@pytest.mark.parametrize("rekey", [False, True], ids=["renew", "rekey"])
def test_simplereenroll_renew_and_rekey(bytewise: bool, rekey: bool, label: str) -> None:
    p = get_pki()
    app = ReferenceApp(auth="cert")
    pair = make_pair(bytewise, identity="device", app=app)
    key = new_key() if rekey else p.device_key
    result = pair.roundtrip(SimpleReenroll(csr=csr_for(key, "device"), label=label))
    assert isinstance(result, CertificateIssued)
    assert der_of_key(result.certificate) == der_of_key(key)
    (event,) = app.requests
    assert isinstance(event, SimpleReenrollRequest)
    assert event.rekey is rekey
    assert event.facts.client_certificate == p.device_cert
    assert event.facts.client_certificate_verified
    assert_checked_facts(event.facts)


def test_simplereenroll_subject_mismatch_is_400(bytewise: bool) -> None:
    pair = make_pair(bytewise, identity="device", app=ReferenceApp(auth="cert"))
    result = pair.roundtrip(SimpleReenroll(csr=csr_for(new_key(), "someone-else")))
    assert isinstance(result, ErrorReceived) and result.status == 400
    assert "4.2.2" in result.reason
    assert pair.of_type(RequestRejected)


@pytest.mark.parametrize("identity", [None, "rogue"])
def test_simplereenroll_without_verified_certificate_is_403(bytewise: bool, identity: str | None) -> None:
    pair = make_pair(bytewise, identity=identity)
    result = pair.roundtrip(SimpleReenroll(csr=csr_for(new_key())))
    assert isinstance(result, ErrorReceived) and result.status == 403


@pytest.mark.parametrize("label", ["", "ca1"])
def test_fullcmc(bytewise: bool, label: str) -> None:
    pair = make_pair(bytewise)
    key = new_key()
    request = cmc.build_full_pki_request(csr_for(key), key, transaction_id=7, sender_nonce=b"n" * 16)
    result = pair.roundtrip(FullCMC(request=request, label=label))
    assert isinstance(result, FullCMCReceived)
    assert result.status == 200
    assert result.response.status is cmc.CMCStatus.SUCCESS
    assert result.response.transaction_id == 7
    assert result.response.recipient_nonce == b"n" * 16
    assert any(der_of_key(c) == der_of_key(key) for c in result.response.certificates)


@pytest.mark.parametrize("label", ["", "ca1"])
def test_serverkeygen_unencrypted(bytewise: bool, label: str) -> None:
    pair = make_pair(bytewise)
    result = pair.roundtrip(ServerKeygen(csr=csr_for(new_key(), "keygen"), label=label))
    assert isinstance(result, ServerKeyReceived)
    assert result.private_key is not None and result.encrypted_key is None
    assert der_of_key(result.private_key) == der_of_key(result.certificate)


def test_serverkeygen_encrypted_with_kek(bytewise: bool) -> None:
    kek, kek_id = os.urandom(32), b"kek-1"
    pair = make_pair(bytewise, app=ReferenceApp(keks={kek_id: kek}))
    csr = csr_for(new_key(), "keygen", decrypt_key_identifier=kek_id,
                  smime_capabilities=["2.16.840.1.101.3.4.1.45"])
    result = pair.roundtrip(ServerKeygen(csr=csr, kek=kek, kek_id=kek_id))
    assert isinstance(result, ServerKeyReceived)
    assert result.encrypted_key is not None
    assert result.private_key is not None
    assert der_of_key(result.private_key) == der_of_key(result.certificate)
    # without the KEK the key stays sealed
    result = pair.roundtrip(ServerKeygen(csr=csr))
    assert isinstance(result, ServerKeyReceived)
    assert result.private_key is None and result.encrypted_key is not None


def test_serverkeygen_decryption_key_must_be_able_to_open_a_key() -> None:
    # RSA opens a ktri, EC a kari (RFC 7030 4.4.2); an EdDSA key opens
    # nothing, which is the caller's mistake, reported at once.
    from cryptography.hazmat.primitives.asymmetric import ed25519

    with pytest.raises(LocalProtocolError, match="RSA or EC"):
        ServerKeygen(csr=csr_for(new_key()), decryption_key=ed25519.Ed25519PrivateKey.generate())
    ServerKeygen(csr=csr_for(new_key()), decryption_key=new_key())


def test_csrattrs_200_and_204(bytewise: bool) -> None:
    attrs = csrattrs.CsrAttributes((csrattrs.RequiredOID("1.2.840.113549.1.9.7"),))
    app = ReferenceApp(csr_attributes=attrs)
    pair = make_pair(bytewise, app=app)
    result = pair.roundtrip(GetCSRAttrs())
    assert isinstance(result, CSRAttrsReceived)
    assert result.attributes is not None
    assert result.attributes.challenge_password_required
    app.csr_attributes = None
    result = pair.roundtrip(GetCSRAttrs(label="ca1"))
    assert result == CSRAttrsReceived(None)


# ---------------------------------------------------------------------------
# Status codes


@pytest.mark.parametrize("retry_after", [3, datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)],
                         ids=["seconds", "http-date"])
def test_202_then_success_on_retry(bytewise: bool, retry_after: int | datetime.datetime) -> None:
    pair = make_pair(bytewise, app=ReferenceApp(pending=1, retry_after=retry_after))
    request = SimpleEnroll(csr=csr_for(new_key()))
    result = pair.roundtrip(request)
    assert isinstance(result, EnrollmentPending)
    assert result.retry_after == retry_after
    assert "reviewed" in result.message
    result = pair.roundtrip(request)
    assert isinstance(result, CertificateIssued)


def test_202_for_serverkeygen(bytewise: bool) -> None:
    pair = make_pair(bytewise, app=ReferenceApp(pending=1))
    request = ServerKeygen(csr=csr_for(new_key()))
    assert isinstance(pair.roundtrip(request), EnrollmentPending)
    assert isinstance(pair.roundtrip(request), ServerKeyReceived)


def test_400_bad_csr_and_bad_base64(bytewise: bool) -> None:
    pair = make_pair(bytewise)
    result = pair.roundtrip(SimpleEnroll(csr=b"x", raw_body=b"MIIBIjANBgkqhkiG9w0BAQEFAAOC\n"))
    assert isinstance(result, ErrorReceived) and result.status == 400
    result = pair.roundtrip(SimpleEnroll(csr=b"x", raw_body=b"!!! not base64 !!!\n"))
    assert isinstance(result, ErrorReceived) and result.status == 400
    assert len(pair.of_type(RequestRejected)) == 2
    # the connection survives EST-level rejections
    assert isinstance(pair.roundtrip(GetCACerts()), CACertsReceived)


def test_404_unknown_path_and_405_wrong_method(bytewise: bool) -> None:
    pair = make_pair(bytewise)
    result = pair.roundtrip(RawRequest(method="GET", target="/.well-known/est/nosuchop"))
    assert isinstance(result, RawResponseReceived) and result.status == 404
    result = pair.roundtrip(RawRequest(method="GET", target="/index.html"))
    assert isinstance(result, RawResponseReceived) and result.status == 404
    result = pair.roundtrip(RawRequest(method="POST", target="/.well-known/est/cacerts", body=b"x"))
    assert isinstance(result, RawResponseReceived) and result.status == 405
    assert ("allow", "GET") in [(k.lower(), v) for k, v in result.headers]
    result = pair.roundtrip(RawRequest(method="GET", target="/.well-known/est/simpleenroll"))
    assert isinstance(result, RawResponseReceived) and result.status == 405
    assert ("allow", "POST") in [(k.lower(), v) for k, v in result.headers]


def test_415_wrong_media_type(bytewise: bool) -> None:
    pair = make_pair(bytewise)
    result = pair.roundtrip(SimpleEnroll(csr=csr_for(new_key()), content_type="application/json"))
    assert isinstance(result, ErrorReceived) and result.status == 415


def test_413_oversized_body(bytewise: bool) -> None:
    pair = make_pair(bytewise, max_body_size=2000)
    result = pair.roundtrip(SimpleEnroll(csr=b"x", raw_body=b"A" * 4000 + b"\n"))
    assert isinstance(result, ErrorReceived) and result.status == 413
    (term,) = terminated(pair.server_events)
    assert term.status == 413
    pair.pump()
    assert pair.server.state is ConnectionState.CLOSED
    assert pair.client.next_event() == ConnectionClosed()


def test_431_oversized_head(bytewise: bool) -> None:
    pair = make_pair(bytewise, max_head_size=1024)
    result = pair.roundtrip(GetCACerts(extra_headers=(("X-Padding", "p" * 2000),)))
    assert isinstance(result, ErrorReceived) and result.status == 431
    assert terminated(pair.server_events)[0].status == 431


def test_408_request_timeout(bytewise: bool) -> None:
    pair = Pair(server_config(request_timeout=5.0), client_config(), app=ReferenceApp(),
                byte_at_a_time=bytewise)
    pair.handshake()
    # Half a request, then silence.
    assert pair.server.get_timer() is not None
    pair.client._tls.write(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n")  # type: ignore[union-attr]
    pair.pump()
    assert pair.server.state is ConnectionState.IN_REQUEST
    deadline = pair.server.get_timer()
    assert deadline == 5.0
    pair.server.handle_timer(4.9)
    assert pair.server.state is ConnectionState.IN_REQUEST
    pair.server.handle_timer(5.0)
    pair.pump()
    (term,) = terminated(pair.server_events)
    assert term.status == 408


def test_401_challenge_without_credentials(bytewise: bool) -> None:
    pair = make_pair(bytewise, app=ReferenceApp(auth="basic"))
    result = pair.roundtrip(SimpleEnroll(csr=csr_for(new_key())))
    assert isinstance(result, AuthenticationChallenged)
    assert result.retry is None
    assert [c.scheme for c in result.challenges] == ["basic"]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Authentication modes


def test_basic_preemptive(bytewise: bool) -> None:
    app = ReferenceApp(auth="basic")
    pair = make_pair(bytewise, app=app, credentials=Credentials("alice", "secret", preemptive_basic=True))
    assert isinstance(pair.roundtrip(SimpleEnroll(csr=csr_for(new_key()))), CertificateIssued)
    assert len(app.requests) == 1
    assert isinstance(app.requests[0].credentials, auth.BasicCredentials)


def test_basic_after_401(bytewise: bool) -> None:
    app = ReferenceApp(auth="basic")
    pair = make_pair(bytewise, app=app, credentials=Credentials("alice", "secret"))
    assert isinstance(pair.roundtrip(SimpleEnroll(csr=csr_for(new_key()))), CertificateIssued)
    assert [r.credentials is None for r in app.requests] == [True, False]


@pytest.mark.parametrize("algorithm,prefer", [("SHA-256", "digest-sha-256"), ("MD5", "digest-md5")])
def test_digest_after_401(bytewise: bool, algorithm: str, prefer: str) -> None:
    app = ReferenceApp(auth="digest")
    creds = Credentials("alice", "secret", prefer=(prefer,))
    pair = make_pair(bytewise, app=app, credentials=creds)
    assert isinstance(pair.roundtrip(SimpleEnroll(csr=csr_for(new_key()))), CertificateIssued)
    last = app.requests[-1].credentials
    assert isinstance(last, auth.DigestCredentials)
    assert last.algorithm.upper() == algorithm


def test_wrong_password_is_not_retried_forever(bytewise: bool) -> None:
    app = ReferenceApp(auth="basic")
    pair = make_pair(bytewise, app=app, credentials=Credentials("alice", "wrong"))
    result = pair.roundtrip(SimpleEnroll(csr=csr_for(new_key())))
    assert isinstance(result, AuthenticationChallenged)
    assert result.retry is None
    assert len(app.requests) == 2


def test_401_then_server_closes_hands_back_retry(bytewise: bool) -> None:
    app = ReferenceApp(auth="basic")
    pair = make_pair(bytewise, app=app, credentials=Credentials("alice", "secret"),
                     max_requests_per_connection=1)
    request = SimpleEnroll(csr=csr_for(new_key()))
    result = pair.roundtrip(request)
    assert isinstance(result, AuthenticationChallenged)
    assert result.retry is not None and result.retry.authorization is not None
    pair2 = make_pair(bytewise, app=app)
    assert isinstance(pair2.roundtrip(result.retry), CertificateIssued)


def test_tls_client_certificate_auth(bytewise: bool) -> None:
    app = ReferenceApp(auth="cert")
    pair = make_pair(bytewise, identity="device", app=app)
    assert isinstance(pair.roundtrip(SimpleEnroll(csr=csr_for(new_key()))), CertificateIssued)
    assert app.requests[0].facts.client_certificate == get_pki().device_cert
    # an untrusted certificate is recorded, not fatal, and does not authenticate
    app2 = ReferenceApp(auth="cert")
    pair2 = make_pair(bytewise, identity="rogue", app=app2)
    result = pair2.roundtrip(SimpleEnroll(csr=csr_for(new_key())))
    assert isinstance(result, AuthenticationChallenged)
    facts = app2.requests[0].facts
    assert facts.client_certificate is not None and not facts.client_certificate_verified
    assert facts.client_certificate_errors


def test_bootstrap_connection(bytewise: bool) -> None:
    ca = get_pki().ca
    app = ReferenceApp(auth="basic", auth_cacerts=True)
    pair = make_pair(bytewise, verify=False, app=app,
                     credentials=Credentials("alice", "secret", preemptive_basic=True))
    with pytest.raises(LocalProtocolError):
        pair.client.send(SimpleEnroll(csr=csr_for(new_key())))
    assert pair.client.state is ConnectionState.HANDSHAKING
    result = pair.roundtrip(GetCACerts())
    # No credentials sent, and the challenge is not answered (7030 3.2.3).
    assert isinstance(result, AuthenticationChallenged) and result.retry is None
    assert [r.credentials for r in app.requests] == [None]
    app.auth_cacerts = False
    result = pair.roundtrip(GetCACerts())
    assert isinstance(result, CACertsReceived)
    fingerprint = hashlib.sha256(pki.der(ca)).hexdigest()
    assert check_fingerprint(result.certificates, fingerprint.upper()) == ca
    colons = ":".join(fingerprint[i:i + 2] for i in range(0, len(fingerprint), 2))
    assert check_fingerprint(result.certificates, colons) == ca
    with pytest.raises(RemoteProtocolError):
        check_fingerprint(result.certificates, "00" * 32)
    with pytest.raises(LocalProtocolError):
        pair.client.send(SimpleEnroll(csr=csr_for(new_key())))


# ---------------------------------------------------------------------------
# Proof-of-possession linking (7030 3.5)


@pytest.mark.parametrize("version", VERSIONS)
def test_pop_linking_pass(bytewise: bool, version: str) -> None:
    app = ReferenceApp()
    pair = make_pair(bytewise, version=version, app=app, pop_policy=auth.PoPPolicy.REQUIRE)
    pair.handshake()
    binding = pair.client.channel_binding
    assert binding is not None
    assert binding.kind == ("tls-unique" if version == "1.2" else "tls-exporter")
    csr = csr_for(new_key(), challenge_password=pair.client.pop_challenge_password)
    assert isinstance(pair.roundtrip(SimpleEnroll(csr=csr)), CertificateIssued)
    (event,) = app.requests
    assert isinstance(event, SimpleEnrollRequest) and event.pop_linked
    assert event.facts.channel_binding == binding.value
    assert_checked_facts(event.facts)


@pytest.mark.parametrize("version", VERSIONS)
def test_pop_linking_fail_other_connection(bytewise: bool, version: str) -> None:
    other = make_pair(False, version=version)
    other.handshake()
    stale = other.client.pop_challenge_password
    pair = make_pair(bytewise, version=version)
    pair.handshake()
    assert pair.client.pop_challenge_password != stale
    result = pair.roundtrip(SimpleEnroll(csr=csr_for(new_key(), challenge_password=stale)))
    assert isinstance(result, ErrorReceived) and result.status == 400
    assert "linking failed" in result.reason
    # estIdentityLinking (RFC 7894) is checked the same way
    result = pair.roundtrip(SimpleEnroll(csr=csr_for(new_key(), est_identity_linking=stale)))
    assert isinstance(result, ErrorReceived) and result.status == 400


def test_pop_required_without_challenge_password(bytewise: bool) -> None:
    pair = make_pair(bytewise, pop_policy=auth.PoPPolicy.REQUIRE)
    result = pair.roundtrip(SimpleEnroll(csr=csr_for(new_key())))
    assert isinstance(result, ErrorReceived) and result.status == 400
    assert "required" in result.reason


@pytest.mark.parametrize("version", VERSIONS)
def test_fullcmc_pop_failure_is_cmc_popfailed(bytewise: bool, version: str) -> None:
    other = make_pair(False, version=version)
    other.handshake()
    pair = make_pair(bytewise, version=version)
    key = new_key()
    csr = csr_for(key, challenge_password=other.client.pop_challenge_password)
    result = pair.roundtrip(FullCMC(request=cmc.build_full_pki_request(csr, key)))
    assert isinstance(result, FullCMCReceived)
    assert result.status == 400
    assert result.response.status is cmc.CMCStatus.FAILED
    assert result.response.fail_info is cmc.CMCFailInfo.POP_FAILED


def test_fullcmc_pop_pass(bytewise: bool) -> None:
    app = ReferenceApp()
    pair = make_pair(bytewise, app=app, pop_policy=auth.PoPPolicy.REQUIRE)
    pair.handshake()
    key = new_key()
    csr = csr_for(key, challenge_password=pair.client.pop_challenge_password)
    result = pair.roundtrip(FullCMC(request=cmc.build_full_pki_request(csr, key)))
    assert isinstance(result, FullCMCReceived) and result.status == 200


def test_ra_exemption(bytewise: bool) -> None:
    other = make_pair(False)
    other.handshake()
    app = ReferenceApp(auth="cert")
    pair = make_pair(bytewise, identity="ra", app=app)
    csr = csr_for(new_key(), challenge_password=other.client.pop_challenge_password)
    assert isinstance(pair.roundtrip(SimpleEnroll(csr=csr)), CertificateIssued)
    (event,) = app.requests
    assert event.is_ra and not event.pop_linked  # type: ignore[attr-defined]
    # an RA may relay a reenrollment for another subject (3.7)
    result = pair.roundtrip(SimpleReenroll(csr=csr_for(new_key(), "some-device")))
    assert isinstance(result, CertificateIssued)


# ---------------------------------------------------------------------------
# Connection management


def test_keep_alive_many_requests(bytewise: bool) -> None:
    pair = make_pair(bytewise)
    count = 6 if bytewise else 25
    for _ in range(count):
        assert isinstance(pair.roundtrip(GetCACerts()), CACertsReceived)
    assert len(pair.requests()) == count
    assert pair.server.state is ConnectionState.IDLE


def test_requests_per_connection_limit(bytewise: bool) -> None:
    pair = make_pair(bytewise, max_requests_per_connection=2)
    assert isinstance(pair.roundtrip(GetCACerts()), CACertsReceived)
    assert isinstance(pair.roundtrip(GetCACerts()), CACertsReceived)
    assert pair.server.closed
    pair.pump()
    assert pair.client.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        pair.client.send(GetCACerts())


def test_connection_close_header(bytewise: bool) -> None:
    pair = make_pair(bytewise)
    result = pair.roundtrip(GetCACerts(extra_headers=(("Connection", "close"),)))
    assert isinstance(result, CACertsReceived)
    assert pair.client.closed
    pair.pump()
    assert pair.server.state is ConnectionState.CLOSED
    assert pair.client.state is ConnectionState.CLOSED
    assert isinstance(pair.server_events[-1], ConnectionClosed)


def test_pipelined_requests_answered_in_order(bytewise: bool) -> None:
    app = ReferenceApp(csr_attributes=None)
    pair = Pair(server_config(), client_config(), app=app, byte_at_a_time=bytewise)
    pair.handshake()
    raw = (
        b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /.well-known/est/csrattrs HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /.well-known/est/a1/cacerts HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    pair.client._tls.write(raw)  # type: ignore[union-attr]
    server = pair.server
    pair.feed(server, pair.client.data_to_send())
    plaintext = b""
    tls = pair.client._tls  # type: ignore[union-attr]
    for _ in range(10):
        pair.run_server()
        out = server.data_to_send()
        if not out:
            break
        tls.receive_data(out)
        plaintext += tls.read()
    assert [type(r).__name__ for r in pair.requests()] == [
        "CACertsRequest", "CSRAttrsRequest", "CACertsRequest"]
    assert [r.label for r in pair.requests()] == ["", "", "a1"]
    statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", plaintext)]
    assert statuses == [200, 204, 200]
    assert server.state is ConnectionState.IDLE


def test_server_waits_for_answer_paused(bytewise: bool) -> None:
    pair = Pair(server_config(), client_config(), app=None, byte_at_a_time=bytewise)
    pair.client.send(GetCACerts())
    pair.pump()
    (request,) = pair.unanswered
    assert pair.server.state is ConnectionState.AWAITING_RESPONSE
    assert pair.server.next_event() is PAUSED
    assert pair.server.get_timer() is None
    with pytest.raises(LocalProtocolError):
        pair.server.send(CertificateResponse(get_pki().ca))  # does not answer cacerts
    assert pair.server.state is ConnectionState.AWAITING_RESPONSE
    pair.server.send(CACertsResponse((get_pki().ca,)))
    assert isinstance(pair.result(), CACertsReceived)
    with pytest.raises(LocalProtocolError):
        pair.server.send(CACertsResponse((get_pki().ca,)))


def test_client_close_notify(bytewise: bool) -> None:
    pair = make_pair(bytewise)
    assert isinstance(pair.roundtrip(GetCACerts()), CACertsReceived)
    pair.client.close()
    pair.pump()
    assert pair.server_events[-1] == ConnectionClosed()
    assert not terminated(pair.server_events)
    assert pair.server.state is ConnectionState.CLOSED
    assert pair.client.state is ConnectionState.CLOSED


def test_server_close_notify(bytewise: bool) -> None:
    pair = make_pair(bytewise)
    assert isinstance(pair.roundtrip(GetCACerts()), CACertsReceived)
    pair.server.close()
    pair.pump()
    assert pair.client.next_event() == ConnectionClosed()
    assert pair.client.closed


# ---------------------------------------------------------------------------
# EOF in every state


def test_eof_during_handshake(bytewise: bool) -> None:
    server = ServerConnection(server_config())
    client = ClientConnection(client_config())
    hello = client.data_to_send()
    server.receive_data(hello[: len(hello) // 2])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    event = server.next_event()
    assert isinstance(event, ConnectionTerminated) and event.status is None
    assert server.closed
    # the client sees EOF before the server's flight
    client.receive_data(b"")
    with pytest.raises(TLSError):
        client.next_event()
    assert client.closed


def test_eof_when_idle(bytewise: bool) -> None:
    pair = make_pair(bytewise)
    pair.handshake()
    pair.server.receive_data(b"")
    assert pair.server.next_event() == ConnectionClosed()
    pair2 = make_pair(bytewise)
    pair2.handshake()
    pair2.client.receive_data(b"")
    assert pair2.client.next_event() == ConnectionClosed()


def test_eof_mid_request(bytewise: bool) -> None:
    pair = make_pair(bytewise)
    pair.handshake()
    pair.client._tls.write(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nMII")  # type: ignore[union-attr]
    pair.feed(pair.server, pair.client.data_to_send())
    assert pair.server.next_event() is NEED_DATA
    assert pair.server.state is ConnectionState.IN_REQUEST
    pair.server.receive_data(b"")
    event = pair.server.next_event()
    assert isinstance(event, ConnectionTerminated) and event.status == 400
    assert pair.server.closed


def test_request_cut_short_only_when_answered_before_read(bytewise: bool) -> None:
    # An early 413 (the head announces too much) leaves the body unread: the
    # adapter must close gently (RFC 9112 9.6), so the connection says so.
    pair = make_pair(bytewise)
    pair.handshake()
    pair.client._tls.write(  # type: ignore[union-attr]
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: a\r\n"
        b"Content-Length: 99999999\r\n\r\nMII")
    pair.feed(pair.server, pair.client.data_to_send())
    event = pair.server.next_event()
    assert isinstance(event, ConnectionTerminated) and event.status == 413
    assert pair.server.closed and pair.server.request_cut_short
    # A connection that ends in order never was.
    calm = make_pair(bytewise)
    assert isinstance(calm.roundtrip(GetCACerts()), CACertsReceived)
    calm.client.close()
    calm.pump()
    assert calm.server.closed and not calm.server.request_cut_short


def test_eof_awaiting_response(bytewise: bool) -> None:
    # server side: the request was emitted, then the client vanished
    pair = Pair(server_config(), client_config(), app=None, byte_at_a_time=bytewise,
                transport_eof=False)
    pair.client.send(GetCACerts())
    pair.pump()
    assert pair.server.state is ConnectionState.AWAITING_RESPONSE
    pair.server.receive_data(b"")
    assert pair.server.next_event() is PAUSED
    pair.server.send(CACertsResponse((get_pki().ca,)))  # never raises
    assert pair.server.closed
    assert pair.server.next_event() == ConnectionClosed()
    # client side: the server vanished before answering
    pair.client.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        pair.client.next_event()
    assert pair.client.closed


# ---------------------------------------------------------------------------
# Deadlines


def test_handshake_timeout() -> None:
    server = ServerConnection(server_config(handshake_timeout=2.0), now=100.0)
    assert server.get_timer() == 102.0
    server.handle_timer(101.0)
    assert server.state is ConnectionState.HANDSHAKING
    server.handle_timer(102.5)
    event = server.next_event()
    assert isinstance(event, ConnectionTerminated) and "handshake" in event.reason
    assert server.closed and server.get_timer() is None
    client = ClientConnection(client_config(handshake_timeout=3.0), now=10.0)
    client.send(GetCACerts())
    assert client.get_timer() == 13.0
    client.handle_timer(13.0)
    event = client.next_event()
    assert isinstance(event, ConnectionTerminated) and "handshake" in event.reason


def test_idle_timeout(bytewise: bool) -> None:
    server = ServerConnection(server_config(idle_timeout=7.0), now=0.0)
    pair = Pair(server, client_config(), app=ReferenceApp(), byte_at_a_time=bytewise)
    pair.handshake()
    assert server.get_timer() == 7.0
    assert isinstance(pair.roundtrip(GetCACerts()), CACertsReceived)
    server.handle_timer(6.0)
    assert not server.closed
    server.handle_timer(server.get_timer())  # type: ignore[arg-type]
    pair.pump()
    event = terminated(pair.server_events)
    assert event and event[0].status is None and "idle" in event[0].reason
    assert pair.client.next_event() == ConnectionClosed()


def test_client_response_timeout(bytewise: bool) -> None:
    pair = Pair(server_config(), client_config(request_timeout=4.0), app=None, byte_at_a_time=bytewise)
    pair.handshake()
    pair.client.send(GetCACerts())
    assert pair.client.get_timer() == 4.0
    pair.pump()
    pair.client.handle_timer(4.0)
    event = pair.client.next_event()
    assert isinstance(event, ConnectionTerminated)
    assert pair.client.closed


# ---------------------------------------------------------------------------
# Misuse leaves state unchanged; peer faults never raise on the server


def test_server_send_refused_by_http_layer_leaves_request_pending(bytewise: bool) -> None:
    from estproto._events import AuthenticationRequired

    pair = Pair(server_config(), client_config(), app=None, byte_at_a_time=bytewise)
    pair.client.send(SimpleEnroll(csr=csr_for(new_key())))
    pair.pump()
    assert pair.unanswered
    with pytest.raises(LocalProtocolError):
        # not latin-1: the HTTP layer refuses the header
        pair.server.send(AuthenticationRequired(('Basic realm="\u20ac"',)))
    assert pair.server.state is ConnectionState.AWAITING_RESPONSE
    pair.server.send(AuthenticationRequired((auth.basic_challenge("est"),)))
    assert isinstance(pair.result(), AuthenticationChallenged)


def test_client_send_refused_leaves_connection_usable(bytewise: bool) -> None:
    pair = make_pair(bytewise)
    pair.handshake()
    with pytest.raises(LocalProtocolError):
        pair.client.send(GetCACerts(extra_headers=(("Bad Header", "x"),)))
    with pytest.raises(LocalProtocolError):
        pair.client.send(GetCACerts(label="bad/../label"))
    with pytest.raises(LocalProtocolError):
        pair.client.send(RawRequest(method="GET\r\n", target="/"))
    assert pair.client.state is ConnectionState.IDLE
    assert isinstance(pair.roundtrip(GetCACerts()), CACertsReceived)
    # the same during the handshake
    pair2 = make_pair(bytewise)
    with pytest.raises(LocalProtocolError):
        pair2.client.send(GetCACerts(extra_headers=(("Bad Header", "x"),)))
    assert pair2.client.state is ConnectionState.HANDSHAKING
    assert isinstance(pair2.roundtrip(GetCACerts()), CACertsReceived)


def test_server_answer_after_peer_broke_tls_is_dropped(bytewise: bool) -> None:
    pair = Pair(server_config(), client_config(), app=None, byte_at_a_time=bytewise)
    pair.client.send(GetCACerts())
    pair.pump()
    assert pair.unanswered
    # garbage where a TLS record should be: the server closes with an alert
    pair.server.receive_data(b"\x17\x03\x03\x00\x05hello")
    assert pair.server.closed
    event = pair.server.next_event()
    assert isinstance(event, ConnectionTerminated)
    pair.server.send(CACertsResponse((get_pki().ca,)))  # no exception: the peer's fault
    assert pair.server.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        pair.server.send(CACertsResponse((get_pki().ca,)))  # now it is misuse


def test_pipelined_partial_request_gets_request_deadline() -> None:
    pair = Pair(server_config(request_timeout=5.0, idle_timeout=60.0), client_config(),
                app=None)
    pair.handshake()
    pair.client._tls.write(  # type: ignore[union-attr]
        b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: a\r\n\r\nGET /.well-known/est/cac"
    )
    pair.pump()
    assert pair.unanswered
    pair.server.send(CACertsResponse((get_pki().ca,)))
    # the rest of the second request is overdue after request_timeout, not idle_timeout
    assert pair.server.state is ConnectionState.IN_REQUEST
    assert pair.server.get_timer() == 5.0
    pair.server.handle_timer(5.0)
    pair.pump()
    assert terminated(pair.server_events)[0].status == 408


# ---------------------------------------------------------------------------
# Hypothesis: the transition tables, and garbage at every state

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from estproto._errors import ProtocolError  # noqa: E402
from estproto._events import Event  # noqa: E402
from estproto._state import (  # noqa: E402
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    ConnectionStateMachine,
    Input,
)

TABLES = {"server": SERVER_TRANSITIONS, "client": CLIENT_TRANSITIONS}


@pytest.mark.parametrize("side", ["server", "client"])
@given(start=st.sampled_from(ConnectionState), inputs=st.lists(st.sampled_from(Input), max_size=30))
def test_state_table_walk(side: str, start: ConnectionState, inputs: list[Input]) -> None:
    table = TABLES[side]
    machine = ConnectionStateMachine(table, start)
    for item in inputs:
        before = machine.state
        expected = table.get((before, item))
        assert machine.can(item) is (expected is not None)
        if expected is None:
            with pytest.raises(LocalProtocolError):
                machine.process(item)
            assert machine.state is before
        else:
            assert machine.process(item) is expected
            assert machine.state is expected


@pytest.mark.parametrize("side", ["server", "client"])
def test_state_tables_shape(side: str) -> None:
    table = TABLES[side]
    # every state is reachable from HANDSHAKING, and every state can close
    seen = {ConnectionState.HANDSHAKING}
    frontier = [ConnectionState.HANDSHAKING]
    while frontier:
        state = frontier.pop()
        for (source, _), target in table.items():
            if source is state and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(ConnectionState) - ({ConnectionState.AWAITING_RESPONSE} if side == "client" else set())
    for state in seen:
        assert table[(state, Input.CLOSE)] in (ConnectionState.CLOSING, ConnectionState.CLOSED)
        assert table[(state, Input.FINISHED)] is ConnectionState.CLOSED
    # CLOSED is absorbing
    assert {t for (s, _), t in table.items() if s is ConnectionState.CLOSED} == {ConnectionState.CLOSED}


_HEADS = [
    b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /.well-known/est/csrattrs HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /.well-known/est/lbl/cacerts HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: a\r\nContent-Type: application/pkcs10\r\n",
    b"POST /.well-known/est/simplereenroll HTTP/1.1\r\nHost: a\r\nContent-Type: application/pkcs10\r\n",
    b"POST /.well-known/est/serverkeygen HTTP/1.1\r\nHost: a\r\nContent-Type: application/pkcs10\r\n",
    b"POST /.well-known/est/fullcmc HTTP/1.1\r\nHost: a\r\nContent-Type: application/pkcs7-mime; smime-type=CMC-request\r\n",
    b"Authorization: Basic YWxpY2U6c2VjcmV0\r\n",
    b"Authorization: Digest username=\"a\", nonce=\"\", uri=\"/\"\r\n",
    b"Authorization: Basic !!\r\n",
    b"Expect: 100-continue\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"\x16\x03\x01\x00\x05hello",
]


@functools.lru_cache(maxsize=None)
def _valid_ders() -> tuple[bytes, ...]:
    key = get_pki().device_key
    csr = csr_for(key, "device")
    return (csr, cmc.build_full_pki_request(csr, key), pki.der(get_pki().ca))


@st.composite
def _body(draw: st.DrawFn) -> bytes:
    import base64 as b64

    der = draw(st.sampled_from(_valid_ders()))
    kind = draw(st.sampled_from(["valid", "truncated", "flipped", "random"]))
    if kind == "truncated":
        der = der[: draw(st.integers(0, len(der)))]
    elif kind == "flipped":
        i = draw(st.integers(0, len(der) - 1))
        der = der[:i] + bytes([der[i] ^ draw(st.integers(1, 255))]) + der[i + 1:]
    elif kind == "random":
        der = draw(st.binary(max_size=200))
    text = b64.b64encode(der) + b"\n"
    return b"Content-Length: %d\r\n\r\n%s" % (len(text), text)


@st.composite
def _est_request(draw: st.DrawFn) -> bytes:
    """A well-framed EST POST whose body and headers vary: deep into the EST layer."""
    head = draw(st.sampled_from([h for h in _HEADS if h.startswith(b"POST")]))
    extra = draw(st.lists(st.sampled_from([h for h in _HEADS if h.startswith(b"Authorization")]
                                          + [b"User-Agent: libest 3.2\r\n"]), max_size=2))
    return head + b"".join(extra) + draw(_body())


_fragments = st.one_of(
    st.sampled_from(_HEADS), _body(), st.binary(max_size=40), _est_request(), _est_request()
)


def _drive_server(server: ServerConnection, chunks: list[bytes], bytewise: bool) -> list[object]:
    """Feed *chunks*, answering requests; only events may come out."""
    app = ReferenceApp(auth="any")
    events: list[object] = []

    def drain() -> None:
        for _ in range(50):
            event = server.next_event()
            if event is NEED_DATA or event is PAUSED:
                return
            assert isinstance(event, Event), event
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return
            if isinstance(event, ServerRequest):
                server.send(app.handle(event))
                server.data_to_send()
        raise AssertionError("next_event looped")

    for chunk in filter(None, chunks):  # b"" would mean EOF
        parts = [chunk[i:i + 1] for i in range(len(chunk))] if bytewise else [chunk]
        for part in parts:
            server.receive_data(part)
            drain()
            server.data_to_send()
    server.handle_timer(1e9)
    drain()
    server.receive_data(b"")
    drain()
    pending = server._est.current_request  # emitted before we started
    if server.state is ConnectionState.AWAITING_RESPONSE and pending is not None:
        server.send(app.handle(pending))
        drain()
    server.data_to_send()
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(_fragments, max_size=8), bytewise=st.booleans())
def test_plain_server_garbage_only_events(chunks: list[bytes], bytewise: bool) -> None:
    server = ServerConnection(server_config(tls=False))
    _drive_server(server, chunks, bytewise)
    assert server.closed


@pytest.mark.parametrize("stage", ["handshaking", "idle", "mid-request", "awaiting", "after-response"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(_fragments, min_size=1, max_size=4), encrypted=st.booleans(),
       bytewise=st.booleans(), version=st.sampled_from(VERSIONS))
def test_tls_server_garbage_at_every_state(stage: str, garbage: list[bytes], encrypted: bool,
                                           bytewise: bool, version: str) -> None:
    pair = Pair(server_config(version), client_config(version), app=None)
    if stage != "handshaking":
        pair.handshake()
        if stage == "mid-request":
            pair.client._tls.write(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: a\r\n")  # type: ignore[union-attr]
            pair.server.receive_data(pair.client.data_to_send())
            assert pair.server.next_event() is NEED_DATA
        elif stage in ("awaiting", "after-response"):
            pair.client.send(GetCACerts())
            pair.pump()
            assert pair.unanswered
            if stage == "after-response":
                pair.server.send(CACertsResponse((get_pki().ca,)))
                pair.pump()
    else:
        encrypted = False
    if encrypted:
        for chunk in garbage:
            pair.client._tls.write(chunk)  # type: ignore[union-attr]
        chunks = [pair.client.data_to_send()]
    else:
        chunks = garbage
    # the request emitted before the garbage is answered at the end
    _drive_server(pair.server, chunks, bytewise)
    assert pair.server.closed


_STATUS_LINES = [b"HTTP/1.1 %d X\r\n" % s for s in (200, 202, 204, 301, 401, 404, 500)] + [b"HTTP/1.0 200 OK\r\n"]
_RESPONSE_HEADERS = [
    b"Content-Type: application/pkcs7-mime\r\n",
    b"Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n",
    b"Content-Type: application/pkcs7-mime; smime-type=CMC-response\r\n",
    b"Content-Type: application/csrattrs\r\n",
    b"Content-Type: multipart/mixed; boundary=est\r\n",
    b"Content-Type: ;;;\r\n",
    b"Retry-After: 10\r\n",
    b"Retry-After: Mon, 99 Foo 2020\r\n",
    b"WWW-Authenticate: Digest realm=\"x\", nonce=\"n\", qop=\"auth\"\r\n",
    b"WWW-Authenticate: ,,,\r\n",
    b"Location: /x\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"\r\n",
]
_response_fragments = st.one_of(
    st.sampled_from(_STATUS_LINES), st.sampled_from(_RESPONSE_HEADERS), _body(),
    st.binary(max_size=30),
)


def _client_requests() -> list[object]:
    csr = _valid_ders()[0]
    return [GetCACerts(), GetCSRAttrs(), SimpleEnroll(csr=csr), SimpleReenroll(csr=csr),
            ServerKeygen(csr=csr), FullCMC(request=_valid_ders()[1])]


def _drive_client(client: ClientConnection, chunks: list[bytes], bytewise: bool) -> None:
    def drain() -> None:
        for _ in range(20):
            try:
                event = client.next_event()
            except RemoteProtocolError:
                continue
            if event is NEED_DATA:
                return
            assert isinstance(event, Event), event
            if isinstance(event, ConnectionClosed):
                return
        raise AssertionError("next_event looped")

    for chunk in filter(None, chunks):  # b"" would mean EOF
        parts = [chunk[i:i + 1] for i in range(len(chunk))] if bytewise else [chunk]
        for part in parts:
            client.receive_data(part)
            drain()
            client.data_to_send()
    client.receive_data(b"")
    drain()
    assert client.closed


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, 5), chunks=st.lists(_response_fragments, max_size=8), bytewise=st.booleans())
def test_plain_client_garbage_only_remote_errors(which: int, chunks: list[bytes], bytewise: bool) -> None:
    client = ClientConnection(client_config(tls=False), credentials=Credentials("a", "b"))
    client.send(_client_requests()[which])  # type: ignore[arg-type]
    client.data_to_send()
    _drive_client(client, chunks, bytewise)


@settings(max_examples=25, deadline=None)
@given(which=st.integers(0, 5), chunks=st.lists(_response_fragments, min_size=1, max_size=4),
       encrypted=st.booleans(), version=st.sampled_from(VERSIONS))
def test_tls_client_garbage_only_remote_errors(which: int, chunks: list[bytes], encrypted: bool,
                                               version: str) -> None:
    pair = Pair(server_config(version), client_config(version), app=None)
    pair.handshake()
    pair.client.send(_client_requests()[which])  # type: ignore[arg-type]
    pair.pump()
    tls = pair.server._tls  # type: ignore[attr-defined]
    if encrypted:
        for chunk in chunks:
            tls.write(chunk)
        chunks = [tls.data_to_send()]
    _drive_client(pair.client, chunks, False)


def test_handshake_byte_limit() -> None:
    server = ServerConnection(server_config(max_handshake_bytes=100))
    client = ClientConnection(client_config())
    server.receive_data(client.data_to_send())
    event = server.next_event()
    assert isinstance(event, ConnectionTerminated) and event.status is None
    assert server.closed


def test_plain_http_credentials_are_ignored() -> None:
    """7030 3.2.3: HTTP authentication only inside TLS."""
    app = ReferenceApp(auth="basic")
    pair = Pair(server_config(tls=False), client_config(tls=False), app=app)
    result = pair.roundtrip(SimpleEnroll(csr=csr_for(new_key()),
                                         authorization=auth.basic_authorization("alice", "secret")))
    assert isinstance(result, AuthenticationChallenged)
    assert app.requests[0].credentials is None
    assert not app.requests[0].facts.is_tls
