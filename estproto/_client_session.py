"""The EST client's decisions over many connections, sans I/O.

:class:`ClientConnection` is one connection. A client that a script or a
device uses needs more: keep-alive reuse, a new connection when the server
closed the old one (RFC 9112 9.3), the 401 answered once on a new connection
when the server closes after its challenge (libest does), Retry-After waits
(RFC 7030 4.2.3), TLS session resumption, CSRs linked to the channel of the
connection that carries them (RFC 7030 3.5), and results turned into return
values or :class:`~estproto.ESTError`. :class:`ClientSession` holds all of
that, written once for every transport.

Strategy: each operation of the session (``cacerts()``, ``simpleenroll()``
...) is a generator. It performs no I/O: it yields small instructions
(:class:`Connect`, :class:`Write`, :class:`Read`, :class:`Disconnect`,
:class:`Wait`, :class:`WallClock`) and receives their outcome through
``send()``, or their failure (``OSError``, a cancellation) through
``throw()``; its return value (``StopIteration.value``) is the result. A
driver is the loop that carries the instructions out on real sockets:
:mod:`estproto.trio`, :mod:`estproto.asyncio` and :mod:`estproto.sync` are
such drivers and contain no decisions. :func:`drive` below is the blocking
reference of that loop, for any transport a caller brings::

    session = ClientSession("est.example", 443, tls, credentials=creds)
    cert = drive(session.simpleenroll_linked(key, subject), my_transport)

Time is an input: :class:`Connect` and :class:`Read` are answered with the
driver's clock, :class:`WallClock` with the wall time a Retry-After date is
measured against.

Errors: :class:`~estproto.ESTError` (and subclasses) for EST refusals;
:class:`~estproto.RemoteProtocolError` (:class:`~estproto.TLSError` ...) for
a server breaking the protocol; ``OSError`` from the driver for the network,
including ``TimeoutError`` when a deadline passes;
:class:`~estproto.LocalProtocolError` for misuse.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from dataclasses import dataclass
from typing import Any, Callable, Generator, Protocol, TypeVar, Union

from cryptography import x509

from ._config import HANDSHAKE_TIMEOUT, REQUEST_TIMEOUT, ClientConfig
from ._errors import (
    ClosedBeforeResponse,
    ESTAuthenticationError,
    ESTError,
    ESTPendingError,
    LocalProtocolError,
    RemoteProtocolError,
)
from ._events import (
    NEED_DATA,
    PAUSED,
    AuthenticationChallenged,
    CACertsReceived,
    CertificateIssued,
    ClientRequest,
    ClientResultEvent,
    ConnectionClosed,
    ConnectionTerminated,
    CSRAttrsReceived,
    EnrollmentPending,
    ErrorReceived,
    FullCMC,
    FullCMCReceived,
    GetCACerts,
    GetCSRAttrs,
    Redirected,
    ServerKeygen,
    ServerKeyReceived,
    SimpleEnroll,
    SimpleReenroll,
    is_client_result,
)
from ._state import ConnectionState
from ._tls import ClientTLSContext, TLSSession
from .client import ClientConnection, Credentials
from .codecs import pkcs10
from .codecs.csrattrs import CsrAttributes

__all__ = [
    "ClientSession",
    "Instruction",
    "Connect",
    "Write",
    "Read",
    "Received",
    "Disconnect",
    "Wait",
    "WallClock",
    "Steps",
    "Transport",
    "drive",
    "advance",
    "MAX_RETRIES",
    "MAX_RETRY_WAIT",
    "CONNECT_TIMEOUT",
    "CLOSE_TIMEOUT",
    "CLIENT_LOGGER",
]

#: Times a client repeats a request answered 202 (RFC 7030 4.2.3) before it
#: gives up: enough for a short manual approval, bounded so a script ends.
MAX_RETRIES = 3

#: Longest Retry-After (seconds) a client is willing to wait; a longer one
#: ends the attempt (:class:`ESTPendingError`) rather than retrying early,
#: since "The client MUST wait at least the specified 'retry-after' time
#: before repeating the same request" (RFC 7030 4.2.3).
MAX_RETRY_WAIT = 300.0

#: Seconds for the TCP connect, the same as the TLS handshake deadline.
CONNECT_TIMEOUT = HANDSHAKE_TIMEOUT

#: Seconds spent reading what a server sent before its close, after our
#: write failed, and sending the last bytes (close_notify) before closing a
#: socket: closing must not wait on a peer that stopped reading.
CLOSE_TIMEOUT = 2.0

CLIENT_LOGGER = "estproto.client"

_T = TypeVar("_T")


# ---------------------------------------------------------------------------
# The instructions a driver carries out


@dataclass(frozen=True)
class Connect:
    """Open a TCP connection to (host, port) within *timeout* seconds.

    Answer: the driver's clock (a float) once connected. Failure: ``OSError``
    (``TimeoutError`` when *timeout* passed).
    """

    host: str
    port: int
    timeout: float


@dataclass(frozen=True)
class Write:
    """Write all of *data* to the open connection.

    Answer: None. Failure: ``OSError`` (``TimeoutError`` when the peer stops
    reading for longer than the driver's write timeout).
    """

    data: bytes


@dataclass(frozen=True)
class Read:
    """Read what the open connection has, waiting until *deadline* at most.

    *deadline* is in the driver's clock; None means no deadline (the session
    never asks for that while a response is awaited). Answer: a
    :class:`Received`. Failure: ``OSError`` (a reset).
    """

    deadline: float | None


@dataclass(frozen=True)
class Received:
    """Answer to :class:`Read`: *data* (``b""`` at EOF, None when the
    deadline passed first) and the driver's clock after the read."""

    data: bytes | None
    now: float


@dataclass(frozen=True)
class Disconnect:
    """Send *final* (best effort, bounded by :data:`CLOSE_TIMEOUT`), then
    close the connection. Answer: None. Never fails."""

    final: bytes


@dataclass(frozen=True)
class Wait:
    """Sleep *seconds* (a Retry-After wait). Answer: None."""

    seconds: float


@dataclass(frozen=True)
class WallClock:
    """Answer: the current wall-clock time, an aware ``datetime`` (UTC)."""


Instruction = Union[Connect, Write, Read, Disconnect, Wait, WallClock]

#: An operation of the session: yields instructions, returns *_T*.
Steps = Generator[Instruction, Any, _T]


def _describe(result: ClientResultEvent) -> str:
    """A result event for the debug log: its kind and HTTP status."""
    status = getattr(result, "status", None)
    return f"{type(result).__name__}" + (f" ({status})" if status is not None else "")


# ---------------------------------------------------------------------------
# The session


class ClientSession:
    """One EST client's state and decisions, across its connections.

    Args:
        host: the server's name or address (checked against its certificate,
            sent as SNI and Host).
        port: the server's port.
        tls: the client TLS context (trust anchors, client certificate).
        credentials: answers HTTP authentication challenges, or None.
        label: the CA label used for every request ("" for none).
        max_retries: times a 202 answer is waited out and the request
            repeated (RFC 7030 4.2.3).
        max_retry_wait: longest Retry-After accepted, seconds.
        lenient: tolerate known server quirks (see :class:`ClientConnection`).
        request_timeout: seconds for one response (the core's deadline).
        connect_timeout: seconds for the TCP connect and the TLS handshake.

    Raises:
        LocalProtocolError: a negative retry setting.

    One operation at a time: start the next only when the last returned.
    """

    def __init__(
        self,
        host: str,
        port: int,
        tls: ClientTLSContext,
        *,
        credentials: Credentials | None = None,
        label: str = "",
        max_retries: int = MAX_RETRIES,
        max_retry_wait: float = MAX_RETRY_WAIT,
        lenient: bool = True,
        request_timeout: float = REQUEST_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        if max_retries < 0 or max_retry_wait < 0:
            raise LocalProtocolError("max_retries and max_retry_wait must not be negative")
        self.host = host
        self.port = port
        self.label = label
        self.config = ClientConfig(
            tls=tls, host=host, port=port,
            handshake_timeout=connect_timeout, request_timeout=request_timeout,
        )
        self.credentials = credentials
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.lenient = lenient
        self.connect_timeout = connect_timeout
        #: Connections opened so far (for tests and statistics).
        self.connections_opened = 0
        self._conn: ClientConnection | None = None
        self._connected = False  # the driver holds an open connection
        self._tls_session: TLSSession | None = None
        self._now = 0.0  # the driver's clock, as last answered
        self._busy = False
        self._closed = False
        self._log = logging.getLogger(CLIENT_LOGGER)

    # -- connections ---------------------------------------------------------

    def close(self) -> Steps[None]:
        """Close the connection (close_notify, then the socket). Idempotent."""
        self._closed = True
        yield from self._retire()

    def _retire(self) -> Steps[None]:
        conn, self._conn = self._conn, None
        final = b""
        if conn is not None:
            conn.close()  # close_notify, unless already closed
            final = conn.data_to_send()
            if conn.tls_session is not None:
                self._tls_session = conn.tls_session
        if self._connected:
            self._connected = False
            yield Disconnect(final)

    def _connection(self) -> Steps[tuple[ClientConnection, bool]]:
        """The open connection (reused: True) or a new, handshaken one."""
        if self._closed:
            raise LocalProtocolError("the client is closed")
        conn = self._conn
        if conn is not None and self._connected and not conn.closed:
            return conn, True
        yield from self._retire()
        self._now = yield Connect(self.host, self.port, self.connect_timeout)
        self._connected = True
        self.connections_opened += 1
        conn = ClientConnection(
            self.config, credentials=self.credentials, now=self._now,
            session=self._tls_session, lenient=self.lenient,
        )
        self._conn = conn
        # Complete the handshake before building the request, so that a
        # PoP-linked CSR can use this connection's channel binding.
        while conn.state is ConnectionState.HANDSHAKING:
            yield from self._flush(conn)
            yield from self._read_into(conn)
        yield from self._flush(conn)
        if conn.closed:
            self._unexpected(conn.next_event())  # raises the TLS error
        self._log.debug("connected to %s:%d: %s", self.host, self.port, conn.tls_summary)
        return conn, False

    # -- moving bytes through the connection ---------------------------------

    @staticmethod
    def _flush(conn: ClientConnection) -> Steps[None]:
        data = conn.data_to_send()
        if data:
            yield Write(data)

    def _read_into(self, conn: ClientConnection) -> Steps[None]:
        deadline = conn.get_timer()
        received: Received = yield Read(deadline)
        self._now = received.now
        if received.data is None:
            if deadline is None:
                raise TimeoutError("no deadline and no data")  # pragma: no cover
            conn.handle_timer(received.now)
        else:
            conn.receive_data(received.data, now=received.now)

    @staticmethod
    def _unexpected(event: object) -> None:
        if isinstance(event, ConnectionTerminated):
            raise TimeoutError(event.reason)
        raise RemoteProtocolError("server closed the connection without responding")

    def _until_result(self, conn: ClientConnection) -> Steps[ClientResultEvent]:
        while True:
            event = conn.next_event()
            # Flush even on NEED_DATA: a 401 answered in place was just
            # written by next_event itself.
            try:
                yield from self._flush(conn)
            except ConnectionError:
                if is_client_result(event):
                    # The answer is complete; only what followed it (our
                    # close_notify to a server that already left) was lost.
                    yield from self._retire()
                    return event
                early = yield from self._answer_after_failed_write(conn)
                if early is None:
                    raise
                yield from self._retire()
                return early
            if event is NEED_DATA:
                try:
                    yield from self._read_into(conn)
                except ConnectionError:
                    ended = self._answer_at_reset(conn)
                    if ended is None:
                        raise
                    yield from self._retire()
                    return ended
                continue
            assert event is not PAUSED
            if isinstance(event, (ConnectionClosed, ConnectionTerminated)):
                self._unexpected(event)
            if not is_client_result(event):
                raise RemoteProtocolError(f"unexpected event {type(event).__name__}")  # pragma: no cover
            if conn.closed:  # "Connection: close": finish it now
                yield from self._retire()
            return event

    def _answer_at_reset(self, conn: ClientConnection) -> ClientResultEvent | None:
        """What the core makes of the connection ending here, after a reset.

        A reset ends the byte stream as EOF does, so the core is told EOF and
        decides: a response delimited by the close (libest's 202) is complete,
        and a 401 it answered in place comes back with its ``retry`` for a
        new connection. Returns None when nothing usable arrived (the caller
        then reports the reset itself).
        """
        conn.receive_data(b"", now=self._now)
        try:
            event = conn.next_event()
        except RemoteProtocolError:
            return None
        return event if is_client_result(event) else None

    def _answer_after_failed_write(self, conn: ClientConnection) -> Steps[ClientResultEvent | None]:
        """The server's answer, if it came before our write failed.

        A server may answer a request before reading all of it (a 413 to a
        body too large) and close while we are still writing; RFC 9110
        15.5.14 allows that. Its answer can be waiting unread: read what is
        left (bounded by :data:`CLOSE_TIMEOUT`) before calling it a network
        failure. Returns None when no complete answer arrived.
        """
        deadline = self._now + CLOSE_TIMEOUT
        while True:
            try:
                received: Received = yield Read(deadline)
                data, self._now = received.data, received.now
            except OSError:
                data = b""  # reset: what arrived before it was already read
            if data is None:
                return None  # time is up
            conn.receive_data(data, now=self._now)
            event = conn.next_event()
            if event is NEED_DATA and data:
                continue
            return event if is_client_result(event) else None

    # -- the policy ----------------------------------------------------------

    def _exchange(
        self, build: Callable[[ClientConnection], ClientRequest], authorization: str | None
    ) -> Steps[ClientResultEvent]:
        """Send one request and get its result, reconnecting once when a
        reused keep-alive connection turns out to be closed by the server
        (it may close an idle connection at any time: RFC 9112 9.3)."""
        while True:
            conn, reused = yield from self._connection()
            request = build(conn)
            if authorization is not None:
                request = dataclasses.replace(request, authorization=authorization)
            try:
                # Names only: never a header, a body or a credential.
                self._log.debug("sending %s%s%s", type(request).__name__,
                                f" to label {self.label!r}" if self.label else "",
                                " with credentials" if authorization is not None else "")
                conn.send(request)
                result = yield from self._until_result(conn)
                self._log.debug("answer: %s", _describe(result))
                return result
            except (OSError, RemoteProtocolError) as exc:
                yield from self._retire()
                # Retry only when the server may never have seen the request:
                # the connection was reset, or closed before any byte of a
                # response. Anything else (a malformed response, a timeout)
                # is the server's answer and is reported.
                if not reused or not isinstance(exc, (ConnectionError, ClosedBeforeResponse)):
                    raise
                self._log.debug("kept-alive connection failed (%s); reconnecting", exc)

    def _run(self, build: Callable[[ClientConnection], ClientRequest]) -> Steps[ClientResultEvent]:
        if self._busy:
            raise LocalProtocolError("one request at a time per client")
        self._busy = True
        try:
            return (yield from self._run_unlocked(build))
        except GeneratorExit:
            raise  # abandoned by the driver: no instruction may follow
        except BaseException:
            # A connection left in the middle of a request (a deadline, a
            # cancellation, a broken answer) cannot carry another one.
            conn = self._conn
            if conn is not None and conn.state is not ConnectionState.IDLE:
                yield from self._retire()
            raise
        finally:
            self._busy = False

    def _run_unlocked(self, build: Callable[[ClientConnection], ClientRequest]) -> Steps[ClientResultEvent]:
        retries = 0
        authorization: str | None = None
        auth_retried = False
        while True:
            result = yield from self._exchange(build, authorization)
            authorization = None
            if isinstance(result, AuthenticationChallenged) and result.retry is not None:
                if auth_retried:
                    return result
                # The server closed after its 401: answer on a new connection
                # (resuming the session), rebuilding the request there. Once
                # per challenge: a second one is the server's final answer.
                auth_retried = True
                authorization = result.retry.authorization
                self._log.debug("the server closed after its 401: answering on a new connection")
                yield from self._retire()
                continue
            if isinstance(result, EnrollmentPending):
                wall: datetime.datetime = yield WallClock()
                delay = result.delay(wall)
                if retries >= self.max_retries or delay > self.max_retry_wait:
                    return result
                retries += 1
                auth_retried = False
                self._log.info("request pending, retrying in %.1f s (%d/%d)",
                               delay, retries, self.max_retries)
                # RFC 7030 4.2.3: "The client MUST wait at least the
                # specified 'retry-after' time before repeating the same
                # request". Close meanwhile: the server would time us out.
                yield from self._retire()
                yield Wait(delay)
                continue
            return result

    def _expect(self, result: ClientResultEvent, kind: type[_T]) -> _T:
        if isinstance(result, kind):
            return result
        if isinstance(result, ErrorReceived):
            raise ESTError(result.status, result.reason)
        if isinstance(result, AuthenticationChallenged):
            raise ESTAuthenticationError(
                "credentials refused" if self.credentials is not None else "authentication required"
            )
        if isinstance(result, EnrollmentPending):
            raise ESTPendingError(result)
        if isinstance(result, Redirected):
            raise ESTError(result.status, f"redirected to {result.location} (not followed)")
        raise RemoteProtocolError(f"unexpected answer: {type(result).__name__}")

    def _linked(
        self, key: pkcs10.PrivateKey, subject: x509.Name, csr_kwargs: dict[str, Any]
    ) -> Callable[[ClientConnection], bytes]:
        if "challenge_password" in csr_kwargs:
            raise LocalProtocolError("challenge_password is set by the PoP linking itself")

        def build(conn: ClientConnection) -> bytes:
            # RFC 7030 3.5: the tls-unique (or tls-exporter) value of the
            # connection carrying the CSR, base64, in challengePassword.
            return pkcs10.build_csr(
                key, subject, challenge_password=conn.pop_challenge_password, **csr_kwargs
            )

        return build

    # -- operations ----------------------------------------------------------

    def request(self, event: ClientRequest) -> Steps[ClientResultEvent]:
        """Send *event* as it is and return the connection's result event.

        Reconnection, the 401 retry and Retry-After waits happen as for the
        typed operations, but no result is turned into an exception (a final
        :class:`EnrollmentPending`, :class:`ErrorReceived` ... are returned).

        Raises:
            RemoteProtocolError: the server broke the protocol.
            OSError: network failure or a deadline (TimeoutError).
            LocalProtocolError: misuse (e.g. a second concurrent request).
        """
        return (yield from self._run(lambda conn: event))

    def request_built(
        self, build: Callable[[ClientConnection], ClientRequest]
    ) -> Steps[ClientResultEvent]:
        """Like :meth:`request`, but the request is built by *build* for the
        connection that will carry it (after its handshake), and rebuilt on
        every new connection: for requests that depend on the connection,
        such as a CSR linked to its channel binding (RFC 7030 3.5).
        """
        return (yield from self._run(build))

    def cacerts(self) -> Steps[tuple[x509.Certificate, ...]]:
        """GET /cacerts (RFC 7030 4.1): the CA certificates.

        Raises:
            ESTError: the server refused. Also see :meth:`request`.
        """
        result = yield from self._run(lambda conn: GetCACerts(label=self.label))
        return self._expect(result, CACertsReceived).certificates

    def csrattrs(self) -> Steps[CsrAttributes | None]:
        """GET /csrattrs (RFC 7030 4.5): None when the server has none."""
        result = yield from self._run(lambda conn: GetCSRAttrs(label=self.label))
        return self._expect(result, CSRAttrsReceived).attributes

    def simpleenroll(self, csr_der: bytes) -> Steps[x509.Certificate]:
        """POST /simpleenroll (RFC 7030 4.2.1) with a DER PKCS#10.

        Raises:
            ESTPendingError: still 202 after the allowed retries.
            ESTAuthenticationError: 401 that could not be answered.
            ESTError: any other refusal.
        """
        result = yield from self._run(lambda conn: SimpleEnroll(csr=csr_der, label=self.label))
        return self._expect(result, CertificateIssued).certificate

    def simplereenroll(self, csr_der: bytes) -> Steps[x509.Certificate]:
        """POST /simplereenroll (RFC 7030 4.2.2); the TLS context should hold
        the certificate being renewed. Raises as :meth:`simpleenroll`."""
        result = yield from self._run(lambda conn: SimpleReenroll(csr=csr_der, label=self.label))
        return self._expect(result, CertificateIssued).certificate

    def simpleenroll_linked(
        self, key: pkcs10.PrivateKey, subject: x509.Name, **csr_kwargs: Any
    ) -> Steps[x509.Certificate]:
        """Enroll with a CSR linked to the TLS connection (RFC 7030 3.5).

        The CSR is built (:func:`estproto.codecs.pkcs10.build_csr` with
        *csr_kwargs*) after the handshake of the connection that carries it,
        and rebuilt whenever the request moves to a new connection (401
        retry, Retry-After, reconnect). Raises as :meth:`simpleenroll`.
        """
        csr = self._linked(key, subject, csr_kwargs)
        result = yield from self._run(lambda conn: SimpleEnroll(csr=csr(conn), label=self.label))
        return self._expect(result, CertificateIssued).certificate

    def simplereenroll_linked(
        self, key: pkcs10.PrivateKey, subject: x509.Name, **csr_kwargs: Any
    ) -> Steps[x509.Certificate]:
        """Re-enroll with a CSR linked to the TLS connection (see
        :meth:`simpleenroll_linked`)."""
        csr = self._linked(key, subject, csr_kwargs)
        result = yield from self._run(lambda conn: SimpleReenroll(csr=csr(conn), label=self.label))
        return self._expect(result, CertificateIssued).certificate

    def serverkeygen(
        self,
        csr_der: bytes,
        *,
        kek: bytes | None = None,
        kek_id: bytes | None = None,
        decryption_key: pkcs10.PrivateKey | None = None,
    ) -> Steps[ServerKeyReceived]:
        """POST /serverkeygen (RFC 7030 4.4): the certificate and the key
        (opened with *kek* / *decryption_key* when the server encrypted it).
        Raises as :meth:`simpleenroll`."""
        result = yield from self._run(lambda conn: ServerKeygen(
            csr=csr_der, kek=kek, kek_id=kek_id, decryption_key=decryption_key, label=self.label,
        ))
        return self._expect(result, ServerKeyReceived)

    def serverkeygen_linked(
        self,
        key: pkcs10.PrivateKey,
        subject: x509.Name,
        *,
        kek: bytes | None = None,
        kek_id: bytes | None = None,
        decryption_key: pkcs10.PrivateKey | None = None,
        **csr_kwargs: Any,
    ) -> Steps[ServerKeyReceived]:
        """:meth:`serverkeygen` with a CSR linked to the TLS connection
        (RFC 7030 3.5), rebuilt on every new connection like
        :meth:`simpleenroll_linked`. *key* only signs the CSR: the server
        ignores its public key (4.4.1)."""
        csr = self._linked(key, subject, csr_kwargs)
        result = yield from self._run(lambda conn: ServerKeygen(
            csr=csr(conn), kek=kek, kek_id=kek_id, decryption_key=decryption_key, label=self.label,
        ))
        return self._expect(result, ServerKeyReceived)

    def fullcmc(self, request_der: bytes) -> Steps[FullCMCReceived]:
        """POST /fullcmc (RFC 7030 4.3) with a DER Full PKI Request.

        Returns:
            the Full PKI Response, whatever its CMC status (a CMC failure
            arrives with a 4xx/5xx status and a CMC body; check
            ``.response.status``).
        """
        result = yield from self._run(lambda conn: FullCMC(request=request_der, label=self.label))
        return self._expect(result, FullCMCReceived)


# ---------------------------------------------------------------------------
# The reference driver


class Transport(Protocol):
    """A blocking byte stream for :func:`drive` (see :mod:`estproto.sync`)."""

    def connect(self, host: str, port: int, timeout: float) -> None:
        """Open the connection. Raises OSError (TimeoutError)."""

    def write(self, data: bytes) -> None:
        """Write everything. Raises OSError (TimeoutError)."""

    def read(self, deadline: float | None) -> bytes | None:
        """Bytes (``b""`` at EOF) or None once *deadline* passed. Raises OSError."""

    def disconnect(self, final: bytes) -> None:
        """Send *final* (bounded), close. Never raises."""

    def sleep(self, seconds: float) -> None:
        """Wait."""

    def clock(self) -> float:
        """The monotonic clock the deadlines are in."""


def advance(steps: Steps[Any], reply: Any, failure: BaseException | None) -> tuple[bool, Any]:
    """Give *steps* the outcome of their last instruction (*reply*, or
    *failure* thrown in). Returns ``(False, next instruction)``, or
    ``(True, result)`` once they returned: one step of any driver's loop."""
    try:
        return False, (steps.send(reply) if failure is None else steps.throw(failure))
    except StopIteration as done:
        return True, done.value


def drive(steps: Steps[_T], transport: Transport) -> _T:
    """Carry out *steps* on a blocking *transport*; return their result.

    Every failure of an instruction (``OSError``, ``KeyboardInterrupt`` ...)
    is thrown into the steps, which clean up (close the connection) and
    re-raise it or recover (a reconnect), exactly as under trio or asyncio.
    """
    reply: Any = None
    failure: BaseException | None = None
    while True:
        finished, instruction = advance(steps, reply, failure)
        if finished:
            result: _T = instruction  # what the steps returned
            return result
        reply, failure = None, None
        try:
            if isinstance(instruction, Read):
                reply = Received(transport.read(instruction.deadline), transport.clock())
            elif isinstance(instruction, Write):
                transport.write(instruction.data)
            elif isinstance(instruction, Connect):
                transport.connect(instruction.host, instruction.port, instruction.timeout)
                reply = transport.clock()
            elif isinstance(instruction, Disconnect):
                transport.disconnect(instruction.final)
            elif isinstance(instruction, Wait):
                transport.sleep(instruction.seconds)
            else:
                reply = datetime.datetime.now(datetime.timezone.utc)
        except BaseException as exc:
            failure = exc
