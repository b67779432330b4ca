"""ClientConnection against an independent server: stdlib ``ssl`` + raw h11.

The server side here uses nothing of estproto's connection code: TLS is the
standard library's ``SSLObject`` over memory BIOs, requests are parsed by a
raw ``h11.Connection``, and responses are hand-made bytes imitating real
servers and their quirks: chunked bodies, libest's 202 without
Content-Length followed by a close, its 401 without ``WWW-Authenticate`` and
its csrattrs with a trailing NUL, redirects, wrapped and unwrapped base64,
PEM armour, a missing ``smime-type``.
"""

from __future__ import annotations

import base64
import functools
import ssl
import tempfile
from pathlib import Path
from typing import Callable, Union

import h11
import pytest
from cryptography.hazmat.primitives import serialization

import pki
from conn_helpers import client_config, csr_for, get_pki, new_key
from estproto import DecodeError, RemoteProtocolError, auth
from estproto._events import (
    NEED_DATA,
    AuthenticationChallenged,
    CACertsReceived,
    CertificateIssued,
    ConnectionClosed,
    CSRAttrsReceived,
    EnrollmentPending,
    ErrorReceived,
    GetCACerts,
    GetCSRAttrs,
    Redirected,
    SimpleEnroll,
)
from estproto._tls import TLSVerificationError
from estproto.client import ClientConnection, Credentials
from estproto.codecs import csrattrs, pkcs7

EST = "/.well-known/est"

Responder = Callable[[h11.Request, bytes], Union[bytes, tuple[bytes, bool]]]


@functools.lru_cache(maxsize=None)
def stdlib_server_context(version: str) -> ssl.SSLContext:
    p = get_pki()
    folder = Path(tempfile.mkdtemp(prefix="estproto-cpeers-"))
    (folder / "cert.pem").write_bytes(pki.pem(p.server_cert))
    (folder / "key.pem").write_bytes(p.server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(folder / "cert.pem"), str(folder / "key.pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    return ctx


class RawServer:
    """stdlib TLS server + h11 request parsing + hand-made response bytes."""

    def __init__(self, client: ClientConnection, respond: Responder, *, version: str = "1.3",
                 bytewise: bool = False) -> None:
        self.client = client
        self.respond = respond
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = stdlib_server_context(version).wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.bytewise = bytewise
        self.handshake_done = False
        self.plaintext = b""
        self.requests: list[tuple[h11.Request, bytes]] = []
        self.raw_requests: list[bytes] = []
        self.closed = False
        self.eof_sent = False

    def _to_client(self, data: bytes) -> None:
        if self.bytewise:
            for i in range(len(data)):
                self.client.receive_data(data[i:i + 1])
        else:
            self.client.receive_data(data)

    def _read(self) -> None:
        while True:
            try:
                chunk = self.tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return
            if not chunk:
                return
            self.plaintext += chunk

    def _parse(self) -> None:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(self.plaintext)
        head = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert head is not None
        used = len(self.plaintext) - len(conn.trailing_data[0])
        self.raw_requests.append(self.plaintext[:used])
        self.plaintext = self.plaintext[used:]
        self.requests.append((head, body))
        answer = self.respond(head, body)
        close = False
        if isinstance(answer, tuple):
            answer, close = answer
        self.tls.write(answer)
        if close:
            try:
                self.tls.unwrap()
            except ssl.SSLWantReadError:
                pass
            self.closed = True

    def pump(self) -> None:
        for _ in range(100):
            out = self.client.data_to_send()
            if out and not self.closed:
                self.incoming.write(out)
            if not self.handshake_done:
                try:
                    self.tls.do_handshake()
                    self.handshake_done = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    self.closed = True  # the client refused us with an alert
            if self.handshake_done and not self.closed:
                self._read()
                if self.plaintext:
                    self._parse()
            back = self.outgoing.read()
            if back:
                self._to_client(back)
            if self.closed and not back and not self.eof_sent:
                self.eof_sent = True
                self.client.receive_data(b"")
                continue
            if not out and not back:
                return
        raise AssertionError("no progress")

    def result(self) -> object:
        for _ in range(10):
            self.pump()
            event = self.client.next_event()
            if event is not NEED_DATA:
                return event
        raise AssertionError("no result")


def make(respond: Responder, *, version: str = "1.3", bytewise: bool = False,
         credentials: Credentials | None = None) -> RawServer:
    client = ClientConnection(client_config(version), credentials=credentials)
    return RawServer(client, respond, version=version, bytewise=bytewise)


def response(status: str, headers: list[tuple[str, str]], body: bytes = b"", *, length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def b64(der: bytes, wrap: bool) -> bytes:
    text = base64.b64encode(der)
    if not wrap:
        return text
    return b"\r\n".join(text[i:i + 64] for i in range(0, len(text), 64)) + b"\r\n"


def issued_for(body: bytes) -> bytes:
    """DER of a certs-only response holding a certificate for the CSR in *body*."""
    from estproto.codecs import pkcs10

    csr = pkcs10.decode_csr(base64.b64decode(b"".join(body.split())))
    p = get_pki()
    cert = pki.issue(p.ca, p.ca_key, csr.public_key)
    return pkcs7.encode_certs_only([cert, p.ca])


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def cacerts_der() -> bytes:
    return pkcs7.encode_certs_only([get_pki().ca])


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_request_format_every_server_accepts(bytewise: bool, version: str) -> None:
    def respond(req: h11.Request, body: bytes) -> bytes:
        return response("200 OK", [("Content-Type", "application/pkcs7-mime; smime-type=certs-only")],
                        b64(issued_for(body), False))

    server = make(respond, version=version, bytewise=bytewise)
    key = new_key()
    csr = csr_for(key)
    server.client.send(SimpleEnroll(csr=csr))
    result = server.result()
    assert isinstance(result, CertificateIssued)
    ((head, body),) = server.requests
    assert head.method == b"POST" and head.target == b"/.well-known/est/simpleenroll"
    headers = dict(head.headers)
    assert headers[b"content-type"] == b"application/pkcs10"  # exact, lowercase (libest)
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"host"] == b"127.0.0.1:8443"
    lines = body.split(b"\n")
    assert body.endswith(b"\n")  # libest rejects a body with no newline
    assert all(len(line) == 64 for line in lines[:-2]) and 0 < len(lines[-2]) <= 64
    assert base64.b64decode(body) == csr


def test_chunked_response(bytewise: bool) -> None:
    text = b64(cacerts_der(), True)

    def respond(req: h11.Request, body: bytes) -> bytes:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(text[i:i + 100]), text[i:i + 100])
                          for i in range(0, len(text), 100))
        return response("200 OK", [("Content-Type", "application/pkcs7-mime"),
                                   ("Transfer-Encoding", "chunked")], length=False) + chunks + b"0\r\n\r\n"

    server = make(respond, bytewise=bytewise)
    server.client.send(GetCACerts())
    result = server.result()
    assert isinstance(result, CACertsReceived) and result.certificates == (get_pki().ca,)
    # the connection stays usable after a chunked response
    server.client.send(GetCACerts())
    assert isinstance(server.result(), CACertsReceived)


def test_libest_202_without_content_length_then_close(bytewise: bool) -> None:
    def respond(req: h11.Request, body: bytes) -> tuple[bytes, bool]:
        return response("202 Accepted", [("Retry-After", "60")], length=False), True

    server = make(respond, bytewise=bytewise, version="1.2")
    server.client.send(SimpleEnroll(csr=csr_for(new_key())))
    result = server.result()
    assert result == EnrollmentPending(60, "")
    assert server.client.next_event() == ConnectionClosed()
    assert server.client.closed


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_surfaces_as_event(bytewise: bool, status: int) -> None:
    def respond(req: h11.Request, body: bytes) -> bytes:
        return response(f"{status} Moved", [("Location", "https://other.example/.well-known/est/cacerts")])

    server = make(respond, bytewise=bytewise)
    server.client.send(GetCACerts())
    assert server.result() == Redirected(status, "https://other.example/.well-known/est/cacerts")


def test_csrattrs_with_trailing_nul(bytewise: bool) -> None:
    attrs = csrattrs.encode_csrattrs(csrattrs.CsrAttributes((csrattrs.RequiredOID("1.2.840.113549.1.9.7"),)))

    def respond(req: h11.Request, body: bytes) -> bytes:
        return response("200 OK", [("Content-Type", "application/csrattrs")], b64(attrs, True) + b"\x00")

    server = make(respond, bytewise=bytewise)
    server.client.send(GetCSRAttrs())
    result = server.result()
    assert isinstance(result, CSRAttrsReceived) and result.attributes is not None
    assert result.attributes.challenge_password_required


@pytest.mark.parametrize("status", ["204 No Content", "404 Not Found"])
def test_csrattrs_none(status: str) -> None:
    server = make(lambda req, body: response(status, [], length=not status.startswith("204")))
    server.client.send(GetCSRAttrs())
    assert server.result() == CSRAttrsReceived(None)


def test_401_without_www_authenticate_libest(bytewise: bool) -> None:
    server = make(lambda req, body: response("401 Unauthorized", []), bytewise=bytewise,
                  credentials=Credentials("alice", "secret"))
    server.client.send(SimpleEnroll(csr=csr_for(new_key())))
    result = server.result()
    assert isinstance(result, AuthenticationChallenged)
    assert result.challenges == () and result.retry is None
    assert len(server.requests) == 1


def test_401_answered_in_place_then_close_hands_back_the_retry(bytewise: bool) -> None:
    # libest's estserver: 401 without "Connection: close", then it closes.
    # The connection answered in place (it was allowed to); when the server
    # ends the connection before any byte of a response to that answer, the
    # core hands the challenge back with its ready retry, for a new
    # connection, instead of a protocol error.
    def respond(req: h11.Request, body: bytes) -> bytes | tuple[bytes, bool]:
        if dict(req.headers).get(b"authorization") is None:
            return response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="estrealm"')])
        return b"", True  # read the answer, then close without a response

    server = make(respond, bytewise=bytewise, credentials=Credentials("alice", "secret"))
    csr = csr_for(new_key())
    server.client.send(SimpleEnroll(csr=csr))
    result = server.result()
    assert isinstance(result, AuthenticationChallenged)
    assert [c.scheme for c in result.challenges] == ["basic"]  # type: ignore[attr-defined]
    assert isinstance(result.retry, SimpleEnroll) and result.retry.csr == csr
    assert result.retry.authorization == auth.basic_authorization("alice", "secret")
    assert len(server.requests) == 2  # the first try, and the answer sent in place
    assert server.client.closed


def test_close_after_a_partial_answer_is_still_an_error() -> None:
    # Only a connection that ended before any byte of the response gets the
    # retry back; a truncated response is the server's (broken) answer.
    def respond(req: h11.Request, body: bytes) -> bytes | tuple[bytes, bool]:
        if dict(req.headers).get(b"authorization") is None:
            return response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="estrealm"')])
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", True

    server = make(respond, credentials=Credentials("alice", "secret"))
    server.client.send(SimpleEnroll(csr=csr_for(new_key())))
    with pytest.raises(RemoteProtocolError):
        server.result()


def test_digest_answer_verifies_on_the_server(bytewise: bool) -> None:
    authority = auth.DigestAuthority(b"s" * 32, "est", algorithms=("SHA-256",))
    outcomes: list[auth.DigestResult] = []

    def respond(req: h11.Request, body: bytes) -> bytes:
        header = dict(req.headers).get(b"authorization")
        if header is None:
            return response("401 Unauthorized", [("WWW-Authenticate", authority.challenges(5.0)[0])])
        creds = auth.parse_authorization(header.decode())
        assert isinstance(creds, auth.DigestCredentials)
        outcomes.append(authority.verify(creds, req.method.decode(), req.target.decode(),
                                         auth.password_ha1_lookup("est", {"alice": "secret"}.get), 6.0))
        return response("200 OK", [("Content-Type", "application/pkcs7-mime; smime-type=certs-only")],
                        b64(issued_for(body), True))

    server = make(respond, bytewise=bytewise, credentials=Credentials("alice", "secret"))
    server.client.send(SimpleEnroll(csr=csr_for(new_key())))
    assert isinstance(server.result(), CertificateIssued)
    assert outcomes == [auth.DigestResult.OK]


@pytest.mark.parametrize("form", ["wrapped", "single", "pem", "no-smime-type"])
def test_response_body_forms(bytewise: bool, form: str) -> None:
    def respond(req: h11.Request, body: bytes) -> bytes:
        der = issued_for(body)
        ctype = "application/pkcs7-mime; smime-type=certs-only"
        if form == "wrapped":
            payload = b64(der, True)
        elif form == "single":
            payload = b64(der, False)
        elif form == "pem":
            payload = b"-----BEGIN PKCS7-----\n" + b64(der, True) + b"-----END PKCS7-----\n"
        else:
            payload = b64(der, True)
            ctype = "application/pkcs7-mime"
        return response("200 OK", [("Content-Type", ctype), ("Content-Transfer-Encoding", "base64")], payload)

    server = make(respond, bytewise=bytewise)
    key = new_key()
    server.client.send(SimpleEnroll(csr=csr_for(key)))
    result = server.result()
    assert isinstance(result, CertificateIssued)
    assert result.certificate.public_key() == key.public_key()
    assert len(result.certificates) == 2  # found by key, not by position


@pytest.mark.parametrize("raw,error", [
    (response("200 OK", [("Content-Type", "text/html")], b"<html>"), DecodeError),
    (response("200 OK", [("Content-Type", "application/pkcs7-mime")], b"@@@@"), DecodeError),
    (response("202 Accepted", []), RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", RemoteProtocolError),
    (b"garbage\r\n\r\n", RemoteProtocolError),
])
def test_broken_responses_raise_remote_protocol_error(bytewise: bool, raw: bytes, error: type) -> None:
    server = make(lambda req, body: (raw, True), bytewise=bytewise)
    server.client.send(SimpleEnroll(csr=csr_for(new_key())))
    with pytest.raises(error):
        server.result()
    assert server.client.closed
    assert server.client.next_event() == ConnectionClosed()


def test_certificate_for_another_key_is_refused() -> None:
    def respond(req: h11.Request, body: bytes) -> bytes:
        other = csr_for(new_key())
        return response("200 OK", [("Content-Type", "application/pkcs7-mime; smime-type=certs-only")],
                        b64(issued_for(base64.b64encode(other)), True))

    server = make(respond)
    server.client.send(SimpleEnroll(csr=csr_for(new_key())))
    with pytest.raises(DecodeError):
        server.result()


def test_error_status_with_text_reason(bytewise: bool) -> None:
    server = make(lambda req, body: response("503 Service Unavailable",
                                             [("Content-Type", "text/plain")], b"CA offline\n"),
                  bytewise=bytewise)
    server.client.send(GetCACerts())
    result = server.result()
    assert isinstance(result, ErrorReceived)
    assert (result.status, result.reason) == (503, "CA offline")


def test_server_name_mismatch_is_tls_verification_error() -> None:
    client = ClientConnection(client_config(host="est.example.com"))
    server = RawServer(client, lambda req, body: b"")
    client.send(GetCACerts())
    with pytest.raises(TLSVerificationError):
        server.result()
    assert client.closed
    assert server.requests == []  # nothing was sent to the unverified server


def test_tls_unique_matches_stdlib_server() -> None:
    server = make(lambda req, body: response("200 OK", [("Content-Type", "application/pkcs7-mime")],
                                             b64(cacerts_der(), False)), version="1.2")
    server.client.send(GetCACerts())
    assert isinstance(server.result(), CACertsReceived)
    binding = server.client.channel_binding
    assert binding is not None and binding.kind == "tls-unique"
    assert binding.value == server.tls.get_channel_binding("tls-unique")
