"""Authorization checks against a running estproto server (issue 6, RFC 7030 3.2.3, 3.3, 3.5, 4.2.2).

A real trio server in a background thread (see :mod:`test_hostile`) in front
of an :class:`~estproto.ca.EmbeddedCA` with one user and one CA label.
Requests come from independent clients where the bytes matter (stdlib
``ssl`` and hand-written HTTP, so nothing in estproto's client can hide a
server fault) and from estproto's ``ESTClient`` where a TLS client
certificate or PoP linking is needed. Checked:

* no certificate without authentication (401, never a certificate);
* Basic refused without TLS (``ServerConfig(tls=None)``): "HTTP-based
  client authentication ... MUST be used only over TLS" (3.2.3 via 3.3);
* wrong password and unknown user: the same 401, byte for byte once the
  Digest nonces are set aside (timings are not asserted);
* simplereenroll refused for a mismatching subject, an expired, a foreign
  and a revoked certificate (4.2.2);
* PoP linking mismatch refused (3.5);
* labels cannot escape their CA (3.2.2 paths);
* secrets never appear in logs.
"""

from __future__ import annotations

import base64
import datetime
import logging
import re
import socket
import ssl
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import estproto.trio as est_trio
import pki
from estproto import ServerConfig, auth
from estproto._tls import ClientTLSContext
from estproto.ca import CASettings, EmbeddedCA
from estproto.client import Credentials
from estproto.codecs import pkcs7, pkcs10, transfer
from server_thread import ServerThread

USER = "alice"
PASSWORD = "s3cret-Pa55word-never-logged"
LABEL = "tenant"


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCA]:
    directory = tmp_path_factory.mktemp("security") / "ca"
    settings = CASettings(labels=frozenset({LABEL}))
    with EmbeddedCA.init(directory, hostnames=("127.0.0.1",), settings=settings) as c:
        c.add_user(USER, PASSWORD)
        yield c


@pytest.fixture(scope="module", params=["blocking", "inline"])
def server(ca: EmbeddedCA, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    # Both handlers: the blocking one in worker threads, and the inline one
    # estproto serve runs (its fast path must refuse exactly what the
    # blocking path refuses).
    config = ServerConfig(tls=ca.server_tls_context(), est=ca.est_settings())
    handler = ca.handler() if request.param == "blocking" else ca.inline_handler()
    with ServerThread("trio", handler, config) as srv:
        yield srv


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# ---------------------------------------------------------------------------
# An independent HTTP-over-TLS client


def https(ca: EmbeddedCA, port: int, method: str, path: str, *, body: bytes = b"",
          headers: dict[str, str] | None = None, tls: bool = True) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request on its own connection; (status, headers, body)."""
    fields = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    if method == "POST":
        fields.setdefault("Content-Type", "application/pkcs10")
        fields["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock: socket.socket = raw
    if tls:
        ctx = ssl.create_default_context(cafile=str(Path(ca.data_dir) / "ca.pem"))
        sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    with sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    parsed = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    return int(lines[0].split()[1]), parsed, rest  # type: ignore[return-value]


def basic(password: str = PASSWORD, user: str = USER) -> dict[str, str]:
    return {"Authorization": auth.basic_authorization(user, password)}


def csr_body(key: Any, cn: str = "device", **kwargs: Any) -> bytes:
    return transfer.encode_base64(pkcs10.build_csr(key, name(cn), **kwargs))


def holds_certificate(body: bytes) -> bool:
    try:
        pkcs7.decode_certs_only(transfer.decode_base64(body, lenient=True))
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------
# Authentication


@pytest.mark.parametrize("op", ["simpleenroll", "serverkeygen", "simplereenroll"])
def test_no_certificate_without_authentication(ca: EmbeddedCA, server: ServerThread, key: Any, op: str) -> None:
    for headers in ({}, {"Authorization": "Bearer abc"}, basic("wrong")):
        status, fields, body = https(ca, server.port, "POST", f"/.well-known/est/{op}",
                                     body=csr_body(key), headers=headers)
        assert status in (401, 403), (op, headers, status)
        assert not holds_certificate(body)
        if status == 401:
            assert any(k.lower() == "www-authenticate" for k, _ in fields)
    # Control: the same request with the password is issued.
    status, _, body = https(ca, server.port, "POST", "/.well-known/est/simpleenroll",
                            body=csr_body(key), headers=basic())
    assert status == 200 and holds_certificate(body)


def test_basic_ignored_without_tls(ca: EmbeddedCA, key: Any) -> None:
    config = ServerConfig(tls=None, est=ca.est_settings())
    with ServerThread("trio", ca.handler(), config) as plain:
        status, _, body = https(ca, plain.port, "POST", "/.well-known/est/simpleenroll",
                                body=csr_body(key), headers=basic(), tls=False)
        assert status == 401
        assert not holds_certificate(body)
        # cacerts needs no credentials: the plain server works at all.
        assert https(ca, plain.port, "GET", "/.well-known/est/cacerts", tls=False)[0] == 200


def _normalised(response: tuple[int, list[tuple[str, str]], bytes]) -> tuple[Any, ...]:
    status, fields, body = response
    # Digest nonces embed the time: the only part allowed to differ.
    return status, [(k, re.sub(r'nonce="[^"]*"', 'nonce="N"', v)) for k, v in fields], body


def test_wrong_password_and_unknown_user_get_identical_401(ca: EmbeddedCA, server: ServerThread, key: Any) -> None:
    body = csr_body(key)
    wrong = https(ca, server.port, "POST", "/.well-known/est/simpleenroll", body=body,
                  headers=basic("not-the-password"))
    unknown = https(ca, server.port, "POST", "/.well-known/est/simpleenroll", body=body,
                    headers=basic(PASSWORD, user="mallory"))
    assert wrong[0] == 401
    assert _normalised(wrong) == _normalised(unknown)
    # Digest: a wrong response and an unknown user look the same too.
    _, fields, _ = https(ca, server.port, "POST", "/.well-known/est/simpleenroll", body=body)
    challenges = auth.parse_challenges([v for k, v in fields if k.lower() == "www-authenticate"])
    results = []
    for user, password in ((USER, "wrong"), ("mallory", PASSWORD)):
        value = auth.answer_challenge(challenges, user, password, "POST",
                                      "/.well-known/est/simpleenroll", server_authorized=True)
        assert value is not None and value.startswith("Digest")
        results.append(https(ca, server.port, "POST", "/.well-known/est/simpleenroll", body=body,
                             headers={"Authorization": value}))
    assert results[0][0] == 401
    assert _normalised(results[0]) == _normalised(results[1])


# ---------------------------------------------------------------------------
# Re-enrollment (RFC 7030 4.2.2)


def _client(ca: EmbeddedCA, port: int, cert: x509.Certificate | None = None, cert_key: Any = None,
            credentials: Credentials | None = None) -> est_trio.ESTClient:
    tls = ClientTLSContext(
        trust_anchors=list(ca.ca_certificates),
        client_certificate_chain=[cert] if cert is not None else [], client_private_key=cert_key,
    )
    return est_trio.ESTClient("127.0.0.1", port, tls, credentials=credentials,
                              request_timeout=10, connect_timeout=10)


def _enroll(ca: EmbeddedCA, port: int, key: Any, cn: str) -> x509.Certificate:
    async def main() -> x509.Certificate:
        creds = Credentials(USER, PASSWORD, preemptive_basic=True)
        async with _client(ca, port, credentials=creds) as client:
            return await client.simpleenroll(pkcs10.build_csr(key, name(cn)))

    return trio.run(main)


def _reenroll_status(ca: EmbeddedCA, port: int, cert: x509.Certificate, cert_key: Any, csr: bytes,
                     credentials: Credentials | None = None) -> int:
    async def main() -> int:
        async with _client(ca, port, cert, cert_key, credentials) as client:
            try:
                await client.simplereenroll(csr)
            except est_trio.ESTError as exc:
                return exc.status
            return 200

    return trio.run(main)


def _issuer_key(ca: EmbeddedCA) -> Any:
    return serialization.load_pem_private_key((Path(ca.data_dir) / "root.key").read_bytes(), None)


def test_reenroll_refusals(ca: EmbeddedCA, server: ServerThread, key: Any) -> None:
    port = server.port
    cert = _enroll(ca, port, key, "renew-me")
    new_key = ec.generate_private_key(ec.SECP256R1())
    # Control: renewing the certificate we hold, same subject, works (renew and rekey).
    assert _reenroll_status(ca, port, cert, key, pkcs10.build_csr(key, name("renew-me"))) == 200
    assert _reenroll_status(ca, port, cert, key, pkcs10.build_csr(new_key, name("renew-me"))) == 200

    # Mismatching subject.
    assert _reenroll_status(ca, port, cert, key, pkcs10.build_csr(key, name("someone-else"))) == 400
    # Mismatching subjectAltName (the certificate has none).
    csr_san = pkcs10.build_csr(key, name("renew-me"), subject_alt_names=[x509.DNSName("evil.example")])
    assert _reenroll_status(ca, port, cert, key, csr_san) == 400

    # Expired: signed by our CA, validity over (TLS verification fails, so
    # the certificate does not count; Basic cannot stand in for it either).
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = (
        x509.CertificateBuilder().subject_name(name("renew-me")).issuer_name(ca.issuer_certificate.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=1))
        .sign(_issuer_key(ca), hashes.SHA256())
    )
    csr = pkcs10.build_csr(key, name("renew-me"))
    creds = Credentials(USER, PASSWORD, preemptive_basic=True)
    assert 400 <= _reenroll_status(ca, port, expired, key, csr) < 500
    assert 400 <= _reenroll_status(ca, port, expired, key, csr, creds) < 500

    # Foreign: same subject and key, another CA.
    other_ca, other_key = pki.make_ca("Other CA")
    foreign = pki.issue(other_ca, other_key, key.public_key(), "renew-me")
    assert 400 <= _reenroll_status(ca, port, foreign, key, csr) < 500
    assert 400 <= _reenroll_status(ca, port, foreign, key, csr, creds) < 500

    # Revoked: ours, verified by TLS, but revoked in the store.
    victim = _enroll(ca, port, key, "revoke-me")
    csr_victim = pkcs10.build_csr(key, name("revoke-me"))
    assert _reenroll_status(ca, port, victim, key, csr_victim) == 200
    ca.revoke(victim.serial_number, "keyCompromise")
    assert 400 <= _reenroll_status(ca, port, victim, key, csr_victim) < 500
    assert 400 <= _reenroll_status(ca, port, victim, key, csr_victim, creds) < 500


def test_pop_mismatch_refused(ca: EmbeddedCA, server: ServerThread, key: Any) -> None:
    wrong_binding = base64.b64encode(b"\x01" * 32).decode()
    status, _, body = https(ca, server.port, "POST", "/.well-known/est/simpleenroll",
                            body=csr_body(key, challenge_password=wrong_binding), headers=basic())
    assert status == 400 and b"proof-of-possession" in body

    async def linked() -> x509.Certificate:
        creds = Credentials(USER, PASSWORD, preemptive_basic=True)
        async with _client(ca, server.port, credentials=creds) as client:
            return await client.simpleenroll_linked(key, name("linked"))

    assert trio.run(linked).subject == name("linked")  # control: the right binding passes


# ---------------------------------------------------------------------------
# Labels (RFC 7030 3.2.2)


@pytest.mark.parametrize("path", [
    "/.well-known/est/../cacerts",
    "/.well-known/est/./cacerts",
    "/.well-known/est/%2e%2e/cacerts",
    f"/.well-known/est/{LABEL}/../cacerts",
    f"/.well-known/est/{LABEL}%2Fx/cacerts",
    f"/.well-known/est/{LABEL}%2fcacerts",
    "/.well-known/est/simpleenroll/cacerts",
    "/.well-known/est/cacerts/cacerts",
    "/.well-known/est/unknown/cacerts",
    f"/.well-known/est/{LABEL.upper()}/cacerts",
    "/.well-known/est//cacerts",
    f"/.well-known/est/{LABEL}/x/cacerts",
    "/.well-known/est/..%2Fcacerts",
    "/.well-known/est%2Fcacerts",
    "/.well-known/est/cacerts/",
    "/.well-known/est/cacerts/..",
    "/.well-known/est/cacerts%00",
])
def test_labels_cannot_escape(ca: EmbeddedCA, server: ServerThread, path: str) -> None:
    status, _, body = https(ca, server.port, "GET", path, headers=basic())
    assert status == 404, (path, status, body)


def test_label_enrollment_is_recorded_under_its_label(ca: EmbeddedCA, server: ServerThread, key: Any) -> None:
    assert https(ca, server.port, "GET", f"/.well-known/est/{LABEL}/cacerts")[0] == 200
    assert https(ca, server.port, "GET", "/.well-known/est/cacerts")[0] == 200
    status, _, body = https(ca, server.port, "POST", f"/.well-known/est/{LABEL}/simpleenroll",
                            body=csr_body(key, "labelled"), headers=basic())
    assert status == 200
    cert = pkcs7.decode_certs_only(transfer.decode_base64(body))[0]
    record = next(r for r in ca.list_issued() if r.serial == format(cert.serial_number, "x"))
    assert record.label == LABEL
    status, _, _ = https(ca, server.port, "POST", "/.well-known/est/other/simpleenroll",
                         body=csr_body(key, "nope"), headers=basic())
    assert status == 404


# ---------------------------------------------------------------------------
# Logs


class Everything(logging.Handler):
    """Formats every record (message, arguments, extras, traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(self.format(record))
        self.text.append(repr(record.__dict__))


def test_secrets_never_in_logs(ca: EmbeddedCA, key: Any) -> None:
    handler = Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        config = ServerConfig(tls=ca.server_tls_context(), est=ca.est_settings())
        with ServerThread("trio", ca.handler(), config) as srv:
            body = csr_body(key, "logged")
            basic_header = basic()["Authorization"]
            assert https(ca, srv.port, "POST", "/.well-known/est/simpleenroll", body=body,
                         headers={"Authorization": basic_header})[0] == 200
            assert https(ca, srv.port, "POST", "/.well-known/est/simpleenroll", body=body,
                         headers=basic(PASSWORD + "x"))[0] == 401
            _, fields, _ = https(ca, srv.port, "POST", "/.well-known/est/simpleenroll", body=body)
            challenges = auth.parse_challenges([v for k, v in fields if k.lower() == "www-authenticate"])
            digest_header = auth.answer_challenge(
                challenges, USER, PASSWORD, "POST", "/.well-known/est/simpleenroll",
                server_authorized=True, prefer=("digest-sha-256",))
            assert digest_header is not None
            assert https(ca, srv.port, "POST", "/.well-known/est/simpleenroll", body=body,
                         headers={"Authorization": digest_header})[0] == 200
            # A malformed header holding the password must not be echoed either.
            https(ca, srv.port, "POST", "/.well-known/est/simpleenroll", body=body,
                  headers={"Authorization": f"Basic {PASSWORD}!!"})
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    logs = "\n".join(handler.text)
    assert "simpleenroll" in logs, "the server logged nothing: the test would prove nothing"
    response = re.search(r'response="?([0-9a-f]+)', digest_header)
    assert response is not None
    token = basic_header.split()[1]
    for secret in (PASSWORD, token, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
                   response.group(1)):
        assert secret not in logs, f"secret {secret[:6]}... found in the logs"
