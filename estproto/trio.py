"""EST over trio: a server and a client that pump bytes through the sans-I/O core.

The mirror image of :mod:`estproto.asyncio`. No parsing, status codes or
ASN.1 here: a read loop feeds :meth:`ServerConnection.receive_data`, the
events go to the application's handler, :meth:`data_to_send` goes to the
socket, and the core's deadline (``get_timer``/``handle_timer``) is armed with
``trio.current_time()``. TLS lives in the core; the sockets carry plain TCP.

Server::

    async with trio.open_nursery() as nursery:
        server = await nursery.start(estproto.trio.serve, handler, config)
        print(server.port)
        ...
        nursery.cancel_scope.cancel()   # graceful shutdown (or server.close())

* ``task_status.started`` reports an :class:`ESTServer` (``.port``).
* Each connection runs in its own task inside a shielded cancel scope, so a
  cancelled :func:`serve` (or :meth:`ESTServer.close`) shuts down gracefully:
  the listeners close, idle and handshaking connections get close_notify,
  requests in flight are answered (no more keep-alive), and whatever is left
  after ``shutdown_timeout`` is cancelled.
* ``max_connections``: at the cap the server stops accepting until a
  connection ends; the kernel's listen backlog holds the waiting clients.
* A failure of one connection (reset, TLS garbage, a crashing handler) is
  logged and ends only that connection.

Client: :class:`ESTClient`, a driver of :class:`estproto.ClientSession`,
which holds every client decision (keep-alive, reconnects, the 401 retry,
Retry-After, PoP linking) for this adapter, the other one and
:mod:`estproto.sync` alike.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import socket
from typing import Any, Callable, Mapping, Sequence

import trio

from ._adapter_common import (
    ACCEPT_RETRY_DELAY,
    CLOSE_TIMEOUT,
    HANDLER_THREADS,
    LINGER_BYTES,
    LINGER_TIMEOUT,
    MAX_CONNECTIONS,
    PUBLICATION_CONNECTIONS,
    RECEIVE_SIZE,
    SERVER_LOGGER,
    SHUTDOWN_TIMEOUT,
    WRITE_TIMEOUT,
    ByteStream,
    ClientBase,
    ESTAuthenticationError,
    ESTError,
    ESTPendingError,
    Handler,
    PublishedFile,
    answer_events,
    make_handler_caller,
    serve_publication_stream,
)
from ._config import ServerConfig
from ._errors import LocalProtocolError
from ._events import ServerRequest
from ._response_future import ResponseFuture
from ._state import ConnectionState
from .server import ServerConnection

__all__ = [
    "serve",
    "ESTServer",
    "ESTClient",
    "ESTError",
    "ESTAuthenticationError",
    "ESTPendingError",
]

# trio 0.23 renamed to_thread.run_sync's ``cancellable`` to ``abandon_on_cancel``.
_ABANDON = (
    "abandon_on_cancel"
    if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters
    else "cancellable"
)

# States in which a connection holds no request: shutdown closes them at once.
_QUIET = (ConnectionState.HANDSHAKING, ConnectionState.IDLE)

_TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Stream:
    """A trio SocketStream seen as a :class:`ByteStream`, plus a wake-up."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        # The (non-blocking) descriptor for send_all's direct write, on POSIX
        # (where a socket is a file); -1 elsewhere and once closing began, so
        # that a late write takes trio's path and fails there, instead of
        # landing on a descriptor number the kernel may have handed out again.
        self._fd = stream.socket.fileno() if os.name == "posix" else -1
        self._read_scope: trio.CancelScope | None = None

    async def receive(self, deadline: float | None) -> bytes | None:
        with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
            self._read_scope = scope
            try:
                return bytes(await self._stream.receive_some(RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionError(str(exc) or type(exc).__name__) from exc
            finally:
                self._read_scope = None
        return None  # deadline reached, or woken

    def wake(self) -> None:
        """Make a pending :meth:`receive` return None now."""
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def send_all(self, data: bytes) -> None:
        # Most messages fit the socket's send buffer: one write(2), as
        # asyncio's transports do, instead of trio's send path with its cancel
        # scope, conflict check and schedule point (measured: 50-70 us less
        # server CPU per keep-alive enrollment, ~100 us per new connection,
        # benchmarks/bench_loopback.py). Cancellation is still honoured
        # here; the schedule point is the receive that follows every send in
        # both pumps. Only what did not fit waits, on trio's path.
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._fd >= 0:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:  # reset, broken pipe
                raise ConnectionError(str(exc) or type(exc).__name__) from exc
            if sent == len(data):
                return
            data = data[sent:]
        with trio.move_on_after(WRITE_TIMEOUT):
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionError(str(exc) or type(exc).__name__) from exc
            return
        raise TimeoutError("write timed out: the peer stopped reading")

    async def aclose(self, final: bytes = b"", *, linger: bool = False) -> None:
        """Send *final*, half-close, and (*linger*) drain the peer, then close."""
        self._fd = -1
        # Shielded and short: closing must work inside a cancelled scope.
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + CLOSE_TIMEOUT
            try:
                if final:
                    await self._stream.send_all(final)
                await self._stream.send_eof()
            except (*_TRANSPORT_ERRORS, trio.BusyResourceError):
                linger = False  # the peer is gone: nothing more to tell it
            if linger:
                scope.deadline = trio.current_time() + LINGER_TIMEOUT
                await self._linger()
            await self._stream.aclose()

    async def _linger(self) -> None:
        # RFC 9112 9.6: closing with unread bytes makes the kernel send a
        # reset, which can destroy the response the peer has not read yet.
        dropped = 0
        try:
            while dropped <= LINGER_BYTES:
                data = await self._stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return  # the peer closed
                dropped += len(data)
        except _TRANSPORT_ERRORS:
            return  # the peer is gone


class _Connection:
    """Bookkeeping for one served connection."""

    __slots__ = ("conn", "stream", "scope", "peer")

    def __init__(
        self, conn: ServerConnection, stream: _Stream, scope: trio.CancelScope, peer: str
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.scope = scope
        self.peer = peer


class ESTServer:
    """A running trio EST server, as reported by :func:`serve`'s ``task_status``.

    Attributes:
        port: the bound TCP port (of the first listener).
        sockets: the listening sockets' addresses.
    """

    def __init__(
        self,
        handler: Handler,
        config: ServerConfig,
        *,
        max_connections: int,
        shutdown_timeout: float,
        handler_threads: int,
        logger: logging.Logger,
    ) -> None:
        if max_connections < 1 or shutdown_timeout < 0 or handler_threads < 1:
            raise LocalProtocolError(
                "max_connections and handler_threads must be >= 1, shutdown_timeout >= 0"
            )
        self.config = config
        self.port = 0
        self.sockets: tuple[Any, ...] = ()
        self.shutdown_timeout = shutdown_timeout
        self._log = logger
        self._limiter = trio.CapacityLimiter(handler_threads)
        self._slots = trio.Semaphore(max_connections)
        self._call = make_handler_caller(
            handler, self._run_sync, logger, self._await_future, trio.lowlevel.checkpoint
        )
        self._connections: set[_Connection] = set()
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._all_done = trio.Event()
        self._draining = False

    @property
    def connection_count(self) -> int:
        """Connections being served now."""
        return len(self._connections)

    def close(self) -> None:
        """Start a graceful shutdown; :func:`serve` returns when it is done."""
        self._stop.set()

    async def wait_closed(self) -> None:
        """Wait until the server has shut down."""
        await self._stopped.wait()

    async def _run_sync(self, fn: Callable[[ServerRequest], Any], event: ServerRequest) -> Any:
        # Abandon the thread on cancellation (forced shutdown): the handler
        # keeps running to its end, but the connection no longer waits.
        options: dict[str, Any] = {_ABANDON: True}
        return await trio.to_thread.run_sync(fn, event, limiter=self._limiter, **options)

    @staticmethod
    async def _await_future(future: ResponseFuture) -> None:
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()

        def wake() -> None:  # in the thread that finished the future
            try:
                token.run_sync_soon(finished.set)
            except trio.RunFinishedError:
                pass  # the server is gone; nobody waits any more

        future.on_done(wake)
        await finished.wait()

    # -- accepting -----------------------------------------------------------

    async def _run(
        self, listeners: list[trio.SocketListener], task_status: trio.TaskStatus[ESTServer]
    ) -> None:
        try:
            async with trio.open_nursery() as connections:
                try:
                    async with trio.open_nursery() as accepting:
                        for listener in listeners:
                            accepting.start_soon(self._accept, listener, connections)
                        task_status.started(self)
                        await self._stop.wait()
                        accepting.cancel_scope.cancel()
                finally:
                    with trio.CancelScope(shield=True):
                        for listener in listeners:
                            await listener.aclose()
                        await self._drain()
        finally:
            self._stopped.set()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            await self._slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                self._slots.release()
                self._log.warning("accept failed: %s", exc)
                await trio.sleep(ACCEPT_RETRY_DELAY)
                continue
            except BaseException:
                self._slots.release()
                raise
            nursery.start_soon(self._serve_connection, stream)

    async def _drain(self) -> None:
        self._draining = True
        for record in list(self._connections):
            if record.conn.state in _QUIET:
                record.stream.wake()
        if not self._connections:
            self._all_done.set()
        with trio.move_on_after(self.shutdown_timeout):
            await self._all_done.wait()
        for record in list(self._connections):
            self._log.warning("closing connection from %s at the shutdown deadline", record.peer)
            record.scope.cancel()

    # -- one connection ------------------------------------------------------

    async def _serve_connection(self, raw: trio.SocketStream) -> None:
        record: _Connection | None = None
        try:
            peer = _peer(raw.socket)
            stream = _Stream(raw)
            conn = ServerConnection(self.config, now=trio.current_time(), peer=peer)
            # Shielded: outer cancellation means "shut down gracefully",
            # handled by _drain, which cancels this scope when time is up.
            with trio.CancelScope(shield=True) as scope:
                record = _Connection(conn, stream, scope, peer)
                self._connections.add(record)
                try:
                    await self._pump(record)
                except _TRANSPORT_ERRORS as exc:
                    self._log.debug("connection from %s failed: %s", peer, exc)
                except Exception:
                    self._log.exception("connection from %s crashed", peer)
            # The last bytes (a response, an alert, close_notify) if the
            # connection ended in order; nothing after a failure.
            orderly = conn.closed and not scope.cancelled_caught
            final = conn.data_to_send() if orderly else b""
            # Gently if the peer may still be sending (unless shutting down).
            linger = orderly and conn.request_cut_short and not self._draining
            await stream.aclose(final, linger=linger)
        finally:
            if record is not None:
                self._connections.discard(record)
            self._slots.release()
            if self._draining and not self._connections:
                self._all_done.set()

    async def _pump(self, record: _Connection) -> None:
        conn, stream, peer = record.conn, record.stream, record.peer
        while True:
            await answer_events(conn, self._call, trio.current_time, self._log, peer)
            data = conn.data_to_send()
            if data:
                await stream.send_all(data)
            if conn.closed:
                return
            if self._draining and conn.state in _QUIET:
                conn.close()  # close_notify; no new request on this connection
                continue
            received = await stream.receive(conn.get_timer())
            now = trio.current_time()
            if received is None:
                conn.handle_timer(now)
            else:
                conn.receive_data(received, now=now)


def _peer(sock: Any) -> str:
    try:
        address = sock.getpeername()
    except OSError:
        return "-"
    if sock.family == socket.AF_INET6:
        return f"[{address[0]}]:{address[1]}"
    return f"{address[0]}:{address[1]}"


async def serve(
    handler: Handler,
    config: ServerConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[ESTServer] = trio.TASK_STATUS_IGNORED,
    max_connections: int = MAX_CONNECTIONS,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    handler_threads: int = HANDLER_THREADS,
    logger: logging.Logger | None = None,
    sockets: Sequence[socket.socket] | None = None,
) -> None:
    """Serve EST on *host*:*port* until cancelled or :meth:`ESTServer.close`.

    Args:
        handler: answers each request event with a response event; a
            coroutine function is awaited, a plain function runs in a worker
            thread (at most *handler_threads* at once). A handler that raises
            is logged and answered ``500 internal error``.
        config: the server configuration (TLS context, limits, deadlines).
        host, port: where to listen; port 0 picks a free port. A host name
            resolving to several addresses gets one listener each.
        task_status: receives the :class:`ESTServer` once listening
            (``await nursery.start(serve, ...)``).
        max_connections: connections served at once; at the cap accepting
            pauses (clients wait in the listen backlog).
        shutdown_timeout: seconds in-flight requests get at shutdown.
        handler_threads: worker threads for blocking handlers.
        logger: for the request log; default ``logging.getLogger("estproto.server")``.
        sockets: already bound and listening sockets to serve on instead of
            *host*:*port* (e.g. ``SO_REUSEPORT`` sockets of worker processes).

    Raises:
        OSError: the address could not be bound.
    """
    server = ESTServer(
        handler, config, max_connections=max_connections, shutdown_timeout=shutdown_timeout,
        handler_threads=handler_threads, logger=logger or logging.getLogger(SERVER_LOGGER),
    )
    if sockets is not None:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
    else:
        listeners = await trio.open_tcp_listeners(port, host=host)
    server.sockets = tuple(listener.socket.getsockname() for listener in listeners)
    server.port = server.sockets[0][1]
    await server._run(listeners, task_status)


class ESTClient(ClientBase):
    """An EST client over trio; use as ``async with ESTClient(...) as client``.

    Args, operations and errors: those of :class:`estproto.ClientSession`
    (host, port, tls, credentials, label, max_retries, max_retry_wait,
    lenient, request_timeout, connect_timeout), each operation awaited.
    """

    async def _open_stream(self, host: str, port: int, timeout: float) -> ByteStream:
        with trio.move_on_after(timeout):
            raw = await trio.open_tcp_stream(host, port)
            return _Stream(raw)
        raise TimeoutError(f"connecting to {host}:{port} timed out")

    async def _sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def _clock(self) -> float:
        return trio.current_time()


async def serve_publication(
    files: Mapping[str, PublishedFile],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    sockets: Sequence[socket.socket] | None = None,
    logger: logging.Logger | None = None,
) -> None:
    """Serve *files* (path -> producer) over plain HTTP until cancelled: the
    CRL a CA publishes (:mod:`estproto._publication`). ``task_status``
    reports the port. Producers run in worker threads."""
    log = logger or logging.getLogger("estproto.server")
    if sockets is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    else:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
    slots = trio.CapacityLimiter(PUBLICATION_CONNECTIONS)

    async def run_blocking(produce: PublishedFile) -> tuple[bytes, str]:
        return await trio.to_thread.run_sync(produce)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await trio.aclose_forcefully(stream)
            return
        try:
            await serve_publication_stream(_Stream(stream), files, run_blocking, trio.current_time, log)
        finally:
            slots.release()

    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)
