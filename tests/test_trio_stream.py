"""The trio adapter's byte stream (``estproto.trio._Stream``) over real TCP
on 127.0.0.1.

Its ``send_all`` writes straight to the non-blocking socket when the message
fits the send buffer and leaves only the rest to trio's send path. Checked
here: what did not fit still arrives, whole and in order, once the peer
reads; a peer that never reads hits the write timeout; a cancelled caller
writes nothing; a reset peer is a ConnectionError; a stream that was closed
never writes to the descriptor number a later socket got.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Awaitable, Callable

import pytest
import trio
import trio.testing

import estproto.trio as estproto_trio
from estproto.trio import _Stream

# Far more than the kernel buffers of both ends hold (they are made small).
BIG = 4 * 1024 * 1024
SMALL_BUFFER = 16 * 1024


async def _pair(small_buffers: bool = False) -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected (sender, receiver) pair of trio streams over TCP."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if small_buffers:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    await sock.connect(("127.0.0.1", port))
    receiver = trio.SocketStream(sock)
    sender = await listener.accept()
    await listener.aclose()
    if small_buffers:
        sender.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    return sender, receiver


def _run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test)


def test_what_does_not_fit_arrives_whole_and_in_order() -> None:
    payload = os.urandom(BIG)
    received = bytearray()

    async def main() -> None:
        sender, receiver = await _pair(small_buffers=True)
        stream = _Stream(sender)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            # The sender is parked on trio's path (the direct write took
            # what fitted) before anything is read.
            await trio.testing.wait_all_tasks_blocked()
            assert len(received) == 0
            while len(received) < BIG:
                chunk = await receiver.receive_some(65536)
                assert chunk
                received.extend(chunk)
        await stream.aclose()
        await receiver.aclose()

    _run(main)
    assert bytes(received) == payload


def test_peer_that_never_reads_hits_the_write_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(estproto_trio, "WRITE_TIMEOUT", 0.3)

    async def main() -> None:
        sender, receiver = await _pair(small_buffers=True)
        stream = _Stream(sender)
        with pytest.raises(TimeoutError):
            await stream.send_all(b"x" * BIG)
        # Now the buffer is full from the start: the direct write takes
        # nothing (EAGAIN), and trio's path waits, and times out, as before.
        with pytest.raises(TimeoutError):
            await stream.send_all(b"y" * 1000)
        await stream.aclose()
        await receiver.aclose()

    _run(main)


def test_cancelled_caller_writes_nothing() -> None:
    async def main() -> None:
        sender, receiver = await _pair()
        stream = _Stream(sender)
        with trio.CancelScope() as scope:
            scope.cancel()
            await stream.send_all(b"must not be sent")
        assert scope.cancelled_caught
        await stream.send_all(b"sent")
        assert await receiver.receive_some(100) == b"sent"
        await stream.aclose()
        await receiver.aclose()

    _run(main)


def test_reset_peer_is_a_connection_error() -> None:
    async def main() -> None:
        sender, receiver = await _pair()
        stream = _Stream(sender)
        # SO_LINGER 0: closing sends a reset.
        receiver.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await receiver.aclose()
        await trio.sleep(0.05)  # the reset reaches the sender's socket
        with pytest.raises(ConnectionError):
            for _ in range(3):  # the first write after a reset may still succeed
                await stream.send_all(b"x" * 1000)
                await trio.sleep(0.05)
        await stream.aclose()

    _run(main)


def test_closed_stream_never_writes_to_a_reused_descriptor() -> None:
    async def main() -> None:
        sender, receiver = await _pair()
        stream = _Stream(sender)
        old_fd = sender.socket.fileno()
        other, other_peer = await _pair()
        await stream.aclose()
        await receiver.aclose()
        # The closed descriptor's number now belongs to another connection.
        os.dup2(other.socket.fileno(), old_fd)
        try:
            with pytest.raises(ConnectionError):
                await stream.send_all(b"stray bytes")
        finally:
            os.close(old_fd)
        await other.send_all(b"own bytes")
        assert await other_peer.receive_some(100) == b"own bytes"
        await other.aclose()
        await other_peer.aclose()

    _run(main)
