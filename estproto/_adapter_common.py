"""What the trio and asyncio adapters share: no protocol here, only plumbing.

The adapters (:mod:`estproto.trio`, :mod:`estproto.asyncio`) are byte pumps
around the sans-I/O connections. Everything in them that does not depend on
the I/O framework lives here, written once:

* the adapter limits, named, with reasons;
* server side: calling the application's handler (a coroutine function is
  awaited, a plain function runs in a worker thread the adapter provides),
  turning a crashing handler into ``ErrorResponse(500, "internal error")``,
  and the one-line-per-request log (:func:`answer_events`);
* client side: :class:`ClientBase`, the async driver of
  :class:`~estproto.ClientSession`. The session decides everything (reuse,
  reconnection, the 401 retry, Retry-After, PoP linking, results into
  exceptions) and yields I/O instructions; the driver carries them out
  through a :class:`ByteStream` and three hooks (open a stream, sleep, read
  the clock) that each adapter implements.

Strategy: the async code here awaits only the :class:`ByteStream` methods and
the hooks, so the same coroutines run under trio and under asyncio. Every
wait is bounded: reads by the core's deadlines (``get_timer``), writes by
:data:`WRITE_TIMEOUT`, connects by the handshake timeout, closes by
:data:`CLOSE_TIMEOUT`, Retry-After waits by ``max_retry_wait``.
"""

from __future__ import annotations

import abc
import datetime
import inspect
import logging
from typing import Any, Awaitable, Callable, Mapping, Protocol, TypeVar, Union

from cryptography import x509

from ._client_session import (
    CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    MAX_RETRIES,
    MAX_RETRY_WAIT,
    ClientSession,
    advance,
    Connect,
    Disconnect,
    Instruction,
    Read,
    Received,
    Steps,
    Wait,
    Write,
)
from ._config import REQUEST_TIMEOUT
from ._errors import ESTAuthenticationError, ESTError, ESTPendingError, LocalProtocolError
from ._est_server import RequestRejected
from ._events import (
    NEED_DATA,
    PAUSED,
    ClientRequest,
    ClientResultEvent,
    ConnectionTerminated,
    ErrorResponse,
    FullCMCReceived,
    ServerKeyReceived,
    ServerRequest,
    ServerResponse,
)
from ._paths import format_est_path
from ._publication import PublicationConnection
from ._response_future import InlineHandler, ResponseFuture
from ._tls import ClientTLSContext
from .client import ClientConnection
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
    "PublishedFile",
    "PUBLICATION_CONNECTIONS",
    "PUBLICATION_IDLE_TIMEOUT",
    "serve_publication_stream",
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


#: Seconds, and bytes, a server keeps reading and dropping after its last
#: response before it closes (RFC 9112 section 9.6 "lingering close"): a
#: client still sending a request we refused (413, 431 ...) then reads our
#: answer instead of a connection reset that destroys it.
LINGER_TIMEOUT = 2.0
LINGER_BYTES = 4 * 1024 * 1024


#: Seconds to pause after ``accept`` fails (EMFILE, ENOBUFS ...), so a full
#: descriptor table does not turn the accept loop into a busy loop.
ACCEPT_RETRY_DELAY = 0.1



SERVER_LOGGER = "estproto.server"

#: Longest request-target kept in a log line (the rest is cut off).
_MAX_LOGGED_TARGET = 200

Handler = Callable[[ServerRequest], Union[ServerResponse, Awaitable[ServerResponse], ResponseFuture]]
"""The application's answer to one EST request event.

A coroutine function is awaited in the connection's task; an
:class:`~estproto.InlineHandler` is called on the event loop and may return
a :class:`~estproto.ResponseFuture` that another thread finishes; any other
plain function runs in a worker thread (CA work blocks: SQLite, HSMs).
"""

RunSync = Callable[[Callable[[ServerRequest], Any], ServerRequest], Awaitable[Any]]
#: The adapter's way to wait, on its loop, for a future another thread finishes.
AwaitFuture = Callable[[ResponseFuture], Awaitable[None]]
#: The adapter's way to let every other ready task run once (one loop turn).
Checkpoint = Callable[[], Awaitable[None]]

_T = TypeVar("_T")
_Self = TypeVar("_Self", bound="ClientBase")


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
    handler: Handler, run_sync: RunSync, logger: logging.Logger, await_future: AwaitFuture,
    checkpoint: Checkpoint,
) -> Callable[[ServerRequest], Awaitable[ServerResponse]]:
    """Wrap *handler* so that calling it never raises.

    Args:
        handler: the application's handler.
        run_sync: the adapter's way to run a blocking function in a worker
            thread (with its capacity limit).
        logger: where a crashing handler is logged.
        await_future: the adapter's way to wait for a ResponseFuture.
        checkpoint: the adapter's way to yield for one turn of its loop.

    Returns:
        An async function giving the handler's response, or
        ``ErrorResponse(500, "internal error")`` when it raised or returned
        something that is not a :class:`ServerResponse` (logged with the
        traceback; the request's credentials are never logged).
    """
    is_async = _is_async_callable(handler)
    inline = isinstance(handler, InlineHandler)

    async def call(event: ServerRequest) -> ServerResponse:
        try:
            if inline:
                result: Any = handler(event)
            elif is_async:
                result = await handler(event)  # type: ignore[misc]  # is_async checked it is a coroutine function
            else:
                result = await run_sync(handler, event)
            if isinstance(result, ResponseFuture):
                if not result.done and result.flush is not None:
                    # The other connections' ready requests run first, so
                    # that the flush (a commit) covers theirs too.
                    await checkpoint()
                    result.flush()
                if not result.done:
                    await await_future(result)
                result = result.result()
            elif inspect.isawaitable(result):
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
# Client side: the async driver of ClientSession


class ByteStream(Protocol):
    """The little an adapter's socket must offer the client driver."""

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
    """``ESTClient`` of the async adapters: a :class:`ClientSession` driven
    over a :class:`ByteStream`.

    Every decision (reuse, reconnect, the 401 retry, Retry-After, PoP
    linking, results to exceptions) is the session's; this class only
    carries out its instructions with three hooks each adapter implements
    (open a stream, sleep, read the clock). Arguments, operations and errors
    are those of :class:`~estproto.ClientSession`: host, port, tls,
    credentials, label, max_retries, max_retry_wait, lenient,
    request_timeout, connect_timeout.

    One request at a time per client; use several clients for concurrency.
    Errors: :class:`~estproto.ESTError` (and subclasses) for EST-level
    refusals; :class:`~estproto.RemoteProtocolError` (:class:`~estproto.TLSError`
    ...) for a server breaking the protocol; ``OSError`` for the network,
    including ``TimeoutError`` when a deadline passes.
    """

    def __init__(self, host: str, port: int, tls: ClientTLSContext, **settings: Any) -> None:
        self.session = ClientSession(host, port, tls, **settings)
        self._stream: ByteStream | None = None

    # Read-only views of the session, for callers and tests.
    host = property(lambda self: self.session.host)
    port = property(lambda self: self.session.port)
    label = property(lambda self: self.session.label)
    config = property(lambda self: self.session.config)
    credentials = property(lambda self: self.session.credentials)
    connections_opened = property(lambda self: self.session.connections_opened)

    # -- hooks each adapter implements --------------------------------------

    @abc.abstractmethod
    async def _open_stream(self, host: str, port: int, timeout: float) -> ByteStream:
        """Connect to (*host*, *port*) within *timeout* seconds.

        Raises:
            OSError: including TimeoutError.
        """

    @abc.abstractmethod
    async def _sleep(self, seconds: float) -> None:
        """Sleep in the framework's way."""

    @abc.abstractmethod
    def _clock(self) -> float:
        """The framework's monotonic clock (the core's ``now``)."""

    # -- the driver ----------------------------------------------------------

    async def _drive(self, steps: Steps[_T]) -> _T:
        """Carry out the session's *steps* (see :func:`estproto.drive`)."""
        reply: Any = None
        failure: BaseException | None = None
        while True:
            finished, instruction = advance(steps, reply, failure)
            if finished:
                result: _T = instruction  # what the steps returned
                return result
            reply, failure = None, None
            try:
                reply = await self._perform(instruction)
            except BaseException as exc:  # cancellation too: the steps clean up
                failure = exc

    async def _perform(self, instruction: Instruction) -> Any:
        if isinstance(instruction, Read):
            assert self._stream is not None
            data = await self._stream.receive(instruction.deadline)
            return Received(data, self._clock())
        if isinstance(instruction, Write):
            assert self._stream is not None
            await self._stream.send_all(instruction.data)
        elif isinstance(instruction, Connect):
            self._stream = await self._open_stream(instruction.host, instruction.port, instruction.timeout)
            return self._clock()
        elif isinstance(instruction, Disconnect):
            stream, self._stream = self._stream, None
            if stream is not None:
                await stream.aclose(instruction.final)
        elif isinstance(instruction, Wait):
            await self._sleep(instruction.seconds)
        else:
            return datetime.datetime.now(datetime.timezone.utc)
        return None

    # -- context manager and operations (see ClientSession) ------------------

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (close_notify, then the socket). Idempotent."""
        await self._drive(self.session.close())

    async def request(self, event: ClientRequest) -> ClientResultEvent:
        """See :meth:`ClientSession.request`."""
        return await self._drive(self.session.request(event))

    async def request_built(
        self, build: Callable[[ClientConnection], ClientRequest]
    ) -> ClientResultEvent:
        """See :meth:`ClientSession.request_built`."""
        return await self._drive(self.session.request_built(build))

    async def cacerts(self) -> tuple[x509.Certificate, ...]:
        """See :meth:`ClientSession.cacerts`."""
        return await self._drive(self.session.cacerts())

    async def csrattrs(self) -> CsrAttributes | None:
        """See :meth:`ClientSession.csrattrs`."""
        return await self._drive(self.session.csrattrs())

    async def simpleenroll(self, csr_der: bytes) -> x509.Certificate:
        """See :meth:`ClientSession.simpleenroll`."""
        return await self._drive(self.session.simpleenroll(csr_der))

    async def simplereenroll(self, csr_der: bytes) -> x509.Certificate:
        """See :meth:`ClientSession.simplereenroll`."""
        return await self._drive(self.session.simplereenroll(csr_der))

    async def simpleenroll_linked(
        self, key: pkcs10.PrivateKey, subject: x509.Name, **csr_kwargs: Any
    ) -> x509.Certificate:
        """See :meth:`ClientSession.simpleenroll_linked`."""
        return await self._drive(self.session.simpleenroll_linked(key, subject, **csr_kwargs))

    async def simplereenroll_linked(
        self, key: pkcs10.PrivateKey, subject: x509.Name, **csr_kwargs: Any
    ) -> x509.Certificate:
        """See :meth:`ClientSession.simplereenroll_linked`."""
        return await self._drive(self.session.simplereenroll_linked(key, subject, **csr_kwargs))

    async def serverkeygen(
        self,
        csr_der: bytes,
        *,
        kek: bytes | None = None,
        kek_id: bytes | None = None,
        decryption_key: pkcs10.PrivateKey | None = None,
    ) -> ServerKeyReceived:
        """See :meth:`ClientSession.serverkeygen`."""
        return await self._drive(self.session.serverkeygen(
            csr_der, kek=kek, kek_id=kek_id, decryption_key=decryption_key))

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
        """See :meth:`ClientSession.serverkeygen_linked`."""
        return await self._drive(self.session.serverkeygen_linked(
            key, subject, kek=kek, kek_id=kek_id, decryption_key=decryption_key, **csr_kwargs))

    async def fullcmc(self, request_der: bytes) -> FullCMCReceived:
        """See :meth:`ClientSession.fullcmc`."""
        return await self._drive(self.session.fullcmc(request_der))


# ---------------------------------------------------------------------------
# Plain-HTTP publication (the CRL): what both adapters' serve_publication run.

#: What a published path serves: a blocking function (it may read a store
#: and sign) returning the body and its media type.
PublishedFile = Callable[[], tuple[bytes, str]]

#: Connections a publication server serves at once; beyond it a new
#: connection is closed at once (a fetcher retries), so a flood of idle
#: connections cannot hold the EST server's file descriptors.
PUBLICATION_CONNECTIONS = 256

#: Seconds a publication connection may stay silent: a fetch is one GET.
PUBLICATION_IDLE_TIMEOUT = 10.0


async def serve_publication_stream(
    stream: ByteStream, files: Mapping[str, PublishedFile],
    run_blocking: Callable[[PublishedFile], Awaitable[tuple[bytes, str]]],
    clock: Callable[[], float], logger: logging.Logger,
) -> None:
    """Serve one plain-HTTP connection of :class:`PublicationConnection`:
    read (each wait bounded by :data:`PUBLICATION_IDLE_TIMEOUT`), answer
    each request with its file (produced by *run_blocking*, off the loop),
    write; a failing producer is answered 503 and logged."""
    conn = PublicationConnection(files.keys())
    try:
        while not conn.closed:
            request = conn.next_request()
            if request is not None:
                try:
                    body, media_type = await run_blocking(files[request.path])
                except Exception:
                    logger.exception("cannot produce %s", request.path)
                    conn.send_error(503, "temporarily unavailable")
                else:
                    conn.send_file(body, media_type)
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)
            if request is None and not conn.closed:
                data = await stream.receive(clock() + PUBLICATION_IDLE_TIMEOUT)
                if data is None:
                    break  # idle too long
                conn.receive_data(data)
    except OSError:
        pass  # the peer went away
    finally:
        await stream.aclose(conn.data_to_send())
