"""The client against servers that close connections it could have reused.

The server here is independent of estproto's server code: pyOpenSSL over a
real blocking socket, requests parsed by a raw ``h11.Connection``, responses
hand-made, certificates signed with ``cryptography``. It behaves as libest's
``estserver -r estrealm`` does: the first, unauthenticated POST gets
``401 WWW-Authenticate: Basic realm="estrealm"`` *without*
``Connection: close``, and then the server closes anyway. RFC 9112 9.3 lets a
server close any connection at any time, so the client must answer the
challenge on a new connection, once, and a CSR linked to the TLS channel
(RFC 7030 3.5) must then carry the *new* connection's channel binding. The
server computes that binding itself (tls-unique from the Finished messages on
TLS 1.2, tls-exporter on 1.3) and checks every CSR it accepts against it.

Also here: a 202 + Retry-After followed by a close, and a server that closes
an idle keep-alive connection without warning.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import h11
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from OpenSSL import SSL
from OpenSSL._util import lib as openssl_lib

import estproto.asyncio as est_asyncio
import estproto.sync as est_sync
import estproto.trio as est_trio
import pki
from conn_helpers import client_tls, get_pki
from estproto._adapter_common import ESTAuthenticationError
from estproto.client import Credentials
from estproto.codecs import pkcs10

OID_CHALLENGE_PASSWORD = x509.ObjectIdentifier("1.2.840.113549.1.9.7")
USER, PASSWORD = "estuser", "estpwd"
GOOD_BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
#: Seconds any socket operation of the test server may block.
SERVER_IO_TIMEOUT = 10.0


@dataclasses.dataclass
class Accepted:
    """A request the server accepted: on which connection, and its PoP facts."""

    connection: int
    path: str
    binding_b64: str  # base64 of this connection's channel binding
    challenge_password: str | None  # as received in the CSR, or None


class ClosingServer:
    """A libest-like EST server that closes after answering (see module doc).

    Args:
        version: highest TLS version, "1.2" or "1.3".
        after_401: what the server does after its 401 (never announced):
            "close" closes at once with close_notify; "drop-answer" reads the
            client's answer sent on the same connection, then closes without
            close_notify; "reset-answer" reads that answer, then resets.
        pending: how many authorized enrollments get ``202 Retry-After: 1``
            (without ``Connection: close``) before being granted, each
            followed by a close.
        close_idle: close every connection right after a 200, unannounced.
    """

    def __init__(self, version: str, *, after_401: str = "close", pending: int = 0,
                 close_idle: bool = False) -> None:
        p = get_pki()
        self.ca, self.ca_key = p.ca, p.ca_key
        self.after_401 = after_401
        self.pending = pending
        self.close_idle = close_idle
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION if version == "1.2" else SSL.TLS1_3_VERSION)
        ctx.use_certificate(p.server_cert)
        ctx.use_privatekey(p.server_key)  # type: ignore[arg-type]
        # Client certificates (for reenroll) are asked for, not required;
        # this peer trusts whatever comes, it only checks PoP linking.
        ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
        ctx.set_session_id(b"estproto-closing-server")
        self.context = ctx
        self.accepted: list[Accepted] = []
        self.connections = 0
        self.errors: list[BaseException] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        self._thread.join(SERVER_IO_TIMEOUT + 5)
        self.listener.close()
        if self.errors:
            raise self.errors[0]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            try:
                self._one_connection(raw, self.connections)
            except (OSError, SSL.Error):
                pass  # the client went away: its side of the test decides
            except BaseException as exc:  # reported by close()
                self.errors.append(exc)
            finally:
                raw.close()

    # -- one connection ------------------------------------------------------

    def _one_connection(self, raw: socket.socket, index: int) -> None:
        # Blocking, as pyOpenSSL over a socket needs, but bounded.
        raw.setblocking(True)
        timeval = struct.pack("ll", int(SERVER_IO_TIMEOUT), 0)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        tls = SSL.Connection(self.context, raw)
        tls.set_accept_state()
        tls.do_handshake()
        binding = self._binding(tls)
        http = h11.Connection(h11.SERVER)
        while True:
            request = self._next_request(tls, http)
            if request is None:
                return
            head, body = request
            path = head.target.decode()
            authorization = dict(head.headers).get(b"authorization", b"").decode()
            if head.method == b"GET":
                self._send(tls, http, 200, "application/pkcs7-mime", self._certs_only([self.ca]))
                if self.close_idle:
                    self._shutdown(tls)
                    return
            elif authorization != GOOD_BASIC:
                self._send(tls, http, 401, None, b"", [("WWW-Authenticate", 'Basic realm="estrealm"')])
                self._after_challenge(raw, tls, http)
                return
            elif self.pending > 0:
                self.pending -= 1
                self._send(tls, http, 202, None, b"", [("Retry-After", "1")])
                self._shutdown(tls)
                return
            else:
                csr = x509.load_der_x509_csr(base64.b64decode(body))
                self.accepted.append(Accepted(index, path, binding, _challenge_password(csr)))
                self._send(tls, http, 200, *self._answer(path, csr))
                if self.close_idle:
                    self._shutdown(tls)
                    return
            http.start_next_cycle()

    def _after_challenge(self, raw: socket.socket, tls: SSL.Connection, http: h11.Connection) -> None:
        if self.after_401 == "close":
            self._shutdown(tls)
            return
        http.start_next_cycle()
        self._next_request(tls, http)  # the answer sent in place: never answered
        if self.after_401 == "reset-answer":
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # "drop-answer": a plain close, no close_notify.

    @staticmethod
    def _shutdown(tls: SSL.Connection) -> None:
        with contextlib.suppress(SSL.Error, OSError):
            tls.shutdown()

    @staticmethod
    def _binding(tls: SSL.Connection) -> str:
        if tls.get_protocol_version_name() == "TLSv1.3":
            value = tls.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")
        else:
            # RFC 5929 3.1: the first Finished of the latest handshake: the
            # client's on a full handshake, ours on a resumed one.
            # pyOpenSSL has no public call for SSL_session_reused.
            reused = bool(openssl_lib.SSL_session_reused(tls._ssl))  # type: ignore[attr-defined]
            value = tls.get_finished() if reused else tls.get_peer_finished()
        assert value
        return base64.b64encode(value).decode()

    @staticmethod
    def _next_request(tls: SSL.Connection, http: h11.Connection) -> tuple[h11.Request, bytes] | None:
        head: h11.Request | None = None
        body = b""
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = tls.recv(65536)
                except SSL.ZeroReturnError:
                    data = b""
                http.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return head, body
            else:  # ConnectionClosed
                return None

    # -- responses -----------------------------------------------------------

    def _certs_only(self, certs: list[x509.Certificate]) -> bytes:
        return base64.b64encode(pkcs7.serialize_certificates(certs, serialization.Encoding.DER))

    @staticmethod
    def _send(tls: SSL.Connection, http: h11.Connection, status: int, content_type: str | None,
              body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        fields = list(headers or [])
        if content_type is not None:
            fields.append(("Content-Type", content_type))
        fields.append(("Content-Length", str(len(body))))
        data = http.send(h11.Response(status_code=status, headers=fields))
        data += http.send(h11.Data(data=body)) if body else b""
        tls.sendall(data + http.send(h11.EndOfMessage()))

    def _answer(self, path: str, csr: x509.CertificateSigningRequest) -> tuple[str, bytes]:
        """(content type, body) of a successful enrollment response."""
        cert_type = "application/pkcs7-mime; smime-type=certs-only"
        if not path.endswith("/serverkeygen"):
            cert = pki.issue(self.ca, self.ca_key, csr.public_key(), "device")
            return cert_type, self._certs_only([cert])
        key = pki.make_key("p256")
        cert = pki.issue(self.ca, self.ca_key, key.public_key(), "device")
        pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        body = (b"--est\r\nContent-Type: application/pkcs8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                + base64.b64encode(pkcs8) + b"\r\n--est\r\nContent-Type: " + cert_type.encode()
                + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + self._certs_only([cert])
                + b"\r\n--est--\r\n")
        return 'multipart/mixed; boundary="est"', body


def _challenge_password(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        value = csr.attributes.get_attribute_for_oid(OID_CHALLENGE_PASSWORD).value
    except x509.AttributeNotFound:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def closing_server(version: str, **kwargs: Any) -> Iterator[ClosingServer]:
    server = ClosingServer(version, **kwargs)
    try:
        yield server
    finally:
        server.close()


# ---------------------------------------------------------------------------
# Running a client under either framework


FRAMEWORKS = ["trio", "asyncio", "sync"]


class _Blocking:
    """:class:`estproto.sync.ESTClient` behind the async interface of these
    tests, so that one test body runs every client (its calls block)."""

    def __init__(self, client: est_sync.ESTClient) -> None:
        self._client = client

    async def __aenter__(self) -> _Blocking:
        self._client.__enter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._client.__exit__(*exc_info)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)
        return call


class _SyncModule:
    @staticmethod
    def ESTClient(*args: Any, **kwargs: Any) -> _Blocking:  # noqa: N802 (a module's class)
        return _Blocking(est_sync.ESTClient(*args, **kwargs))


def run(framework: str, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(module)`` under *framework*, with a deadline ("sync" runs
    the blocking client inside asyncio; its own timeouts bound it)."""
    if framework == "trio":
        async def main_trio() -> Any:
            with trio.fail_after(30):
                return await fn(est_trio)
        return trio.run(main_trio)
    import asyncio

    async def main_asyncio() -> Any:
        return await asyncio.wait_for(fn(_SyncModule if framework == "sync" else est_asyncio), 30)
    return asyncio.run(main_asyncio())


def make_client(mod: Any, server: ClosingServer, version: str, *, password: str = PASSWORD,
                identity: str | None = None) -> Any:
    return mod.ESTClient("127.0.0.1", server.port, client_tls(version, identity),
                         credentials=Credentials(USER, password), max_retry_wait=5)


OPERATIONS = ("simpleenroll", "simplereenroll", "serverkeygen")


async def do(client: Any, operation: str, pop: bool) -> x509.Certificate:
    key = pki.make_key("p256")
    subject = pki.name("device")
    if operation == "serverkeygen":
        if pop:
            return (await client.serverkeygen_linked(key, subject)).certificate
        return (await client.serverkeygen(pkcs10.build_csr(key, subject))).certificate
    if pop:
        return await getattr(client, f"{operation}_linked")(key, subject)
    return await getattr(client, operation)(pkcs10.build_csr(key, subject))


def check_linking(server: ClosingServer, pop: bool) -> None:
    assert server.accepted, "the server accepted nothing"
    for accepted in server.accepted:
        if pop:
            # Linked to the connection that carried it, never to an old one.
            assert accepted.challenge_password == accepted.binding_b64, accepted
        else:
            assert accepted.challenge_password is None


# ---------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("pop", [True, False], ids=["pop", "no-pop"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_401_then_close_is_answered_on_a_new_connection(
    framework: str, version: str, pop: bool, operation: str
) -> None:
    identity = "device" if operation == "simplereenroll" else None
    with closing_server(version) as server:
        async def main(mod: Any) -> x509.Certificate:
            async with make_client(mod, server, version, identity=identity) as client:
                return await do(client, operation, pop)

        cert = run(framework, main)
        assert cert.issuer == server.ca.subject
        assert server.connections == 2
        assert [a.connection for a in server.accepted] == [2]
        check_linking(server, pop)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("after_401", ["drop-answer", "reset-answer"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_answer_sent_in_place_then_connection_ends(framework: str, after_401: str, version: str) -> None:
    # The client answered the 401 on the same connection (it was not told
    # to close); the server read that answer and closed (or reset) without
    # responding. The answer goes again, once, on a new connection, with a
    # CSR linked to that connection.
    with closing_server(version, after_401=after_401) as server:
        async def main(mod: Any) -> x509.Certificate:
            async with make_client(mod, server, version) as client:
                return await do(client, "simpleenroll", pop=True)

        run(framework, main)
        assert server.connections == 2
        check_linking(server, pop=True)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("after_401", ["close", "drop-answer"])
def test_wrong_password_is_retried_once_only(framework: str, after_401: str) -> None:
    with closing_server("1.3", after_401=after_401) as server:
        async def main(mod: Any) -> None:
            async with make_client(mod, server, "1.3", password="wrong") as client:
                with pytest.raises(ESTAuthenticationError):
                    await do(client, "simpleenroll", pop=True)

        run(framework, main)
        assert server.connections == 2
        assert server.accepted == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_202_then_close_then_granted(framework: str, version: str) -> None:
    # 401 + close, answered on connection 2, which gets 202 + close; after
    # Retry-After, connection 3 (401 + close again: the server wants
    # credentials on every connection) and connection 4 gets the certificate.
    with closing_server(version, pending=1) as server:
        async def main(mod: Any) -> x509.Certificate:
            async with make_client(mod, server, version) as client:
                return await do(client, "simpleenroll", pop=True)

        run(framework, main)
        assert server.connections == 4
        assert [a.connection for a in server.accepted] == [4]
        check_linking(server, pop=True)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_idle_keepalive_closed_without_warning(framework: str) -> None:
    # /cacerts on connection 1, which the server then closes unannounced;
    # the enrollment finds it closed and moves to new connections.
    with closing_server("1.2", close_idle=True) as server:
        async def main(mod: Any) -> None:
            async with make_client(mod, server, "1.2") as client:
                assert await client.cacerts() == (server.ca,)
                if mod is est_trio:
                    await trio.sleep(0.1)
                else:
                    import asyncio
                    await asyncio.sleep(0.1)
                await do(client, "simpleenroll", pop=True)
                assert await client.cacerts() == (server.ca,)

        run(framework, main)
        check_linking(server, pop=True)
        # cacerts; enroll: 401 + close, then granted + close; cacerts again
        assert server.connections == 4


@pytest.mark.parametrize("pop", [True, False], ids=["pop", "no-pop"])
@pytest.mark.parametrize("command", ["enroll", "serverkeygen"])
def test_cli_against_a_server_that_closes_after_401(tmp_path: Path, pop: bool, command: str) -> None:
    p = get_pki()
    (tmp_path / "ca.pem").write_bytes(pki.pem(p.ca))
    with closing_server("1.2") as server:
        url = f"https://127.0.0.1:{server.port}/.well-known/est"
        env = dict(os.environ, ESTPROTO_PASSWORD=PASSWORD)
        done = subprocess.run(
            [sys.executable, "-m", "estproto", command, url, "--cacert", str(tmp_path / "ca.pem"),
             "--user", USER, "--subject", "CN=device", "--key-out", str(tmp_path / "k.pem"),
             "--out", str(tmp_path / "c.pem"), "--pop" if pop else "--no-pop"],
            env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
        assert cert.issuer == p.ca.subject
        check_linking(server, pop)
