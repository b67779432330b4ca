"""ClientSession's policy, driven without sockets or a real clock.

:class:`estproto.ClientSession` makes every decision of an EST client across
connections; drivers only carry out its instructions. Here the driver is
:func:`estproto.drive` over :class:`MemoryTransport`, whose far end is an
independent server: pyOpenSSL over memory BIOs and a raw ``h11.Connection``,
answering from a per-test script, signing with ``cryptography``. Time is a
number the transport advances, so a Retry-After of a minute or a request
deadline costs nothing, and every wait the session asks for is recorded.

The server checks each CSR's challengePassword against the channel binding
of the TLS connection that carried it (tls-unique on TLS 1.2, tls-exporter
on 1.3, RFC 7030 3.5 / RFC 9266).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import email.utils
from typing import Any, Callable

import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from OpenSSL import SSL
from OpenSSL._util import lib as openssl_lib

import pki
from conn_helpers import client_tls, get_pki
from estproto import (
    ClientSession,
    ESTAuthenticationError,
    ESTError,
    ESTPendingError,
    LocalProtocolError,
    Read,
    RemoteProtocolError,
    drive,
)
from estproto.client import Credentials
from estproto.codecs import pkcs10

OID_CHALLENGE_PASSWORD = x509.ObjectIdentifier("1.2.840.113549.1.9.7")
USER, PASSWORD = "estuser", "estpwd"
GOOD_BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"


# ---------------------------------------------------------------------------
# The far end: one scripted TLS + HTTP server per connection, in memory


@dataclasses.dataclass
class Request:
    """What the server received, and on which connection."""

    connection: int
    method: str
    path: str
    authorization: str
    body: bytes
    binding_b64: str  # this connection's channel binding, base64


@dataclasses.dataclass
class Reply:
    """What the script answers; *close* ends the connection after it,
    unannounced (no ``Connection: close``), with a close_notify."""

    status: int
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    close: bool = False


Script = Callable[[Request], "Reply | None"]  # None: never answer


class Peer:
    """The server side of one connection: pyOpenSSL memory BIO + h11."""

    def __init__(self, context: SSL.Context, index: int, script: Script,
                 received: list[Request]) -> None:
        self.tls = SSL.Connection(context, None)
        self.tls.set_accept_state()
        self.http = h11.Connection(h11.SERVER)
        self.index, self.script, self.received = index, script, received
        self.closed = False
        self._head: h11.Request | None = None
        self._body = b""

    def receive(self, data: bytes) -> None:
        if self.closed or not data:
            return  # written to a socket the server no longer reads
        self.tls.bio_write(data)
        try:
            self.tls.do_handshake()
            while True:
                self.http.receive_data(self.tls.recv(65536))
                self._handle_events()
        except SSL.WantReadError:
            pass
        except (SSL.ZeroReturnError, SSL.Error):
            self.closed = True  # close_notify or a fatal alert: the server leaves

    def pending(self) -> bytes:
        out = b""
        while True:
            try:
                out += self.tls.bio_read(65536)
            except SSL.WantReadError:
                return out

    def _handle_events(self) -> None:
        while not self.closed:
            event = self.http.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._head, self._body = event, b""
            elif isinstance(event, h11.Data):
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._answer()
            else:  # ConnectionClosed
                self.closed = True

    def _answer(self) -> None:
        head = self._head
        assert head is not None
        request = Request(
            self.index, head.method.decode(), head.target.decode(),
            dict(head.headers).get(b"authorization", b"").decode(), self._body, self._binding(),
        )
        self.received.append(request)
        reply = self.script(request)
        if reply is None:
            return
        headers = [*reply.headers, ("Content-Length", str(len(reply.body)))]
        data = self.http.send(h11.Response(status_code=reply.status, headers=headers))
        if reply.body:
            data += self.http.send(h11.Data(data=reply.body))
        self.tls.sendall(data + self.http.send(h11.EndOfMessage()))
        if reply.close:
            self.tls.shutdown()
            self.closed = True
        else:
            self.http.start_next_cycle()

    def _binding(self) -> str:
        if self.tls.get_protocol_version_name() == "TLSv1.3":
            value = self.tls.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")
        else:
            # RFC 5929 3.1: the first Finished of the handshake: the client's
            # on a full handshake, ours on a resumed one.
            reused = bool(openssl_lib.SSL_session_reused(self.tls._ssl))  # type: ignore[attr-defined]
            value = self.tls.get_finished() if reused else self.tls.get_peer_finished()
        assert value
        return base64.b64encode(value).decode()


class MemoryTransport:
    """A :class:`estproto.Transport` whose far end is a scripted :class:`Peer`.

    The clock only moves when the session waits: a read with nothing to
    read jumps to its deadline, a :class:`~estproto.Wait` adds its seconds.
    """

    def __init__(self, version: str, script: Script) -> None:
        p = get_pki()
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION if version == "1.2" else SSL.TLS1_3_VERSION)
        ctx.use_certificate(p.server_cert)
        ctx.use_privatekey(p.server_key)  # type: ignore[arg-type]
        ctx.set_session_id(b"estproto-session-test")
        self.context, self.script = ctx, script
        self.now = 1000.0
        self.waits: list[float] = []
        self.received: list[Request] = []
        self.connections = 0
        self.reset_writes = 0  # the next n writes fail with a reset
        self.interrupt_reads = False  # the next read raises KeyboardInterrupt
        self.peer: Peer | None = None

    def connect(self, host: str, port: int, timeout: float) -> None:
        assert (host, port) == ("localhost", 443)
        assert self.peer is None, "connected twice without a disconnect"
        self.connections += 1
        self.peer = Peer(self.context, self.connections, self.script, self.received)

    def write(self, data: bytes) -> None:
        assert self.peer is not None
        if self.reset_writes:
            self.reset_writes -= 1
            self.peer.closed = True
            raise ConnectionResetError("reset by the test")
        self.peer.receive(data)

    def read(self, deadline: float | None) -> bytes | None:
        assert self.peer is not None
        if self.interrupt_reads:
            self.interrupt_reads = False
            raise KeyboardInterrupt
        data = self.peer.pending()
        if data or self.peer.closed:
            return data
        assert deadline is not None, "the session waited for an answer without a deadline"
        self.now = max(self.now, deadline)
        return None

    def disconnect(self, final: bytes) -> None:
        assert self.peer is not None
        self.peer.receive(final)
        self.peer = None

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


# ---------------------------------------------------------------------------
# Scripts and checks


def certs_only(certs: list[x509.Certificate]) -> bytes:
    return base64.b64encode(pkcs7.serialize_certificates(certs, serialization.Encoding.DER))


def issue(request: Request) -> Reply:
    csr = x509.load_der_x509_csr(base64.b64decode(request.body))
    p = get_pki()
    cert = pki.issue(p.ca, p.ca_key, csr.public_key(), "device")
    return Reply(200, [("Content-Type", CERTS_ONLY)], certs_only([cert]))


def cacerts(request: Request) -> Reply:
    return Reply(200, [("Content-Type", "application/pkcs7-mime")], certs_only([get_pki().ca]))


def challenge(close: bool) -> Reply:
    return Reply(401, [("WWW-Authenticate", 'Basic realm="estrealm"')], close=close)


def challenge_password(request: Request) -> str | None:
    csr = x509.load_der_x509_csr(base64.b64decode(request.body))
    try:
        value = csr.attributes.get_attribute_for_oid(OID_CHALLENGE_PASSWORD).value
    except x509.AttributeNotFound:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def session(**kwargs: Any) -> ClientSession:
    settings: dict[str, Any] = {"credentials": Credentials(USER, PASSWORD), **kwargs}
    version = settings.pop("version", "1.3")
    return ClientSession("localhost", 443, client_tls(version), **settings)


def enroll_linked(s: ClientSession, transport: MemoryTransport) -> x509.Certificate:
    return drive(s.simpleenroll_linked(pki.make_key("p256"), pki.name("device")), transport)


def posts(transport: MemoryTransport) -> list[Request]:
    return [r for r in transport.received if r.method == "POST"]


# ---------------------------------------------------------------------------
# Tests


def test_keep_alive_connection_is_reused() -> None:
    transport = MemoryTransport("1.3", cacerts)
    s = session()
    assert drive(s.cacerts(), transport) == (get_pki().ca,)
    assert drive(s.cacerts(), transport) == (get_pki().ca,)
    assert transport.connections == 1 == s.connections_opened
    drive(s.close(), transport)
    assert transport.peer is None


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_401_then_close_goes_once_more_on_a_new_connection_with_a_relinked_csr(version: str) -> None:
    def script(request: Request) -> Reply:
        if request.authorization != GOOD_BASIC:
            return challenge(close=True)
        return issue(request)

    transport = MemoryTransport(version, script)
    cert = enroll_linked(session(version=version), transport)
    assert cert.issuer == get_pki().ca.subject
    assert [(r.connection, r.authorization) for r in posts(transport)] == [(1, ""), (2, GOOD_BASIC)]
    for request in posts(transport):
        # Each CSR carries the binding of the connection that carried it.
        assert challenge_password(request) == request.binding_b64
    assert posts(transport)[0].binding_b64 != posts(transport)[1].binding_b64


def test_401_on_a_kept_connection_is_answered_in_place() -> None:
    def script(request: Request) -> Reply:
        return issue(request) if request.authorization == GOOD_BASIC else challenge(close=False)

    transport = MemoryTransport("1.3", script)
    enroll_linked(session(), transport)
    assert [r.connection for r in posts(transport)] == [1, 1]
    assert all(challenge_password(r) == r.binding_b64 for r in posts(transport))


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "close"])
def test_wrong_password_is_tried_once(close: bool) -> None:
    transport = MemoryTransport("1.3", lambda request: challenge(close))
    with pytest.raises(ESTAuthenticationError, match="credentials refused"):
        enroll_linked(session(credentials=Credentials(USER, "wrong")), transport)
    assert len(posts(transport)) == 2
    assert transport.connections == (2 if close else 1)


def test_202_retry_after_seconds_is_waited_out_on_a_new_connection() -> None:
    answers = iter([Reply(202, [("Retry-After", "60")])])

    def script(request: Request) -> Reply:
        return next(answers, None) or issue(request)

    transport = MemoryTransport("1.2", script)
    enroll_linked(session(version="1.2"), transport)
    # RFC 7030 4.2.3: wait at least Retry-After; the connection is closed
    # meanwhile, and the repeated CSR is linked to the new one.
    assert transport.waits == [60.0]
    assert [r.connection for r in posts(transport)] == [1, 2]
    assert all(challenge_password(r) == r.binding_b64 for r in posts(transport))


def test_202_retry_after_http_date_is_measured_against_the_wall_clock() -> None:
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=120)
    answers = iter([Reply(202, [("Retry-After", email.utils.format_datetime(at, usegmt=True))])])

    def script(request: Request) -> Reply:
        return next(answers, None) or issue(request)

    transport = MemoryTransport("1.3", script)
    enroll_linked(session(), transport)
    [wait] = transport.waits
    assert 115 <= wait <= 120  # HTTP-date has whole seconds


def test_pending_after_the_allowed_retries_is_an_error() -> None:
    transport = MemoryTransport("1.3", lambda request: Reply(202, [("Retry-After", "5")]))
    with pytest.raises(ESTPendingError) as caught:
        enroll_linked(session(max_retries=2), transport)
    assert transport.waits == [5.0, 5.0]
    assert len(posts(transport)) == 3
    assert caught.value.pending.retry_after == 5


def test_retry_after_beyond_the_limit_is_not_waited_for() -> None:
    transport = MemoryTransport("1.3", lambda request: Reply(202, [("Retry-After", "3600")]))
    with pytest.raises(ESTPendingError):
        enroll_linked(session(max_retry_wait=300), transport)
    assert transport.waits == []
    assert len(posts(transport)) == 1


def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    def script(request: Request) -> Reply:
        return dataclasses.replace(cacerts(request), close=True)

    transport = MemoryTransport("1.3", script)
    s = session()
    drive(s.cacerts(), transport)
    drive(s.cacerts(), transport)
    assert transport.connections == 2


def test_reset_on_a_reused_connection_reconnects_but_not_on_a_new_one() -> None:
    transport = MemoryTransport("1.3", cacerts)
    s = session()
    drive(s.cacerts(), transport)
    transport.reset_writes = 1
    drive(s.cacerts(), transport)  # the kept connection died: one reconnect
    assert transport.connections == 2
    drive(s.close(), transport)
    transport.reset_writes = 2  # the handshake write of a new connection fails
    s = session()
    with pytest.raises(ConnectionResetError):
        drive(s.cacerts(), transport)
    assert transport.connections == 3


def test_no_answer_ends_at_the_request_deadline_and_the_connection_is_retired() -> None:
    silent = {"on": True}

    def script(request: Request) -> Reply | None:
        return None if silent["on"] else cacerts(request)

    transport = MemoryTransport("1.3", script)
    s = session(request_timeout=30.0)
    start = transport.now
    with pytest.raises(TimeoutError):
        drive(s.cacerts(), transport)
    assert transport.now - start == pytest.approx(30.0)
    assert transport.peer is None  # a connection mid-request is not reused
    silent["on"] = False
    drive(s.cacerts(), transport)
    assert transport.connections == 2


def test_interrupted_request_leaves_no_half_used_connection() -> None:
    # A cancellation (here ^C) mid-request: the connection may hold half an
    # answer, so the session closes it and the next request starts afresh.
    transport = MemoryTransport("1.3", cacerts)
    s = session()
    drive(s.cacerts(), transport)
    transport.interrupt_reads = True
    with pytest.raises(KeyboardInterrupt):
        drive(s.cacerts(), transport)
    assert transport.peer is None
    assert drive(s.cacerts(), transport) == (get_pki().ca,)
    assert transport.connections == 2


def test_refusal_is_an_est_error_with_its_status() -> None:
    transport = MemoryTransport("1.3", lambda request: Reply(
        400, [("Content-Type", "text/plain")], b"bad CSR"))
    with pytest.raises(ESTError) as caught:
        drive(session().simpleenroll(pkcs10.build_csr(pki.make_key("p256"), pki.name("x"))),
              transport)
    assert caught.value.status == 400
    assert "bad CSR" in str(caught.value)


def test_malformed_answer_is_a_remote_protocol_error() -> None:
    transport = MemoryTransport("1.3", lambda request: Reply(
        200, [("Content-Type", "application/pkcs7-mime")], b"not base64 at all!"))
    with pytest.raises(RemoteProtocolError):
        drive(session().cacerts(), transport)


def test_one_operation_at_a_time_and_none_after_close() -> None:
    transport = MemoryTransport("1.3", cacerts)
    s = session()
    first = s.cacerts()
    assert next(first).__class__.__name__ == "Connect"
    with pytest.raises(LocalProtocolError, match="one request at a time"):
        drive(s.cacerts(), transport)
    first.close()
    drive(s.close(), transport)
    with pytest.raises(LocalProtocolError, match="closed"):
        drive(s.cacerts(), transport)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        session(max_retries=-1)
    with pytest.raises(LocalProtocolError, match="challenge_password"):
        drive(session().simpleenroll_linked(pki.make_key("p256"), pki.name("x"),
                                            challenge_password="x"), MemoryTransport("1.3", issue))


def test_reads_always_carry_a_deadline_while_an_answer_is_awaited() -> None:
    # A driver must never be asked to wait forever for a server.
    transport = MemoryTransport("1.3", cacerts)
    steps = session().cacerts()
    reply: Any = None
    seen = 0
    while True:
        try:
            instruction = steps.send(reply)
        except StopIteration:
            break
        if isinstance(instruction, Read):
            assert instruction.deadline is not None
            seen += 1
        reply = _carry_out(instruction, transport)
    assert seen > 0


def _carry_out(instruction: object, transport: MemoryTransport) -> Any:
    """One instruction, as :func:`estproto.drive` would carry it out."""
    from estproto import Connect, Disconnect, Received, Write

    if isinstance(instruction, Connect):
        transport.connect(instruction.host, instruction.port, instruction.timeout)
        return transport.clock()
    if isinstance(instruction, Write):
        return transport.write(instruction.data)
    if isinstance(instruction, Read):
        return Received(transport.read(instruction.deadline), transport.clock())
    if isinstance(instruction, Disconnect):
        return transport.disconnect(instruction.final)
    raise AssertionError(instruction)
