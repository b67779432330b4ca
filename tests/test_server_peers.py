"""ServerConnection against an independent client: stdlib ``ssl`` + raw bytes / h11.

Nothing of estproto runs on the client side here (no TLSLayer, no HTTPClient,
no ESTClientProtocol), so a server bug cannot be hidden by a matching client
bug. Responses are checked byte by byte against what real EST clients need
(EST-NOTES): a literal ``HTTP/1.1`` status line, Content-Length always, the
whole head under 1024 bytes (strongSwan's first read), base64 on one line by
default and in 64-column lines when the request body was wrapped or the
client is libest, and 401 challenges with an empty body.
"""

from __future__ import annotations

import base64
import functools
import re
import ssl
import tempfile
from pathlib import Path

import h11
import pytest
from cryptography.hazmat.primitives import serialization

import pki
from conn_helpers import ReferenceApp, csr_for, get_pki, new_key, server_config
from estproto._events import ConnectionClosed, ConnectionTerminated, NEED_DATA, PAUSED, ServerRequest
from estproto.codecs import pkcs7
from estproto.server import ServerConnection

EST = "/.well-known/est"


@functools.lru_cache(maxsize=None)
def _files() -> dict[str, str]:
    p = get_pki()
    folder = Path(tempfile.mkdtemp(prefix="estproto-peers-"))
    paths = {}
    for name, data in {
        "ca": pki.pem(p.ca),
        "device": pki.pem(p.device_cert),
        "device_key": p.device_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }.items():
        path = folder / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = str(path)
    return paths


@functools.lru_cache(maxsize=None)
def stdlib_client_context(version: str, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=pki.pem(get_pki().ca).decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    if with_cert:
        files = _files()
        ctx.load_cert_chain(files["device"], files["device_key"])
    return ctx


class StdlibClient:
    """A TLS client from the standard library, over memory BIOs, talking to a
    ServerConnection answered by the reference application."""

    def __init__(self, version: str = "1.3", *, app: ReferenceApp | None = None,
                 with_cert: bool = False, bytewise: bool = False, **server_kwargs: object) -> None:
        self.server = ServerConnection(server_config(version, **server_kwargs))
        self.app = app or ReferenceApp()
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = stdlib_client_context(version, with_cert).wrap_bio(
            self.incoming, self.outgoing, server_hostname="localhost"
        )
        self.bytewise = bytewise
        self.events: list[object] = []
        self.handshake_done = False
        self.peer_closed = False

    def _serve(self) -> None:
        while True:
            event = self.server.next_event()
            if event is NEED_DATA or event is PAUSED:
                return
            if isinstance(event, ConnectionClosed):
                if event not in self.events:
                    self.events.append(event)
                return
            self.events.append(event)
            if isinstance(event, ServerRequest):
                self.server.send(self.app.handle(event))

    def _to_server(self, data: bytes) -> None:
        if self.bytewise:
            for i in range(len(data)):
                self.server.receive_data(data[i:i + 1])
        else:
            self.server.receive_data(data)

    def pump(self) -> None:
        for _ in range(100):
            if not self.handshake_done:
                try:
                    self.tls.do_handshake()
                    self.handshake_done = True
                except ssl.SSLWantReadError:
                    pass
            out = self.outgoing.read()
            if out:
                self._to_server(out)
            self._serve()
            back = self.server.data_to_send()
            if back:
                self.incoming.write(back)
            if not out and not back:
                return
        raise AssertionError("no progress")

    def read_plaintext(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            if not chunk:  # close_notify reads as b"" on an SSLObject
                self.peer_closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def exchange(self, raw_request: bytes) -> bytes:
        """Write raw request bytes; return the raw response bytes."""
        self.pump()
        assert self.handshake_done
        self.tls.write(raw_request)
        self.pump()
        return self.read_plaintext()


def request_bytes(method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b"") -> bytes:  # type: ignore[assignment]
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_responses(raw: bytes) -> list[tuple[bytes, dict[bytes, list[bytes]], bytes]]:
    """Split raw bytes into (head, headers, body) per response, checking framing."""
    out = []
    rest = raw
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete head {head[:80]!r}"
        lines = head.split(b"\r\n")
        assert re.fullmatch(rb"HTTP/1\.1 [1-5]\d\d [ -~]*", lines[0]), lines[0]
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        status = int(lines[0].split()[1])
        assert len(head) + 4 < 1024, "strongSwan reads the head in its first 1024 bytes"
        assert b"transfer-encoding" not in headers
        if status == 204:
            body = b""
        else:
            assert b"content-length" in headers, head
            length = int(headers[b"content-length"][0])
            body, rest = rest[:length], rest[length:]
        out.append((lines[0], headers, body))
    return out


def one(raw: bytes) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    (resp,) = parse_responses(raw)
    return int(resp[0].split()[1]), resp[1], resp[2]


def wrapped(body: bytes) -> bool:
    lines = body.rstrip(b"\n").split(b"\n")
    return len(lines) > 1 and all(len(line.rstrip(b"\r")) == 64 for line in lines[:-1])


def b64(der: bytes, wrap: bool) -> bytes:
    text = base64.b64encode(der)
    if not wrap:
        return text + b"\n"
    return b"".join(text[i:i + 64] + b"\n" for i in range(0, len(text), 64))


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_cacerts_bytes(bytewise: bool, version: str) -> None:
    client = StdlibClient(version, bytewise=bytewise)
    status, headers, body = one(client.exchange(request_bytes("GET", f"{EST}/cacerts")))
    assert status == 200
    assert headers[b"content-type"] == [b"application/pkcs7-mime"]
    assert headers[b"content-transfer-encoding"] == [b"base64"]
    # single line plus "\n" by default (strongSwan cannot read wrapped base64)
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    assert pkcs7.decode_certs_only(base64.b64decode(body)) == (get_pki().ca,)


@pytest.mark.parametrize("wrap,agent,expect_wrapped", [
    (False, "curl/8.0", False),
    (True, "curl/8.0", True),
    (False, "libest 3.2.0", True),
])
def test_response_line_policy(bytewise: bool, wrap: bool, agent: str, expect_wrapped: bool) -> None:
    client = StdlibClient(bytewise=bytewise)
    csr = csr_for(new_key())
    raw = request_bytes("POST", f"{EST}/simpleenroll", [
        ("Content-Type", "application/pkcs10"), ("User-Agent", agent)], b64(csr, wrap))
    status, headers, body = one(client.exchange(raw))
    assert status == 200
    assert headers[b"content-type"] == [b"application/pkcs7-mime; smime-type=certs-only"]
    assert wrapped(body) is expect_wrapped
    if not expect_wrapped:
        assert body.count(b"\n") == 1


def test_pem_and_der_bodies_accepted() -> None:
    client = StdlibClient()
    csr = csr_for(new_key())
    pem_body = b"-----BEGIN CERTIFICATE REQUEST-----\n" + b64(csr, True) + b"-----END CERTIFICATE REQUEST-----\n"
    status, _, _ = one(client.exchange(request_bytes(
        "POST", f"{EST}/simpleenroll", [("Content-Type", "application/pkcs10")], pem_body)))
    assert status == 200


def test_401_has_empty_body_and_challenge(bytewise: bool) -> None:
    client = StdlibClient(app=ReferenceApp(auth="digest"), bytewise=bytewise)
    raw = request_bytes("POST", f"{EST}/simpleenroll", [("Content-Type", "application/pkcs10")],
                        b64(csr_for(new_key()), True))
    status, headers, body = one(client.exchange(raw))
    assert status == 401
    assert body == b"" and headers[b"content-length"] == [b"0"]
    challenges = headers[b"www-authenticate"]
    assert len(challenges) == 2 and all(c.startswith(b"Digest ") for c in challenges)
    assert b'algorithm="SHA-256"' in challenges[0]


def test_basic_auth_with_h11_client() -> None:
    """A raw h11 client, answering nothing by itself."""
    client = StdlibClient(app=ReferenceApp(auth="basic"))
    conn = h11.Connection(h11.CLIENT)
    body = b64(csr_for(new_key()), False)
    token = base64.b64encode(b"alice:secret").decode()
    data = conn.send(h11.Request(method="POST", target=f"{EST}/simpleenroll", headers=[
        ("Host", "localhost"), ("Content-Type", "application/pkcs10"),
        ("Content-Length", str(len(body))), ("Authorization", f"Basic {token}")]))
    data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    conn.receive_data(client.exchange(data))
    response = conn.next_event()
    assert isinstance(response, h11.Response) and response.status_code == 200
    assert response.http_version == b"1.1"
    payload = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            payload += event.data
        else:
            assert isinstance(event, h11.EndOfMessage)
            break
    assert len(pkcs7.decode_certs_only(base64.b64decode(payload))) == 1


def test_202_retry_after_seconds_and_date() -> None:
    import datetime
    when = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
    for retry_after, expected in [(30, b"30"), (when, b"Tue, 06 May 2031 07:08:09 GMT")]:
        client = StdlibClient(app=ReferenceApp(pending=1, retry_after=retry_after))
        status, headers, _ = one(client.exchange(request_bytes(
            "POST", f"{EST}/simpleenroll", [("Content-Type", "application/pkcs10")],
            b64(csr_for(new_key()), True))))
        assert status == 202
        assert headers[b"retry-after"] == [expected]


@pytest.mark.parametrize("method,target,headers,body,status", [
    ("GET", "/nothing", [], b"", 404),
    ("GET", f"{EST}/nosuch", [], b"", 404),
    ("POST", f"{EST}/cacerts", [("Content-Type", "text/plain")], b"x", 405),
    ("GET", f"{EST}/simpleenroll", [], b"", 405),
    ("POST", f"{EST}/simpleenroll", [("Content-Type", "application/json")], b"x\n", 415),
    ("POST", f"{EST}/simpleenroll", [], b"x\n", 415),
    ("POST", f"{EST}/simpleenroll", [("Content-Type", "application/pkcs10")], b"@@@\n", 400),
    ("POST", f"{EST}/simplereenroll", [("Content-Type", "application/pkcs10")], b"", 400),
])
def test_error_statuses(bytewise: bool, method: str, target: str, headers: list[tuple[str, str]],
                        body: bytes, status: int) -> None:
    client = StdlibClient(bytewise=bytewise)
    got, response_headers, response_body = one(client.exchange(request_bytes(method, target, headers, body)))
    assert got == status
    assert response_headers[b"content-type"][0].startswith(b"text/plain")
    assert response_body.endswith(b"\n")
    if status == 405:
        assert response_headers[b"allow"] in ([b"GET"], [b"POST"])
    # EST-level rejections keep the connection
    assert b"connection" not in response_headers
    status2, _, _ = one(client.exchange(request_bytes("GET", f"{EST}/cacerts")))
    assert status2 == 200


def test_reenroll_without_certificate_403_and_with_certificate_200() -> None:
    csr = csr_for(get_pki().device_key, "device")
    raw = request_bytes("POST", f"{EST}/simplereenroll", [("Content-Type", "application/pkcs10")],
                        b64(csr, True))
    assert one(StdlibClient().exchange(raw))[0] == 403
    assert one(StdlibClient(with_cert=True, app=ReferenceApp(auth="cert")).exchange(raw))[0] == 200


def test_pipelined_requests_in_one_write(bytewise: bool) -> None:
    client = StdlibClient(bytewise=bytewise, app=ReferenceApp(csr_attributes=None))
    raw = (request_bytes("GET", f"{EST}/cacerts") + request_bytes("GET", f"{EST}/csrattrs")
           + request_bytes("GET", f"{EST}/x/cacerts"))
    responses = parse_responses(client.exchange(raw))
    assert [int(r[0].split()[1]) for r in responses] == [200, 204, 200]
    assert b"content-length" not in responses[1][1]  # RFC 7230 3.3.2: never on 204


def test_limits_413_431_close_the_connection() -> None:
    client = StdlibClient(max_body_size=1000)
    status, headers, _ = one(client.exchange(request_bytes(
        "POST", f"{EST}/simpleenroll", [("Content-Type", "application/pkcs10")], b"A" * 2000)))
    assert status == 413 and headers[b"connection"] == [b"close"]
    assert [type(e) for e in client.events] == [ConnectionTerminated, ConnectionClosed]
    assert client.events[0].status == 413  # type: ignore[attr-defined]
    client = StdlibClient(max_head_size=512)
    status, headers, _ = one(client.exchange(request_bytes(
        "GET", f"{EST}/cacerts", [("X-Pad", "y" * 1000)])))
    assert status == 431 and headers[b"connection"] == [b"close"]


def test_garbage_http_is_400_then_close(bytewise: bool) -> None:
    client = StdlibClient(bytewise=bytewise)
    status, headers, _ = one(client.exchange(b"\x00\x01 not http at all\r\n\r\n"))
    assert status == 400 and headers[b"connection"] == [b"close"]
    assert client.server.closed
    assert [type(e) for e in client.events] == [ConnectionTerminated, ConnectionClosed]


def test_http10_gets_one_request() -> None:
    client = StdlibClient()
    raw = b"GET /.well-known/est/cacerts HTTP/1.0\r\nHost: x\r\n\r\n"
    response = client.exchange(raw)
    status, headers, _ = one(response)
    assert status == 200
    assert client.server.closed


def test_connection_close_and_close_notify() -> None:
    client = StdlibClient()
    status, headers, _ = one(client.exchange(request_bytes("GET", f"{EST}/cacerts", [("Connection", "close")])))
    assert status == 200 and headers[b"connection"] == [b"close"]
    # the server's close_notify follows the response
    assert client.peer_closed
    assert client.server.closed


def test_client_close_notify_reaches_server() -> None:
    client = StdlibClient()
    assert one(client.exchange(request_bytes("GET", f"{EST}/cacerts")))[0] == 200
    try:
        client.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    client.pump()
    assert client.events[-1] == ConnectionClosed()
    assert not any(isinstance(e, ConnectionTerminated) for e in client.events)


def test_channel_binding_matches_stdlib_tls_unique() -> None:
    """tls-unique as the stdlib computes it links a CSR on our server (TLS 1.2)."""
    app = ReferenceApp()
    client = StdlibClient("1.2", app=app)
    client.pump()
    unique = client.tls.get_channel_binding("tls-unique")
    assert unique is not None
    csr = csr_for(new_key(), challenge_password=base64.b64encode(unique).decode())
    status, _, _ = one(client.exchange(request_bytes(
        "POST", f"{EST}/simpleenroll", [("Content-Type", "application/pkcs10")], b64(csr, True))))
    assert status == 200
    assert app.requests[0].pop_linked  # type: ignore[attr-defined]
