"""Handlers that answer on the event loop and finish from another thread.

A plain handler blocks (a database, an HSM), so the trio and asyncio servers
run it in a worker thread. Most of an enrollment needs no thread: checking
cached credentials and signing a P-256 certificate take ~200 us; only the
durable commit of its record waits, and one committer thread can commit
many records at once. Handing every request to a worker thread and back
costs more CPU than the enrollment itself (thread wake-ups and the GIL
passing between the loop and the workers).

So a handler may be marked :class:`InlineHandler`: the server calls it on
the event loop, where it must not block, and it returns either a response
or a :class:`ResponseFuture` that some other thread finishes later (e.g.
after the commit). The server then waits for the future without holding a
thread: the finishing thread wakes the loop with the framework's own
thread-safe call (``TrioToken.run_sync_soon``,
``loop.call_soon_threadsafe``). A future may also carry a ``flush``: work
the server runs on its loop after the other ready requests had their turn
(one checkpoint), such as one commit for all the enrollments signed meanwhile.

Framework-neutral: nothing here imports trio or asyncio.
"""

from __future__ import annotations

import threading
from typing import Callable

from ._events import ServerRequest, ServerResponse

__all__ = ["ResponseFuture", "InlineHandler"]


class ResponseFuture:
    """A response that another thread finishes: once, with a response or an
    exception. Callbacks registered with :meth:`on_done` run exactly once,
    in the finishing thread (or at once, if already finished).

    Attributes:
        flush: None, or work the server must run (once, on its event loop)
            before waiting: it lets the other requests that are ready run
            first, then calls ``flush()``, which may finish the future. The
            embedded CA uses it to commit the records of all the enrollments
            signed in one turn of the loop together (group commit without a
            thread hand-off).
    """

    __slots__ = ("_lock", "_finished", "_response", "_error", "_callbacks", "flush")

    def __init__(self) -> None:
        self.flush: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._finished = False
        self._response: ServerResponse | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        return self._finished

    def set_response(self, response: ServerResponse) -> None:
        """Finish with *response*.

        Raises:
            RuntimeError: already finished.
        """
        self._finish(response, None)

    def set_error(self, error: BaseException) -> None:
        """Finish with *error*: :meth:`result` raises it.

        Raises:
            RuntimeError: already finished.
        """
        self._finish(None, error)

    def _finish(self, response: ServerResponse | None, error: BaseException | None) -> None:
        with self._lock:
            if self._finished:
                raise RuntimeError("ResponseFuture finished twice")
            self._response, self._error = response, error
            self._finished = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call *callback()* once finished (now, if it already is)."""
        with self._lock:
            if not self._finished:
                self._callbacks.append(callback)
                return
        callback()

    def result(self) -> ServerResponse:
        """The response.

        Raises:
            RuntimeError: not finished yet.
            BaseException: the error it finished with.
        """
        if not self._finished:
            raise RuntimeError("ResponseFuture not finished yet")
        if self._error is not None:
            raise self._error
        assert self._response is not None
        return self._response


class InlineHandler:
    """Marks a handler that runs on the event loop and never blocks.

    Args:
        fn: ``fn(request)`` returning a :class:`~estproto.ServerResponse` or
            a :class:`ResponseFuture`. It must hand anything that blocks
            (password hashing, database waits, key generation) to a thread
            of its own and return a future for it.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[ServerRequest], ServerResponse | ResponseFuture]) -> None:
        self.fn = fn

    def __call__(self, request: ServerRequest) -> ServerResponse | ResponseFuture:
        return self.fn(request)
