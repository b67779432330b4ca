"""What the trio and asyncio adapters share: no protocol here, only plumbing.

The adapters (:mod:`estproto.trio`, :mod:`estproto.asyncio`) are byte pumps
around the sans-I/O connections. Everything in them that does not depend on
the I/O framework lives here, written once:

* the adapter limits (named, with reasons) and the exceptions the client
  raises (:class:`ESTError` and subclasses);
* server side: calling the application's handler (a coroutine function is
  awaited, a plain function runs in a worker thread the adapter provides),
  turning a crashing handler into ``ErrorResponse(500, "internal error")``,
  and the one-line-per-request log (:func:`answer_events`);
* client side: :class:`ClientBase`, the framework-neutral async logic of
  ``ESTClient``: keep-alive reuse, transparent reconnection with TLS session
  resumption, Retry-After waits (RFC 7030 4.2.3), a 401 ``retry`` on a new
  connection, PoP-linked CSRs rebuilt for the connection that carries them
  (RFC 7030 3.5), and turning result events into return values or
  exceptions. It performs I/O only through a :class:`ByteStream` and three
  hooks (open a stream, sleep, read the clock) that each adapter implements.

Strategy: the async code here awaits only the :class:`ByteStream` methods and
the hooks, so the same coroutines run under trio and under asyncio. Every
wait is bounded: reads by the core's deadlines (``get_timer``), writes by
:data:`WRITE_TIMEOUT`, connects by the handshake timeout, closes by
:data:`CLOSE_TIMEOUT`, Retry-After waits by ``max_retry_wait``.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import inspect
import logging
from typing import Any, Awaitable, Callable, Protocol, TypeVar, Union

from cryptography import x509

from ._config import HANDSHAKE_TIMEOUT, REQUEST_TIMEOUT, ClientConfig
from ._errors import LocalProtocolError, RemoteProtocolError
from ._http import ClosedBeforeResponse
from ._est_server import RequestRejected
from ._events import (
    NEED_DATA,
    PAUSED,
    AuthenticationChallenged,
    CACertsReceived,
    CertificateIssued,
    ClientRequest,
    ClientResult,
    ClientResultEvent,
    ConnectionClosed,
    ConnectionTerminated,
    CSRAttrsReceived,
    EnrollmentPending,
    ErrorReceived,
    ErrorResponse,
    FullCMC,
    FullCMCReceived,
    GetCACerts,
    GetCSRAttrs,
    Redirected,
    ServerKeygen,
    ServerKeyReceived,
    ServerRequest,
    ServerResponse,
    SimpleEnroll,
    SimpleReenroll,
)
from ._paths import format_est_path
from ._state import ConnectionState
from ._tls import ClientTLSContext, TLSSession
from .client import ClientConnection, Credentials
from .codecs import pkcs10
from .codecs.csrattrs import CsrAttributes
from .server import ServerConnection

__all__ = [
    "MAX_CONNECTIONS",
    "SHUTDOWN_TIMEOUT",
    "HANDLER_THREADS",
    "RECEIVE_SIZE",
    "WRITE_TIMEOUT",
    "CLOSE_TIMEOUT",
    "LINGER_TIMEOUT",
    "LINGER_BYTES",
    "CONNECT_TIMEOUT",
    "ACCEPT_RETRY_DELAY",
    "MAX_RETRIES",
    "MAX_RETRY_WAIT",
    "ESTError",
    "ESTAuthenticationError",
    "ESTPendingError",
    "Handler",
    "ByteStream",
    "ClientBase",
]

#: Connections served at once per server. 1024 is the usual per-process
#: file-descriptor soft limit (``ulimit -n``); at the cap the server stops
#: accepting, so further clients wait in the kernel's listen backlog instead
#: of the process failing ``accept`` with EMFILE. Idle and slow connections
#: free their slot through the core's handshake and idle deadlines.
MAX_CONNECTIONS = 1024

#: Seconds a graceful shutdown waits for in-flight requests before closing
#: the rest. A CA handler signs and commits in well under a second; 10 s sits
#: between hypercorn's 3 s graceful timeout and gunicorn's 30 s.
SHUTDOWN_TIMEOUT = 10.0

#: Worker threads for blocking (plain function) handlers per server: trio's
#: default thread limiter. CA work (signing, an SQLite commit) is short, and
#: more threads than this only queue on the GIL and the database lock.
HANDLER_THREADS = 40

#: Bytes asked for per socket read: trio's default receive size. A TLS record
#: is at most 16 KiB plus overhead, so one read takes several records.
RECEIVE_SIZE = 65536

#: Seconds one write may block on a peer that stops reading; the same bound
#: as a whole request (:data:`estproto._config.REQUEST_TIMEOUT`), so a stalled
#: reader cannot hold a connection slot longer than a slow writer can.
WRITE_TIMEOUT = REQUEST_TIMEOUT

#: Seconds spent sending the last bytes (close_notify) before closing a
#: socket; closing must not wait on a peer that stopped reading.
CLOSE_TIMEOUT = 2.0

#: Seconds, and bytes, a server keeps reading and dropping after its last
#: response before it closes (RFC 9112 section 9.6 "lingering close"): a
#: client still sending a request we refused (413, 431 ...) then reads our
#: answer instead of a connection reset that destroys it.
LINGER_TIMEOUT = 2.0
LINGER_BYTES = 4 * 1024 * 1024

#: Seconds for the TCP connect, the same as the TLS handshake deadline.
CONNECT_TIMEOUT = HANDSHAKE_TIMEOUT

#: Seconds to pause after ``accept`` fails (EMFILE, ENOBUFS ...), so a full
#: descriptor table does not turn the accept loop into a busy loop.
ACCEPT_RETRY_DELAY = 0.1

#: Times a client repeats a request answered 202 (RFC 7030 4.2.3) before it
#: gives up: enough for a short manual approval, bounded so a script ends.
MAX_RETRIES = 3

#: Longest Retry-After (seconds) a client is willing to wait; a longer one
#: ends the attempt (:class:`ESTPendingError`) rather than retrying early,
#: since "The client MUST wait at least the specified 'retry-after' time
#: before repeating the same request" (RFC 7030 4.2.3).
MAX_RETRY_WAIT = 300.0

SERVER_LOGGER = "estproto.server"
CLIENT_LOGGER = "estproto.client"

#: Longest request-target kept in a log line (the rest is cut off).
_MAX_LOGGED_TARGET = 200

Handler = Callable[[ServerRequest], Union[ServerResponse, Awaitable[ServerResponse]]]
"""The application's answer to one EST request event.

A coroutine function is awaited in the connection's task; a plain function
runs in a worker thread (CA work blocks: SQLite, signing).
"""

RunSync = Callable[[Callable[[ServerRequest], Any], ServerRequest], Awaitable[Any]]

_T = TypeVar("_T")
_Self = TypeVar("_Self", bound="ClientBase")


# ---------------------------------------------------------------------------
# Exceptions


class ESTError(RemoteProtocolError):
    """The EST server answered with an error (or not with what was asked).

    Attributes:
        status: the HTTP status the server sent.
        reason: the server's reason text (RFC 8951 section 5), shortened.
    """

    def __init__(self, status: int, reason: str) -> None:
        # A gateway relaying this error answers 502 Bad Gateway.
        super().__init__(f"EST server answered {status}: {reason}", error_status_hint=502)
        self.status = status
        self.reason = reason


class ESTAuthenticationError(ESTError):
    """401: the server refused our credentials, or we had none to give
    (or must not give them: RFC 7030 3.2.3, unauthorized server)."""

    def __init__(self, reason: str = "authentication required") -> None:
        super().__init__(401, reason)


class ESTPendingError(ESTError):
    """202 still: the retries allowed ran out, or the server asked for a
    longer wait than ``max_retry_wait``.

    Attributes:
        pending: the last :class:`EnrollmentPending` event.
    """

    def __init__(self, pending: EnrollmentPending) -> None:
        super().__init__(202, f"still pending (Retry-After: {pending.retry_after})")
        self.pending = pending


# ---------------------------------------------------------------------------
# Server side: handler calls and the request log


def _is_async_callable(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)
    )


def _printable(text: str, limit: int = _MAX_LOGGED_TARGET) -> str:
    # Request targets come from the peer: keep log lines one line long.
    cleaned = "".join(c if c.isprintable() and c != " " else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def make_handler_caller(
    handler: Handler, run_sync: RunSync, logger: logging.Logger
) -> Callable[[ServerRequest], Awaitable[ServerResponse]]:
    """Wrap *handler* so that calling it never raises.

    Args:
        handler: the application's handler.
        run_sync: the adapter's way to run a blocking function in a worker
            thread (with its capacity limit).
        logger: where a crashing handler is logged.

    Returns:
        An async function giving the handler's response, or
        ``ErrorResponse(500, "internal error")`` when it raised or returned
        something that is not a :class:`ServerResponse` (logged with the
        traceback; the request's credentials are never logged).
    """
    is_async = _is_async_callable(handler)

    async def call(event: ServerRequest) -> ServerResponse:
        try:
            if is_async:
                result: Any = await handler(event)  # type: ignore[misc]
            else:
                result = await run_sync(handler, event)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, ServerResponse):
                raise TypeError(f"handler returned {type(result).__name__}, not a ServerResponse")
            return result
        except Exception:
            logger.exception(
                "handler failed for %s %s from %s",
                event.operation.method, format_est_path(event.operation, event.label),
                event.facts.peer,
            )
            return ErrorResponse(500, "internal error")

    return call


def log_request(
    logger: logging.Logger, method: str, path: str, status: int, duration: float, peer: str | None
) -> None:
    """The one log line per request: method, path, status, duration, peer.

    Never credentials or bodies: only these five values are logged (also
    attached as ``est_*`` attributes of the record for structured handlers).
    """
    logger.info(
        "%s %s %d %.1fms %s", method, path, status, duration * 1000.0, peer or "-",
        extra={
            "est_method": method, "est_path": path, "est_status": status,
            "est_duration": duration, "est_peer": peer,
        },
    )


async def answer_events(
    conn: ServerConnection,
    call: Callable[[ServerRequest], Awaitable[ServerResponse]],
    clock: Callable[[], float],
    logger: logging.Logger,
    peer: str | None,
) -> None:
    """Drain *conn*'s events: answer each request through *call*, log.

    Returns when the core needs data (``NEED_DATA``) or the connection is
    over; the caller then writes ``conn.data_to_send()``.
    """
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            return
        if isinstance(event, ServerRequest):
            started = clock()
            response = await call(event)
            try:
                status = conn.send(response)
            except LocalProtocolError as exc:
                # The handler's response does not answer this request.
                logger.error(
                    "handler's %s cannot answer %s: %s",
                    type(response).__name__, event.operation.value, exc,
                )
                status = conn.send(ErrorResponse(500, "internal error"))
            log_request(
                logger, event.operation.method, format_est_path(event.operation, event.label),
                status, clock() - started, peer,
            )
        elif isinstance(event, RequestRejected):
            log_request(logger, _printable(event.method, 20), _printable(event.target),
                        event.status, 0.0, peer)
        elif isinstance(event, ConnectionTerminated):
            logger.info(
                "connection from %s terminated: %s%s", peer or "-", event.reason,
                f" (sent {event.status})" if event.status is not None else "",
            )
        else:  # ConnectionClosed
            return


# ---------------------------------------------------------------------------
# Client side


class ByteStream(Protocol):
    """The little an adapter's socket must offer the shared client code."""

    async def receive(self, deadline: float | None) -> bytes | None:
        """Bytes read (``b""`` at EOF), or None once *deadline* (the
        adapter's clock) passed with nothing read.

        Raises:
            OSError: the connection failed (reset, broken).
        """

    async def send_all(self, data: bytes) -> None:
        """Write *data*.

        Raises:
            OSError: the connection failed; TimeoutError after
                :data:`WRITE_TIMEOUT`.
        """

    async def aclose(self, final: bytes = b"") -> None:
        """Send *final* (best effort, bounded by :data:`CLOSE_TIMEOUT`),
        then close. Never raises."""


class ClientBase(abc.ABC):
    """The framework-neutral part of ``ESTClient`` (see the adapters).

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

    One request at a time per client; use several clients for concurrency.
    Errors: :class:`ESTError` (and subclasses) for EST-level refusals;
    :class:`RemoteProtocolError` (:class:`~estproto.TLSError` ...) for a
    server breaking the protocol; ``OSError`` for the network, including
    ``TimeoutError`` when a deadline passes.
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
        self._stream: ByteStream | None = None
        self._session: TLSSession | None = None
        self._busy = False
        self._closed = False
        self._log = logging.getLogger(CLIENT_LOGGER)

    # -- hooks each adapter implements --------------------------------------

    @abc.abstractmethod
    async def _open_stream(self) -> ByteStream:
        """Connect to ``(self.host, self.port)`` within ``connect_timeout``.

        Raises:
            OSError: including TimeoutError.
        """

    @abc.abstractmethod
    async def _sleep(self, seconds: float) -> None:
        """Sleep in the framework's way."""

    @abc.abstractmethod
    def _clock(self) -> float:
        """The framework's monotonic clock (the core's ``now``)."""

    # -- context manager -----------------------------------------------------

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (close_notify, then the socket). Idempotent."""
        self._closed = True
        await self._retire()

    # -- connection handling -------------------------------------------------

    async def _retire(self) -> None:
        conn, stream = self._conn, self._stream
        self._conn = self._stream = None
        if conn is not None:
            conn.close()  # close_notify, unless already closed
            final = conn.data_to_send()
            session = conn.tls_session
            if session is not None:
                self._session = session
        else:
            final = b""
        if stream is not None:
            await stream.aclose(final)

    async def _flush(self, conn: ClientConnection, stream: ByteStream) -> None:
        data = conn.data_to_send()
        if data:
            await stream.send_all(data)

    async def _read_into(self, conn: ClientConnection, stream: ByteStream) -> None:
        deadline = conn.get_timer()
        data = await stream.receive(deadline)
        now = self._clock()
        if data is None:
            if deadline is None:
                raise TimeoutError("no deadline and no data")  # pragma: no cover
            conn.handle_timer(now)
        else:
            conn.receive_data(data, now=now)

    async def _connection(self) -> tuple[ClientConnection, ByteStream, bool]:
        """The open connection (reused: True) or a new, handshaken one."""
        if self._closed:
            raise LocalProtocolError("the client is closed")
        conn, stream = self._conn, self._stream
        if conn is not None and stream is not None and not conn.closed:
            return conn, stream, True
        await self._retire()
        stream = await self._open_stream()
        self.connections_opened += 1
        conn = ClientConnection(
            self.config, credentials=self.credentials, now=self._clock(),
            session=self._session, lenient=self.lenient,
        )
        self._conn, self._stream = conn, stream
        try:
            # Complete the handshake before building the request, so that a
            # PoP-linked CSR can use this connection's channel binding.
            while conn.state is ConnectionState.HANDSHAKING:
                await self._flush(conn, stream)
                await self._read_into(conn, stream)
            await self._flush(conn, stream)
            if conn.closed:
                self._unexpected(conn.next_event())  # raises the TLS error
        except BaseException:
            await self._retire()
            raise
        return conn, stream, False

    @staticmethod
    def _unexpected(event: object) -> None:
        if isinstance(event, ConnectionTerminated):
            raise TimeoutError(event.reason)
        raise RemoteProtocolError("server closed the connection without responding")

    async def _until_result(self, conn: ClientConnection, stream: ByteStream) -> ClientResultEvent:
        while True:
            event = conn.next_event()
            # Flush even on NEED_DATA: a 401 answered in place was just
            # written by next_event itself.
            try:
                await self._flush(conn, stream)
            except ConnectionError:
                if isinstance(event, ClientResult):
                    # The answer is complete; only what followed it (our
                    # close_notify to a server that already left) was lost.
                    await self._retire()
                    return event  # type: ignore[return-value]
                early = await self._answer_after_failed_write(conn, stream)
                if early is None:
                    raise
                await self._retire()
                return early
            if event is NEED_DATA:
                try:
                    await self._read_into(conn, stream)
                except ConnectionError:
                    ended = self._answer_at_reset(conn)
                    if ended is None:
                        raise
                    await self._retire()
                    return ended
                continue
            assert event is not PAUSED
            if isinstance(event, (ConnectionClosed, ConnectionTerminated)):
                self._unexpected(event)
            if conn.closed:  # "Connection: close": finish it now
                await self._retire()
            return event  # type: ignore[return-value]

    def _answer_at_reset(self, conn: ClientConnection) -> ClientResultEvent | None:
        """What the core makes of the connection ending here, after a reset.

        A reset ends the byte stream as EOF does, so the core is told EOF and
        decides: a response delimited by the close (libest's 202) is complete,
        and a 401 it answered in place comes back with its ``retry`` for a
        new connection. Returns None when nothing usable arrived (the caller
        then reports the reset itself).
        """
        conn.receive_data(b"", now=self._clock())
        try:
            event = conn.next_event()
        except RemoteProtocolError:
            return None
        return event if isinstance(event, ClientResult) else None

    async def _answer_after_failed_write(
        self, conn: ClientConnection, stream: ByteStream
    ) -> ClientResultEvent | None:
        """The server's answer, if it came before our write failed.

        A server may answer a request before reading all of it (a 413 to a
        body too large) and close while we are still writing; RFC 9110
        15.5.14 allows that. Its answer can be waiting unread: read what is
        left (bounded by :data:`CLOSE_TIMEOUT`) before calling it a network
        failure. Returns None when no complete answer arrived.
        """
        deadline = self._clock() + CLOSE_TIMEOUT
        while True:
            try:
                data = await stream.receive(deadline)
            except OSError:
                data = b""  # reset: what arrived before it was already read
            if data is None:
                return None  # time is up
            conn.receive_data(data, now=self._clock())
            event = conn.next_event()
            if event is NEED_DATA and data:
                continue
            if event is NEED_DATA or isinstance(event, (ConnectionClosed, ConnectionTerminated)):
                return None
            return event  # type: ignore[return-value]

    async def _exchange(
        self, build: Callable[[ClientConnection], ClientRequest], authorization: str | None
    ) -> ClientResultEvent:
        """Send one request and get its result, reconnecting once when a
        reused keep-alive connection turns out to be closed by the server
        (it may close an idle connection at any time: RFC 9112 9.3)."""
        while True:
            conn, stream, reused = await self._connection()
            request = build(conn)
            if authorization is not None:
                request = dataclasses.replace(request, authorization=authorization)
            try:
                conn.send(request)
                return await self._until_result(conn, stream)
            except (OSError, RemoteProtocolError) as exc:
                await self._retire()
                # Retry only when the server may never have seen the request:
                # the connection was reset, or closed before any byte of a
                # response. Anything else (a malformed response, a timeout)
                # is the server's answer and is reported.
                if not reused or not isinstance(exc, (ConnectionError, ClosedBeforeResponse)):
                    raise
                self._log.debug("kept-alive connection failed (%s); reconnecting", exc)

    async def _run(self, build: Callable[[ClientConnection], ClientRequest]) -> ClientResultEvent:
        if self._busy:
            raise LocalProtocolError("one request at a time per client")
        self._busy = True
        try:
            return await self._run_unlocked(build)
        finally:
            self._busy = False

    async def _run_unlocked(self, build: Callable[[ClientConnection], ClientRequest]) -> ClientResultEvent:
        retries = 0
        authorization: str | None = None
        auth_retried = False
        while True:
            result = await self._exchange(build, authorization)
            authorization = None
            if isinstance(result, AuthenticationChallenged) and result.retry is not None:
                if auth_retried:
                    return result
                # The server closed after its 401: answer on a new connection
                # (resuming the session), rebuilding the request there.
                auth_retried = True
                authorization = result.retry.authorization
                await self._retire()
                continue
            if isinstance(result, EnrollmentPending):
                delay = result.delay(datetime.datetime.now(datetime.timezone.utc))
                if retries >= self.max_retries or delay > self.max_retry_wait:
                    return result
                retries += 1
                auth_retried = False
                self._log.info("request pending, retrying in %.1f s (%d/%d)",
                               delay, retries, self.max_retries)
                # RFC 7030 4.2.3: "The client MUST wait at least the
                # specified 'retry-after' time before repeating the same
                # request". Close meanwhile: the server would time us out.
                await self._retire()
                await self._sleep(delay)
                continue
            return result

    # -- public API ----------------------------------------------------------

    async def request(self, event: ClientRequest) -> ClientResultEvent:
        """Send *event* as it is and return the connection's result event.

        Reconnection, the 401 retry and Retry-After waits happen as for the
        typed methods, but no result is turned into an exception (a final
        :class:`EnrollmentPending`, :class:`ErrorReceived` ... are returned).

        Raises:
            RemoteProtocolError: the server broke the protocol.
            OSError: network failure or a deadline (TimeoutError).
            LocalProtocolError: misuse (e.g. a second concurrent request).
        """
        return await self._run(lambda conn: event)

    async def request_built(
        self, build: Callable[[ClientConnection], ClientRequest]
    ) -> ClientResultEvent:
        """Like :meth:`request`, but the request is built by *build* for the
        connection that will carry it (after its handshake), and rebuilt on
        every new connection: for requests that depend on the connection,
        such as a CSR linked to its channel binding (RFC 7030 3.5).
        """
        return await self._run(build)

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

    async def cacerts(self) -> tuple[x509.Certificate, ...]:
        """GET /cacerts (RFC 7030 4.1): the CA certificates.

        Raises:
            ESTError: the server refused. Also see :meth:`request`.
        """
        result = await self._run(lambda conn: GetCACerts(label=self.label))
        return self._expect(result, CACertsReceived).certificates

    async def csrattrs(self) -> CsrAttributes | None:
        """GET /csrattrs (RFC 7030 4.5): None when the server has none."""
        result = await self._run(lambda conn: GetCSRAttrs(label=self.label))
        return self._expect(result, CSRAttrsReceived).attributes

    async def simpleenroll(self, csr_der: bytes) -> x509.Certificate:
        """POST /simpleenroll (RFC 7030 4.2.1) with a DER PKCS#10.

        Raises:
            ESTPendingError: still 202 after the allowed retries.
            ESTAuthenticationError: 401 that could not be answered.
            ESTError: any other refusal.
        """
        result = await self._run(lambda conn: SimpleEnroll(csr=csr_der, label=self.label))
        return self._expect(result, CertificateIssued).certificate

    async def simplereenroll(self, csr_der: bytes) -> x509.Certificate:
        """POST /simplereenroll (RFC 7030 4.2.2); the TLS context should hold
        the certificate being renewed. Raises as :meth:`simpleenroll`."""
        result = await self._run(lambda conn: SimpleReenroll(csr=csr_der, label=self.label))
        return self._expect(result, CertificateIssued).certificate

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

    async def simpleenroll_linked(
        self, key: pkcs10.PrivateKey, subject: x509.Name, **csr_kwargs: Any
    ) -> x509.Certificate:
        """Enroll with a CSR linked to the TLS connection (RFC 7030 3.5).

        The CSR is built (:func:`estproto.codecs.pkcs10.build_csr` with
        *csr_kwargs*) after the handshake of the connection that carries it,
        and rebuilt whenever the request moves to a new connection (401
        retry, Retry-After, reconnect). Raises as :meth:`simpleenroll`.
        """
        csr = self._linked(key, subject, csr_kwargs)
        result = await self._run(lambda conn: SimpleEnroll(csr=csr(conn), label=self.label))
        return self._expect(result, CertificateIssued).certificate

    async def simplereenroll_linked(
        self, key: pkcs10.PrivateKey, subject: x509.Name, **csr_kwargs: Any
    ) -> x509.Certificate:
        """Re-enroll with a CSR linked to the TLS connection (see
        :meth:`simpleenroll_linked`)."""
        csr = self._linked(key, subject, csr_kwargs)
        result = await self._run(lambda conn: SimpleReenroll(csr=csr(conn), label=self.label))
        return self._expect(result, CertificateIssued).certificate

    async def serverkeygen(
        self,
        csr_der: bytes,
        *,
        kek: bytes | None = None,
        kek_id: bytes | None = None,
        decryption_key: pkcs10.PrivateKey | None = None,
    ) -> ServerKeyReceived:
        """POST /serverkeygen (RFC 7030 4.4): the certificate and the key
        (opened with *kek* / *decryption_key* when the server encrypted it).
        Raises as :meth:`simpleenroll`."""
        result = await self._run(lambda conn: ServerKeygen(
            csr=csr_der, kek=kek, kek_id=kek_id, decryption_key=decryption_key, label=self.label,
        ))
        return self._expect(result, ServerKeyReceived)

    async def serverkeygen_linked(
        self,
        key: pkcs10.PrivateKey,
        subject: x509.Name,
        *,
        kek: bytes | None = None,
        kek_id: bytes | None = None,
        decryption_key: pkcs10.PrivateKey | None = None,
        **csr_kwargs: Any,
    ) -> ServerKeyReceived:
        """:meth:`serverkeygen` with a CSR linked to the TLS connection
        (RFC 7030 3.5), rebuilt on every new connection like
        :meth:`simpleenroll_linked`. *key* only signs the CSR: the server
        ignores its public key (4.4.1)."""
        csr = self._linked(key, subject, csr_kwargs)
        result = await self._run(lambda conn: ServerKeygen(
            csr=csr(conn), kek=kek, kek_id=kek_id, decryption_key=decryption_key, label=self.label,
        ))
        return self._expect(result, ServerKeyReceived)

    async def fullcmc(self, request_der: bytes) -> FullCMCReceived:
        """POST /fullcmc (RFC 7030 4.3) with a DER Full PKI Request.

        Returns:
            the Full PKI Response, whatever its CMC status (a CMC failure
            arrives with a 4xx/5xx status and a CMC body; check
            ``.response.status``).
        """
        result = await self._run(lambda conn: FullCMC(request=request_der, label=self.label))
        return self._expect(result, FullCMCReceived)

