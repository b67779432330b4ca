"""An estproto server, on the trio or the asyncio adapter, in a background
thread: the tests' way to talk to a real server over loopback from plain
sockets, subprocesses (curl, openssl, strongSwan, Bouncy Castle) or another
event loop. Leaving it (or :meth:`ServerThread.stop`) closes the server
gracefully and joins the thread.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any, Callable

import trio

import estproto.asyncio as est_asyncio
import estproto.trio as est_trio
from estproto import ServerConfig

#: The server adapters (``estproto serve --framework``), for parametrizing.
FRAMEWORKS = ("trio", "asyncio")


class ServerThread:
    """An estproto server (trio or asyncio adapter, *kind*) in a background thread.

    Use as a context manager, or :meth:`start` and :meth:`stop`. *kwargs* go
    to the adapter's ``serve``/``start_server`` (host, port, limits ...).
    """

    def __init__(self, kind: str, handler: Any, config: ServerConfig, **kwargs: Any) -> None:
        if kind not in FRAMEWORKS:
            raise ValueError(f"unknown framework {kind!r}")
        self.kind = kind
        self.handler = handler
        self.config = config
        self.kwargs = kwargs
        self.server: Any = None
        self.port = 0
        self._ready = threading.Event()
        self._stop: Callable[[], None] = lambda: None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"est-{kind}-server", daemon=True)

    def _main(self) -> None:
        try:
            if self.kind == "trio":
                trio.run(self._trio)
            else:
                asyncio.run(self._asyncio())
        except BaseException as exc:  # reported by start() or stop()
            self._error = exc
            self._ready.set()

    async def _trio(self) -> None:
        async with trio.open_nursery() as nursery:
            self.server = await nursery.start(
                functools.partial(est_trio.serve, self.handler, self.config, **self.kwargs))
            token = trio.lowlevel.current_trio_token()
            self._stop = lambda: trio.from_thread.run_sync(self.server.close, trio_token=token)
            self.port = self.server.port
            self._ready.set()

    async def _asyncio(self) -> None:
        server = await est_asyncio.start_server(self.handler, self.config, **self.kwargs)
        loop = asyncio.get_running_loop()
        self.server = server

        def stop() -> None:
            loop.call_soon_threadsafe(server.close)

        self._stop = stop
        self.port = server.port
        self._ready.set()
        await server.wait_closed()

    @property
    def connection_count(self) -> int:
        return int(self.server.connection_count)

    def start(self) -> ServerThread:
        """Start serving; returns once the port is bound (raises the
        server's own error if it failed to start)."""
        self._thread.start()
        assert self._ready.wait(15), "server did not start"
        if self._error is not None:
            raise self._error
        return self

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the server gracefully and join its thread; raise the
        server's error, if it had one."""
        if self._thread.is_alive() and self.server is not None:
            self._stop()
        self._thread.join(30)
        assert not self._thread.is_alive(), "server thread did not stop"
        if self._error is not None:
            raise self._error
