"""Hostile clients against a running estproto server on 127.0.0.1 (issue 6).

A real server (the trio adapter, and the asyncio one where cheap) runs in a
background thread in front of an :class:`~estproto.ca.EmbeddedCA` with one
Basic user. Attackers speak raw TCP and estproto's own TLS layer over trio
sockets in the test's thread; the legitimate client is estproto's
``ESTClient``. Attacks tried:

* slowloris: ClientHello bytes trickled during the handshake, and request
  heads trickled after a completed handshake (the bar of issue 6: 150 of
  them, plus garbage and reset clients, while 10 sequential enrollments each
  finish within 5 s);
* oversized heads (431), bodies beyond the limit (413, declared or chunked);
* many idle connections beyond a configured connection cap;
* TLS garbage and aborted handshakes;
* resets mid-request (SO_LINGER 0, then close).

Every attack loop is bounded in count and time and stops by itself; every
test stops the server and sockets it started. The server runs with shorter
deadlines than its defaults (HANDSHAKE_TIMEOUT 10 s, REQUEST_TIMEOUT 30 s,
IDLE_TIMEOUT 15 s in estproto/_config.py) so the test stays short; the
figures measured (requests served during the attack, memory growth) are
printed (``pytest -s``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
import resource
import socket
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import estproto.trio as est_trio
from estproto import ServerConfig
from estproto._events import ServerRequest, ServerResponse
from estproto._http import HTTPLimits
from estproto._tls import ClientTLSContext, TLSError, TLSLayer
from estproto.ca import EmbeddedCA
from estproto.client import Credentials
from estproto.codecs import pkcs10, transfer
from server_thread import FRAMEWORKS, ServerThread

PASSWORD = "correct horse battery staple"
USER = "alice"

#: Deadlines of the servers under attack (shorter than the defaults so the
#: test is short; the mechanism is the same).
HANDSHAKE_TIMEOUT = 2.0
REQUEST_TIMEOUT = 3.0
IDLE_TIMEOUT = 2.0

#: The bar of issue 6.
SLOWLORIS_CONNECTIONS = 150
ENROLLMENTS = 10
ENROLLMENT_BUDGET = 5.0
MEMORY_GROWTH_LIMIT_MB = 200


# ---------------------------------------------------------------------------
# The server under attack, in a background thread


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCA]:
    directory = tmp_path_factory.mktemp("hostile") / "ca"
    with EmbeddedCA.init(directory, hostnames=("127.0.0.1",)) as c:
        c.add_user(USER, PASSWORD)
        yield c


def server_config(ca: EmbeddedCA, **http: Any) -> ServerConfig:
    return ServerConfig(
        tls=ca.server_tls_context(), est=ca.est_settings(), http=HTTPLimits(**http),
        handshake_timeout=HANDSHAKE_TIMEOUT, request_timeout=REQUEST_TIMEOUT,
        idle_timeout=IDLE_TIMEOUT,
    )


class Counting:
    """Wraps a handler and counts the requests it answered."""

    def __init__(self, handler: Callable[[ServerRequest], ServerResponse]) -> None:
        self.handler = handler
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, event: ServerRequest) -> ServerResponse:
        response = self.handler(event)
        with self._lock:
            self.count += 1
        return response


class CrashLog(logging.Handler):
    """Collects ERROR records of the server logger (a crashed connection)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def crash_log() -> Iterator[CrashLog]:
    handler = CrashLog()
    logger = logging.getLogger("estproto")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]


# ---------------------------------------------------------------------------
# Clients: legitimate and hostile


_KEY = ec.generate_private_key(ec.SECP256R1())


def csr(cn: str = "device") -> bytes:
    return pkcs10.build_csr(_KEY, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))


def client_tls(ca: EmbeddedCA) -> ClientTLSContext:
    return ClientTLSContext(trust_anchors=list(ca.ca_certificates))


async def enroll_once(ca: EmbeddedCA, port: int, cn: str) -> float:
    """One enrollment on a new connection with estproto's client; its duration."""
    start = time.monotonic()
    creds = Credentials(USER, PASSWORD, preemptive_basic=True)
    async with est_trio.ESTClient("127.0.0.1", port, client_tls(ca), credentials=creds,
                                  request_timeout=10, connect_timeout=10) as client:
        cert = await client.simpleenroll(csr(cn))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    return time.monotonic() - start


async def tls_open(ca: EmbeddedCA, port: int) -> tuple[trio.SocketStream, TLSLayer]:
    """A TCP connection with a completed TLS handshake (estproto's TLS layer)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    tls = TLSLayer(client_tls(ca), server_hostname="127.0.0.1")
    with trio.fail_after(10):
        while not tls.handshake_complete:
            out = tls.data_to_send()
            if out:
                await stream.send_all(out)
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            tls.receive_data(data)
        out = tls.data_to_send()
        if out:
            await stream.send_all(out)
    return stream, tls


def client_hello(ca: EmbeddedCA) -> bytes:
    return TLSLayer(client_tls(ca), server_hostname="127.0.0.1").data_to_send()


def request_head(body_length: int = 800) -> bytes:
    return (
        "POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/pkcs10\r\n"
        f"Content-Length: {body_length}\r\nUser-Agent: slowloris\r\n\r\n"
    ).encode()


def reset(stream: trio.SocketStream) -> None:
    """Make the coming close a TCP RST (SO_LINGER on, 0 s)."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclasses.dataclass
class AttackStats:
    connections: int = 0
    closed_by_server: int = 0
    lifetimes: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0


async def _until_closed(stream: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    done.cancel()


async def trickle(
    ca: EmbeddedCA, port: int, end: float, stats: AttackStats, *, after_handshake: bool,
    interval: float,
) -> None:
    """Slowloris: one byte every *interval* s until the server hangs up; then again, until *end*."""
    hello = client_hello(ca)
    while trio.current_time() < end:
        started = trio.current_time()
        try:
            if after_handshake:
                stream, tls = await tls_open(ca, port)
            else:
                stream, tls = await trio.open_tcp_stream("127.0.0.1", port), None
        except (OSError, TLSError, trio.TooSlowError, ConnectionError):
            stats.errors += 1
            await trio.sleep(interval)
            continue
        stats.connections += 1
        payload = request_head() if after_handshake else hello
        closed = False
        async with stream:
            with trio.CancelScope(deadline=end) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_until_closed, stream, nursery.cancel_scope)
                    try:
                        for i in range(len(payload)):
                            if tls is not None:
                                tls.write(payload[i : i + 1])
                                chunk = tls.data_to_send()
                            else:
                                chunk = payload[i : i + 1]
                            await stream.send_all(chunk)
                            await trio.sleep(interval)
                    except (trio.BrokenResourceError, OSError, TLSError):
                        pass
                    await trio.sleep_forever()  # until the server closes (or end)
            closed = not scope.cancelled_caught
        if closed or trio.current_time() < end:
            stats.closed_by_server += 1
            stats.lifetimes.append(trio.current_time() - started)


async def garbage(port: int, end: float, stats: AttackStats, rng: random.Random) -> None:
    """Random bytes (sometimes a TLS record header first), then close; repeat until *end*."""
    while trio.current_time() < end:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                prefix = b"\x16\x03\x01\x02\x00" if rng.random() < 0.5 else b""
                await stream.send_all(prefix + rng.randbytes(rng.randint(1, 4096)))
                with trio.move_on_after(1):
                    await stream.receive_some(65536)
            stats.connections += 1
        except (OSError, trio.BrokenResourceError):
            stats.errors += 1
        await trio.sleep(0.05)


async def resetter(ca: EmbeddedCA, port: int, end: float, stats: AttackStats, rng: random.Random) -> None:
    """Abort handshakes and requests half way with a TCP RST; repeat until *end*."""
    hello = client_hello(ca)
    while trio.current_time() < end:
        try:
            if rng.random() < 0.5:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(hello[: rng.randint(1, len(hello) - 1)])
            else:
                stream, tls = await tls_open(ca, port)
                tls.write(request_head()[: rng.randint(1, 100)])
                await stream.send_all(tls.data_to_send())
            reset(stream)
            await stream.aclose()
            stats.connections += 1
        except (OSError, TLSError, trio.BrokenResourceError, ConnectionError, trio.TooSlowError):
            stats.errors += 1
        await trio.sleep(0.05)


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------------------
# The bar: 150 slowloris connections plus garbage and resets


@pytest.mark.parametrize("kind", ["trio", "asyncio"])
def test_enrollments_succeed_under_slowloris_garbage_and_resets(
    ca: EmbeddedCA, kind: str, crash_log: CrashLog,
) -> None:
    handler = Counting(ca.handler())
    attack_seconds = 9.0
    with ServerThread(kind, handler, server_config(ca), max_connections=400) as srv:
        port = srv.port

        async def main() -> dict[str, Any]:
            await enroll_once(ca, port, "warm-up")  # the scrypt of the first Basic check
            served_before = handler.count
            rss_before = rss_now_mb()
            maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rng = random.Random(6)
            hello_stats, head_stats, junk_stats, reset_stats = (AttackStats() for _ in range(4))
            durations: list[float] = []
            peak_connections = 0
            end = trio.current_time() + attack_seconds
            with trio.fail_after(attack_seconds + 30):
                async with trio.open_nursery() as nursery:
                    half = SLOWLORIS_CONNECTIONS // 2
                    for i in range(half):
                        nursery.start_soon(functools.partial(
                            trickle, ca, port, end, hello_stats, after_handshake=False, interval=0.5))
                    for i in range(SLOWLORIS_CONNECTIONS - half):
                        nursery.start_soon(functools.partial(
                            trickle, ca, port, end, head_stats, after_handshake=True, interval=0.5))
                    for i in range(3):
                        nursery.start_soon(garbage, port, end, junk_stats, random.Random(rng.random()))
                        nursery.start_soon(resetter, ca, port, end, reset_stats,
                                           random.Random(rng.random()))
                    await trio.sleep(1.5)  # let the slowloris connections pile up
                    peak_connections = srv.connection_count
                    for i in range(ENROLLMENTS):
                        durations.append(await enroll_once(ca, port, f"legit-{i}"))
                        peak_connections = max(peak_connections, srv.connection_count)
            return {
                "durations": durations, "served": handler.count - served_before,
                "hello": hello_stats, "head": head_stats, "garbage": junk_stats,
                "reset": reset_stats, "peak_connections": peak_connections,
                "rss_growth": rss_now_mb() - rss_before,
                "maxrss_growth": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - maxrss_before,
            }

        result = trio.run(main)
    durations = result["durations"]
    hello, head = result["hello"], result["head"]
    print(
        f"\n[{kind}] enrollments during the attack: {len(durations)}, "
        f"max {max(durations):.2f} s, mean {sum(durations) / len(durations):.2f} s; "
        f"requests served during the attack: {result['served']}; "
        f"peak server connections {result['peak_connections']}; "
        f"slowloris ClientHello connections {hello.connections} (closed by the server "
        f"after {max(hello.lifetimes, default=0):.1f} s at most), "
        f"slowloris head connections {head.connections} (closed after "
        f"{max(head.lifetimes, default=0):.1f} s at most); garbage clients "
        f"{result['garbage'].connections}, resets {result['reset'].connections}; "
        f"RSS growth {result['rss_growth']:.1f} MB, maxrss growth {result['maxrss_growth']:.1f} MB"
    )
    assert len(durations) == ENROLLMENTS
    assert max(durations) < ENROLLMENT_BUDGET, durations
    assert result["served"] >= ENROLLMENTS
    assert result["peak_connections"] >= SLOWLORIS_CONNECTIONS // 2, "the attack did not land"
    # The deadlines did their work: every trickler the server hung up on was
    # cut near its deadline, not after its (much longer) trickle.
    assert hello.lifetimes and max(hello.lifetimes) < HANDSHAKE_TIMEOUT + 3.0
    assert head.lifetimes and max(head.lifetimes) < IDLE_TIMEOUT + REQUEST_TIMEOUT + 3.0
    assert result["maxrss_growth"] < MEMORY_GROWTH_LIMIT_MB


# ---------------------------------------------------------------------------
# Single attacks, each checked for its answer (stdlib ssl as an independent client)


def ssl_client(ca: EmbeddedCA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(Path(ca.data_dir) / "ca.pem"))
    return ctx


def exchange(ca: EmbeddedCA, port: int, data: bytes, *, timeout: float = 10.0,
             read_all: bool = True) -> bytes:
    """Send *data* over TLS and read until the server closes (or *timeout*)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ssl_client(ca).wrap_socket(raw, server_hostname="127.0.0.1") as s:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the server answered and closed before we finished
            out = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
                    if not read_all and b"\r\n\r\n" in out:
                        break
            except (ConnectionResetError, ssl.SSLError, TimeoutError):
                pass
            return out


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:100]
    return int(response[9:12])


@pytest.fixture(params=["trio", "asyncio"])
def running(request: pytest.FixtureRequest, ca: EmbeddedCA, crash_log: CrashLog) -> Iterator[ServerThread]:
    with ServerThread(request.param, ca.handler(), server_config(ca), max_connections=64) as srv:
        yield srv


def test_oversized_head_gets_431(ca: EmbeddedCA, running: ServerThread) -> None:
    head = b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n"
    response = exchange(ca, running.port, head)
    assert status(response) == 431
    many = b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 500 + b"\r\n"
    assert status(exchange(ca, running.port, many)) == 431


def test_body_beyond_the_limit_gets_413_without_reading_it(ca: EmbeddedCA, running: ServerThread) -> None:
    declared = request_head(body_length=50 * 2**20)  # 50 MiB declared, none sent
    start = time.monotonic()
    assert status(exchange(ca, running.port, declared)) == 413
    assert time.monotonic() - start < REQUEST_TIMEOUT  # refused at once, not at the deadline
    chunked = (
        b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/pkcs10\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"10000\r\n" + b"A" * 0x10000 + b"\r\n") * 20  # 1.25 MiB > 1 MiB
    )
    assert status(exchange(ca, running.port, chunked)) == 413


def test_tls_garbage_and_aborted_handshakes_leave_the_server_serving(
    ca: EmbeddedCA, running: ServerThread,
) -> None:
    rng = random.Random(7)
    hello = client_hello(ca)
    for i in range(30):
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as s:
            if i % 3 == 0:
                s.sendall(rng.randbytes(rng.randint(1, 20_000)))
            elif i % 3 == 1:
                s.sendall(hello[: rng.randint(1, len(hello) - 1)])  # then EOF mid-hello
            else:
                s.sendall(hello[: rng.randint(1, len(hello) - 1)])
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                continue  # RST
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass  # the server closes: alert or plain FIN
            except (ConnectionResetError, TimeoutError):
                pass
    # Garbage beyond max_handshake_bytes in one go is cut off, not buffered.
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as s:
        try:
            s.sendall(b"\x16\x03\x01\xff\xff" + b"\x00" * 200_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
    response = exchange(ca, running.port, b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n\r\n",
                        read_all=False)
    assert status(response) == 200
    wait_for(lambda: running.connection_count == 0, 5)


def test_resets_mid_request(ca: EmbeddedCA, running: ServerThread) -> None:
    body = transfer.encode_base64(csr("reset"))
    for cut in (10, 60, len(request_head(len(body))) + 20):
        raw = socket.create_connection(("127.0.0.1", running.port), timeout=5)
        s = ssl_client(ca).wrap_socket(raw, server_hostname="127.0.0.1")
        s.sendall((request_head(len(body)) + body)[:cut])
        time.sleep(0.05)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST, without close_notify (SSLSocket.close does not send one)
    response = exchange(ca, running.port, b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n\r\n",
                        read_all=False)
    assert status(response) == 200
    wait_for(lambda: running.connection_count == 0, 5)


def test_trickled_head_is_cut_at_the_request_deadline(ca: EmbeddedCA, running: ServerThread) -> None:
    """A byte every 0.2 s keeps the connection busy but not alive: 408 at the deadline."""
    raw = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    with ssl_client(ca).wrap_socket(raw, server_hostname="127.0.0.1") as s:
        head = request_head()
        start = time.monotonic()
        s.settimeout(0.2)
        received = b""
        for i in range(len(head)):
            try:
                s.sendall(head[i : i + 1])
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                break
            try:
                chunk = s.recv(65536)
            except (TimeoutError, socket.timeout):
                continue
            except (ConnectionResetError, ssl.SSLError):
                break
            received += chunk
            if not chunk:
                break
        elapsed = time.monotonic() - start
    assert received.startswith(b"HTTP/1.1 408"), received[:60]
    assert REQUEST_TIMEOUT - 0.5 < elapsed < REQUEST_TIMEOUT + 2.0


@pytest.mark.parametrize("kind", FRAMEWORKS)
def test_idle_connections_beyond_the_cap(ca: EmbeddedCA, crash_log: CrashLog, kind: str) -> None:
    """40 silent connections against a cap of 20: the server never holds more
    than 20, the deadline frees the slots, and a real client gets through."""
    cap = 20
    with ServerThread(kind, ca.handler(), server_config(ca), max_connections=cap) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(2 * cap)]
        try:
            peak = 0
            start = time.monotonic()
            while time.monotonic() - start < 1.0:
                peak = max(peak, srv.connection_count)
                time.sleep(0.05)

            async def legit() -> float:
                return await enroll_once(ca, srv.port, "after-idle")

            took = trio.run(legit)
            peak = max(peak, srv.connection_count)
        finally:
            for s in idle:
                s.close()
        print(f"\npeak connections {peak} (cap {cap}); enrollment behind 40 idle sockets took {took:.2f} s")
        assert peak <= cap
        # Waited at most two rounds of handshake deadlines for a slot.
        assert took < 2 * HANDSHAKE_TIMEOUT + 3


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
