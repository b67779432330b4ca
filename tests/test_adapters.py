"""The trio and asyncio adapters over real loopback sockets.

One suite, parametrised over both frameworks: each test body is written once
against a small per-framework kit (run, server, sleep, gather, timeouts,
threads) and runs under ``trio.run`` and ``asyncio.run`` (no pytest plugin).
Everything talks real TLS over 127.0.0.1 with real certificates; a stdlib
``ssl`` + ``http.client`` client checks the servers independently of our
client. Every test stops what it starts (servers, sockets, threads) and runs
under a global deadline so that a hang fails instead of blocking.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import functools
import http.client
import ipaddress
import logging
import os
import resource
import socket
import ssl
import struct
import threading
import time
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

import estproto.asyncio as est_asyncio
import estproto.trio as est_trio
from estproto import (
    AuthenticationRequired,
    CACertsRequest,
    CACertsResponse,
    CertificateResponse,
    ClientTLSContext,
    CSRAttrsRequest,
    CSRAttrsResponse,
    ErrorReceived,
    ESTServerSettings,
    FullCMCRequest,
    FullCMCResponse,
    GetCACerts,
    HTTPLimits,
    RawRequest,
    RawResponseReceived,
    RetryLater,
    ServerConfig,
    ServerKeygenRequest,
    ServerKeygenResponse,
    ServerRequest,
    ServerResponse,
    ServerTLSContext,
    SimpleEnrollRequest,
    SimpleReenrollRequest,
)
from estproto._adapter_common import ESTAuthenticationError, ESTError, ESTPendingError
from estproto.auth import BasicCredentials, PoPPolicy, basic_challenge, verify_basic
from estproto.client import Credentials
from estproto.codecs import cmc, pkcs10
from estproto.codecs.csrattrs import CsrAttributes, RequiredOID

from pki import issue, make_ca, make_key, name, pem

T = TypeVar("T")

PASSWORD = "s3cret-Pa55word"
CHALLENGE_PASSWORD_OID = "1.2.840.113549.1.9.7"

# One PKI for the whole module (key generation is the slow part).
CA_CERT, CA_KEY = make_ca("Adapter Test CA")
SERVER_KEY = make_key("p256")
SERVER_CERT = (
    x509.CertificateBuilder()
    .subject_name(name("est-server"))
    .issuer_name(CA_CERT.subject)
    .public_key(SERVER_KEY.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
    .not_valid_after(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30))
    .add_extension(
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
    )
    .sign(CA_KEY, hashes.SHA256())  # type: ignore[arg-type]
)
SERVER_TLS = ServerTLSContext([SERVER_CERT], SERVER_KEY, client_trust_anchors=[CA_CERT])
CLIENT_TLS = ClientTLSContext(trust_anchors=[CA_CERT])
DEVICE_KEYS = [make_key("p256") for _ in range(20)]
CREDS = Credentials("alice", PASSWORD)

#: No test may run longer than this (seconds): a hang fails the test.
TEST_DEADLINE = 30.0


def config(**kwargs: Any) -> ServerConfig:
    return ServerConfig(tls=SERVER_TLS, **kwargs)


# ---------------------------------------------------------------------------
# The test CA handler


class TestCA:
    """A small EST application: Basic auth (or a verified client certificate)
    for everything but cacerts/csrattrs; issues with tests/pki.issue."""

    __test__ = False  # not a pytest class

    def __init__(self, *, pending_first: bool = False, require_pop: bool = False) -> None:
        self.pending_first = pending_first
        self.require_pop = require_pop
        self.peers: list[str | None] = []
        self.pending_seen: set[bytes] = set()
        self.lock = threading.Lock()

    def __call__(self, event: ServerRequest) -> ServerResponse:
        with self.lock:
            self.peers.append(event.facts.peer)
        if event.label == "boom":
            raise RuntimeError("handler exploded on purpose")
        if isinstance(event, CACertsRequest):
            return CACertsResponse((CA_CERT,))
        if isinstance(event, CSRAttrsRequest):
            return CSRAttrsResponse(CsrAttributes((RequiredOID(CHALLENGE_PASSWORD_OID),)))
        creds = event.credentials
        password_ok = isinstance(creds, BasicCredentials) and verify_basic(creds, "alice", PASSWORD)
        if not (password_ok or event.facts.client_certificate_verified):
            return AuthenticationRequired((basic_challenge("est"),))
        if isinstance(event, (SimpleEnrollRequest, SimpleReenrollRequest)):
            if self.require_pop:
                assert event.pop_linked
            if self.pending_first:
                with self.lock:
                    first = event.csr.public_key_der not in self.pending_seen
                    self.pending_seen.add(event.csr.public_key_der)
                if first:
                    return RetryLater(1, "waiting for approval")
            cn = event.csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
            return CertificateResponse(issue(CA_CERT, CA_KEY, event.csr.public_key, str(cn)))
        if isinstance(event, ServerKeygenRequest):
            key = make_key("p256")
            return ServerKeygenResponse(issue(CA_CERT, CA_KEY, key.public_key(), "keygen"), private_key=key)
        if isinstance(event, FullCMCRequest):
            tagged = event.request.requests[0]
            csr = pkcs10.decode_csr(tagged.csr_der)
            cert = issue(CA_CERT, CA_KEY, csr.public_key, "cmc")
            return FullCMCResponse(
                cmc.build_full_pki_response_success([cert], body_part_ids=(tagged.body_part_id,))
            )
        raise AssertionError(f"unexpected {event!r}")


# ---------------------------------------------------------------------------
# Per-framework kits


class TrioKit:
    name = "trio"
    mod: Any = est_trio

    def run(self, fn: Callable[[], Awaitable[None]]) -> None:
        async def main() -> None:
            with trio.fail_after(TEST_DEADLINE):
                await fn()

        trio.run(main)

    @contextlib.asynccontextmanager
    async def server(self, handler: Any, cfg: ServerConfig, **kwargs: Any) -> AsyncIterator[Any]:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(functools.partial(est_trio.serve, handler, cfg, **kwargs))
            try:
                yield server
            finally:
                server.close()

    @contextlib.asynccontextmanager
    async def cancellable_serve(self, handler: Any, cfg: ServerConfig) -> AsyncIterator[tuple[Any, Callable[[], None]]]:
        """serve() in the background; yields (server, cancel)."""
        scope = trio.CancelScope()

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with scope:  # cancelling it cancels serve() alone, not our body
                await est_trio.serve(handler, cfg, task_status=task_status)

        async with trio.open_nursery() as nursery:
            server = await nursery.start(run)
            try:
                yield server, scope.cancel
            finally:
                scope.cancel()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def gather(self, *fns: Callable[[], Awaitable[T]]) -> list[T]:
        results: list[Any] = [None] * len(fns)

        async def one(i: int, fn: Callable[[], Awaitable[T]]) -> None:
            results[i] = await fn()

        async with trio.open_nursery() as nursery:
            for i, fn in enumerate(fns):
                nursery.start_soon(one, i, fn)
        return results

    async def wait_for(self, fn: Callable[[], Awaitable[T]], seconds: float) -> T:
        try:
            with trio.fail_after(seconds):
                return await fn()
        except trio.TooSlowError:
            raise TimeoutError from None

    async def to_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args)

    def clock(self) -> float:
        return trio.current_time()


class AsyncioKit:
    name = "asyncio"
    mod: Any = est_asyncio

    def run(self, fn: Callable[[], Awaitable[None]]) -> None:
        asyncio.run(asyncio.wait_for(fn(), TEST_DEADLINE))  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def server(self, handler: Any, cfg: ServerConfig, **kwargs: Any) -> AsyncIterator[Any]:
        server = await est_asyncio.start_server(handler, cfg, **kwargs)
        try:
            yield server
        finally:
            server.close()
            await server.wait_closed()

    @contextlib.asynccontextmanager
    async def cancellable_serve(self, handler: Any, cfg: ServerConfig) -> AsyncIterator[tuple[Any, Callable[[], None]]]:
        """serve() in the background; yields (server, cancel)."""
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(est_asyncio.serve(handler, cfg, ready=ready.set_result))
        server = await ready
        try:
            yield server, task.cancel
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def gather(self, *fns: Callable[[], Awaitable[T]]) -> list[T]:
        return list(await asyncio.gather(*(fn() for fn in fns)))

    async def wait_for(self, fn: Callable[[], Awaitable[T]], seconds: float) -> T:
        try:
            return await asyncio.wait_for(fn(), seconds)  # type: ignore[arg-type]
        except asyncio.TimeoutError:
            raise TimeoutError from None

    async def to_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def clock(self) -> float:
        return asyncio.get_running_loop().time()


@pytest.fixture(params=["trio", "asyncio"])
def kit(request: pytest.FixtureRequest) -> Any:
    return TrioKit() if request.param == "trio" else AsyncioKit()


def client(kit: Any, port: int, **kwargs: Any) -> Any:
    kwargs.setdefault("credentials", CREDS)
    return kit.mod.ESTClient("127.0.0.1", port, CLIENT_TLS, **kwargs)


def csr_for(key: Any, cn: str) -> bytes:
    return pkcs10.build_csr(key, name(cn))


def public_der(obj: Any) -> bytes:
    return obj.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ---------------------------------------------------------------------------
# Tests


def test_all_six_operations(kit: Any) -> None:
    ca = TestCA()
    key = DEVICE_KEYS[0]

    async def main() -> None:
        async with kit.server(ca, config()) as server:
            async with client(kit, server.port) as c:
                assert await c.cacerts() == (CA_CERT,)
                attrs = await c.csrattrs()
                assert attrs is not None and attrs.required_oids == (CHALLENGE_PASSWORD_OID,)
                cert = await c.simpleenroll(csr_for(key, "dev-0"))
                assert public_der(cert) == public_der(key)
                keygen = await c.serverkeygen(csr_for(key, "keygen"))
                assert keygen.private_key is not None
                assert public_der(keygen.certificate) == public_der(keygen.private_key)
                full = await c.fullcmc(cmc.build_full_pki_request(csr_for(key, "cmc"), key))
                assert full.response.status is cmc.CMCStatus.SUCCESS
                assert any(public_der(x) == public_der(key) for x in full.response.certificates)
                linked = await c.simpleenroll_linked(key, name("dev-linked"))
                assert public_der(linked) == public_der(key)
            # simplereenroll: authenticated by the certificate being renewed
            # (RFC 7030 4.2.2), with the same subject.
            renew_tls = ClientTLSContext(
                trust_anchors=[CA_CERT], client_certificate_chain=[cert], client_private_key=key
            )
            async with kit.mod.ESTClient("127.0.0.1", server.port, renew_tls) as c2:
                renewed = await c2.simplereenroll(csr_for(key, "dev-0"))
                assert renewed.subject == cert.subject and renewed.serial_number != cert.serial_number
                relinked = await c2.simplereenroll_linked(key, name("dev-0"))
                assert relinked.subject == cert.subject

    kit.run(main)


def test_many_concurrent_clients(kit: Any) -> None:
    ca = TestCA()

    async def main() -> None:
        async with kit.server(ca, config()) as server:

            async def enroll(i: int) -> x509.Certificate:
                async with client(kit, server.port) as c:
                    return await c.simpleenroll(csr_for(DEVICE_KEYS[i], f"dev-{i}"))

            certs = await kit.gather(*(functools.partial(enroll, i) for i in range(20)))
            for i, cert in enumerate(certs):
                assert public_der(cert) == public_der(DEVICE_KEYS[i])
        assert len(set(ca.peers)) == 20

    kit.run(main)


def test_keepalive_reuses_one_connection(kit: Any) -> None:
    ca = TestCA()

    async def main() -> None:
        async with kit.server(ca, config()) as server:
            async with client(kit, server.port) as c:
                await c.cacerts()
                await c.csrattrs()
                await c.simpleenroll(csr_for(DEVICE_KEYS[1], "a"))  # 401, answered in place
                await c.simpleenroll(csr_for(DEVICE_KEYS[2], "b"))
                assert c.connections_opened == 1
        assert len(ca.peers) == 6 and len(set(ca.peers)) == 1

    kit.run(main)


def test_retry_after_then_success(kit: Any) -> None:
    ca = TestCA(pending_first=True)

    async def main() -> None:
        async with kit.server(ca, config()) as server:
            async with client(kit, server.port) as c:
                started = time.monotonic()
                cert = await c.simpleenroll(csr_for(DEVICE_KEYS[3], "pending"))
                assert time.monotonic() - started >= 1.0  # waited Retry-After: 1
                assert public_der(cert) == public_der(DEVICE_KEYS[3])
            # No retries allowed, or a Retry-After longer than we accept: give up.
            async with client(kit, server.port, max_retries=0) as c:
                with pytest.raises(ESTPendingError) as info:
                    await c.simpleenroll(csr_for(DEVICE_KEYS[4], "pending-2"))
                assert info.value.status == 202 and info.value.pending.retry_after == 1
            async with client(kit, server.port, max_retry_wait=0.5) as c:
                started = time.monotonic()
                with pytest.raises(ESTPendingError):
                    await c.simpleenroll(csr_for(DEVICE_KEYS[5], "pending-3"))
                assert time.monotonic() - started < 1.0
                # The raw hook returns the event instead of raising.
                result = await c.request(GetCACerts(label="no/such/label/at/all"))
                assert isinstance(result, ErrorReceived) and result.status == 404

    kit.run(main)


def test_reconnect_after_connection_close(kit: Any) -> None:
    """The server closes after every response: the client reconnects (with
    session resumption), answers a 401 on a new connection, and rebuilds a
    PoP-linked CSR for the connection that carries it (RFC 7030 3.5)."""
    ca = TestCA(require_pop=True)
    cfg = config(
        http=HTTPLimits(max_requests_per_connection=1),
        est=ESTServerSettings(pop_policy=PoPPolicy.REQUIRE),
    )

    async def main() -> None:
        async with kit.server(ca, cfg) as server:
            async with client(kit, server.port) as c:
                assert await c.cacerts() == (CA_CERT,)
                assert await c.cacerts() == (CA_CERT,)
                cert = await c.simpleenroll_linked(DEVICE_KEYS[6], name("linked"))
                assert public_der(cert) == public_der(DEVICE_KEYS[6])
                # cacerts, cacerts, enroll -> 401 + close, enroll again
                assert c.connections_opened == 4
        assert len(ca.peers) == 4 and len(set(ca.peers)) == 4

    kit.run(main)


def test_idle_timeout_then_transparent_reconnect(kit: Any) -> None:
    ca = TestCA()

    async def main() -> None:
        async with kit.server(ca, config(idle_timeout=0.3)) as server:
            async with client(kit, server.port) as c:
                await c.cacerts()
                await kit.sleep(0.8)  # the server closes the idle connection
                await c.cacerts()
                assert c.connections_opened == 2
        assert len(set(ca.peers)) == 2

    kit.run(main)


def _send_garbage(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
        return received


def _reset_mid_handshake(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a truncated ClientHello
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST


def test_garbage_does_not_disturb_good_client(kit: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="estproto.server")
    ca = TestCA()

    async def main() -> None:
        async with kit.server(ca, config()) as server:

            async def good() -> int:
                async with client(kit, server.port) as c:
                    for _ in range(5):
                        assert await c.cacerts() == (CA_CERT,)
                        await kit.sleep(0.02)
                    return c.connections_opened  # type: ignore[no-any-return]

            async def bad() -> None:
                for _ in range(3):
                    await kit.to_thread(_send_garbage, server.port)  # the server closes it
                    await kit.to_thread(_reset_mid_handshake, server.port)

            opened, _ = await kit.gather(good, bad)
            assert opened == 1
            # ... and the server still serves new clients.
            async with client(kit, server.port) as c:
                assert await c.cacerts() == (CA_CERT,)

    kit.run(main)
    assert any("terminated" in r.getMessage() for r in caplog.records)


def test_graceful_shutdown_finishes_in_flight_request(kit: Any) -> None:
    entered: list[bool] = []
    inner = TestCA()

    async def slow(event: ServerRequest) -> ServerResponse:
        entered.append(True)
        await kit.sleep(0.5)
        return inner(event)

    async def main() -> None:
        async with kit.server(slow, config()) as server:
            port = server.port
            async with client(kit, port) as idle:
                await idle.cacerts()  # an idle keep-alive connection

                async def in_flight() -> x509.Certificate:
                    async with client(kit, port, credentials=Credentials("alice", PASSWORD, preemptive_basic=True)) as c:
                        return await c.simpleenroll(csr_for(DEVICE_KEYS[7], "in-flight"))

                async def shut_down() -> None:
                    while len(entered) < 2:
                        await kit.sleep(0.01)
                    started = kit.clock()
                    server.close()
                    await server.wait_closed()
                    # Waited for the request, not for the idle connection.
                    assert 0.2 < kit.clock() - started < 3.0

                cert, _ = await kit.gather(in_flight, shut_down)
                assert public_der(cert) == public_der(DEVICE_KEYS[7])
                # The listener is gone: new connections are refused.
                with pytest.raises(OSError):
                    await kit.to_thread(socket.create_connection, ("127.0.0.1", port), 2)

    kit.run(main)


def test_cancelling_serve_is_a_graceful_shutdown(kit: Any) -> None:
    entered: list[bool] = []
    inner = TestCA()

    async def slow(event: ServerRequest) -> ServerResponse:
        entered.append(True)
        await kit.sleep(0.4)
        return inner(event)

    async def main() -> None:
        done: list[x509.Certificate] = []

        async def in_flight(port: int) -> None:
            async with client(kit, port, credentials=Credentials("alice", PASSWORD, preemptive_basic=True)) as c:
                done.append(await c.simpleenroll(csr_for(DEVICE_KEYS[10], "cancelled-serve")))

        async def cancel_when_busy(cancel: Callable[[], None]) -> None:
            while not entered:
                await kit.sleep(0.01)
            cancel()

        async with kit.cancellable_serve(slow, config()) as (server, cancel):
            await kit.gather(functools.partial(in_flight, server.port),
                             functools.partial(cancel_when_busy, cancel))
        assert len(done) == 1 and public_der(done[0]) == public_der(DEVICE_KEYS[10])

    kit.run(main)


def test_forced_shutdown_and_client_timeout(kit: Any) -> None:
    release = threading.Event()

    def stuck(event: ServerRequest) -> ServerResponse:
        release.wait(10)  # a blocking handler in a worker thread
        return CACertsResponse((CA_CERT,))

    async def main() -> None:
        async with kit.server(stuck, config(), shutdown_timeout=0.3) as server:
            async with client(kit, server.port, request_timeout=0.5) as c:
                started = kit.clock()
                with pytest.raises(TimeoutError):
                    await c.cacerts()
                assert kit.clock() - started < 3.0
            started = kit.clock()
            server.close()
            await server.wait_closed()  # does not wait for the stuck handler
            assert kit.clock() - started < 3.0
        release.set()

    try:
        kit.run(main)
    finally:
        release.set()


def test_handler_exception_is_500_and_server_survives(kit: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="estproto.server")
    ca = TestCA()

    async def main() -> None:
        async with kit.server(ca, config()) as server:
            async with client(kit, server.port, label="boom") as c:
                with pytest.raises(ESTError) as info:
                    await c.cacerts()
                assert info.value.status == 500 and "internal error" in info.value.reason
            async with client(kit, server.port) as c:
                assert await c.cacerts() == (CA_CERT,)

    kit.run(main)
    failures = [r for r in caplog.records if r.exc_info and "handler failed" in r.getMessage()]
    assert failures and "exploded" in str(failures[0].exc_info[1])  # type: ignore[index]


def test_wrong_password_raises_authentication_error(kit: Any) -> None:
    ca = TestCA()

    async def main() -> None:
        async with kit.server(ca, config()) as server:
            async with client(kit, server.port, credentials=Credentials("alice", "wrong")) as c:
                with pytest.raises(ESTAuthenticationError) as info:
                    await c.simpleenroll(csr_for(DEVICE_KEYS[8], "x"))
                assert info.value.status == 401
            async with client(kit, server.port, credentials=None) as c:
                with pytest.raises(ESTAuthenticationError):
                    await c.simpleenroll(csr_for(DEVICE_KEYS[8], "x"))

    kit.run(main)


def test_max_connections_pauses_accepting(kit: Any) -> None:
    ca = TestCA()

    async def main() -> None:
        async with kit.server(ca, config(), max_connections=2) as server:
            held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
            try:
                await kit.sleep(0.2)
                assert server.connection_count == 2

                async def cacerts() -> Any:
                    async with client(kit, server.port) as c:
                        return await c.cacerts()

                with pytest.raises(TimeoutError):  # not served while at the cap
                    await kit.wait_for(cacerts, 0.7)
                held.pop().close()  # one slot frees up
                assert await kit.wait_for(cacerts, 5.0) == (CA_CERT,)
            finally:
                for sock in held:
                    sock.close()

    kit.run(main)


def test_accept_failure_pauses_then_recovers(kit: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Out of file descriptors, accept fails (EMFILE) while a client waits:
    the server logs it, retries after a pause instead of spinning on the
    still-readable listener, and serves again once descriptors are back."""
    caplog.set_level(logging.WARNING, logger="estproto.server")

    async def main() -> None:
        async with kit.server(TestCA(), config()) as server:
            waiting = socket.create_connection(("127.0.0.1", server.port))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            lowest_free = os.dup(0)
            os.close(lowest_free)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor
            try:
                await kit.sleep(0.25)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            waiting.close()
            failures = [r for r in caplog.records if "accept failed" in r.getMessage()]
            # One per retry pause (0.1 s); a spinning accept would log thousands.
            assert 1 <= len(failures) <= 5, len(failures)

            async def cacerts() -> Any:
                async with client(kit, server.port) as c:
                    return await c.cacerts()

            assert await kit.wait_for(cacerts, 5.0) == (CA_CERT,)

    kit.run(main)


def test_serves_on_a_callers_blocking_socket(kit: Any) -> None:
    """A listening socket handed in as created (blocking, as
    socket.create_server makes it) is served like our own: an accept that
    waited for the next client would stall every connection."""

    listener = socket.create_server(("127.0.0.1", 0))
    assert listener.getblocking()
    port = listener.getsockname()[1]
    finished = threading.Event()
    stalled = []

    def watchdog() -> None:
        # A stalled loop cannot time itself out: make the socket what it
        # should have been and connect once more to free the waiting
        # accept, so the test fails instead of hanging.
        if not finished.wait(10.0):
            stalled.append(True)
            listener.setblocking(False)
            socket.create_connection(("127.0.0.1", port)).close()

    async def main() -> None:
        async with kit.server(TestCA(), config(), sockets=[listener]) as server:
            async def cacerts() -> Any:
                async with client(kit, server.port) as c:
                    return await c.cacerts()

            for _ in range(2):
                assert await kit.wait_for(cacerts, 5.0) == (CA_CERT,)
        finished.set()

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    try:
        kit.run(main)
    finally:
        finished.set()
        guard.join()
        listener.close()
    assert not stalled, "the server's loop waited in accept"


def test_asyncio_server_connections_have_nodelay() -> None:
    """The asyncio adapter leaves TCP_NODELAY to asyncio, which sets it on
    every TCP transport; this fails if that ever stops."""

    async def main() -> None:
        async with AsyncioKit().server(TestCA(), config()) as server:
            held = socket.create_connection(("127.0.0.1", server.port))
            try:
                for _ in range(100):
                    records = [r for r in server._tasks.values() if r is not None]
                    if records:
                        break
                    await asyncio.sleep(0.01)
                sock = records[0].stream._transport.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            finally:
                held.close()

    AsyncioKit().run(main)


def test_handshake_timeout_closes_silent_connection(kit: Any) -> None:
    def silent(port: int) -> float:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert sock.recv(1024) == b""  # closed by the server
        return time.monotonic() - started

    async def main() -> None:
        async with kit.server(TestCA(), config(handshake_timeout=0.3)) as server:
            assert await kit.to_thread(silent, server.port) < 3.0

    kit.run(main)


def test_request_log_lines(kit: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="estproto.server")
    ca = TestCA()

    async def main() -> None:
        async with kit.server(ca, config()) as server:
            async with client(kit, server.port, label="ops") as c:
                await c.cacerts()
                await c.simpleenroll(csr_for(DEVICE_KEYS[9], "logged"))
                await c.request(GetCACerts(label="a/b/c"))  # rejected by the EST layer

    kit.run(main)
    lines = [r.getMessage() for r in caplog.records if r.name == "estproto.server"]
    assert any(line.startswith("GET /.well-known/est/ops/cacerts 200 ") and "127.0.0.1:" in line
               for line in lines), lines
    assert any(line.startswith("POST /.well-known/est/ops/simpleenroll 401 ") for line in lines)
    assert any(line.startswith("POST /.well-known/est/ops/simpleenroll 200 ") for line in lines)
    assert any(" 404 " in line and "a/b/c" in line for line in lines)
    assert all("ms " in line for line in lines if " 200 " in line)
    encoded = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert PASSWORD not in text and encoded not in text


def _refused_then_keep_sending(port: int) -> tuple[bytes, int]:
    """Announce a body over the limit, read the whole answer (up to the
    server's close), then go on sending for a while, as a client still
    uploading does. Returns the answer and how many chunks went through
    before the connection was reset (all of them while the server lingers)."""
    context = ssl.create_default_context(cadata=pem(CA_CERT).decode())
    head = (b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/pkcs10\r\nContent-Length: 1048576\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(head)
            answer = b""
            while chunk := tls.recv(4096):  # b"" at the server's close_notify
                answer += chunk
            # The rest of the "upload" on the TCP connection itself: the
            # server has half-closed; bytes it no longer reads would make
            # its kernel answer with a reset.
            with socket.socket(fileno=os.dup(tls.fileno())) as same:
                sent = 0
                try:
                    for _ in range(20):
                        same.sendall(b"A" * 8192)
                        sent += 1
                        time.sleep(0.01)
                except OSError:
                    pass
            return answer, sent


def test_refused_upload_lingers_before_closing(kit: Any) -> None:
    # The server answers 413 as soon as the head announces too much, while
    # the client may still be sending. RFC 9112 9.6: closing at once makes
    # the kernel reset the connection, which can destroy the 413 before the
    # client reads it; the server half-closes and drains for a while instead.
    async def main() -> None:
        cfg = config(http=HTTPLimits(max_body_size=4096))
        async with kit.server(TestCA(), cfg) as server:
            answer, sent = await kit.to_thread(_refused_then_keep_sending, server.port)
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
            assert sent == 20
            async with client(kit, server.port) as c:  # and it still serves
                assert await c.cacerts() == (CA_CERT,)

    kit.run(main)


class _ImpatientServer:
    """A TLS server (stdlib ssl) that answers 413 to the head alone and
    resets the connection at once, without reading the body: what a server
    that does not linger does to a client still uploading."""

    def __init__(self, tmp: Any) -> None:
        (tmp / "cert.pem").write_bytes(pem(SERVER_CERT))
        (tmp / "key.pem").write_bytes(SERVER_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(tmp / "cert.pem"), str(tmp / "key.pem"))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve_one, daemon=True)
        self.thread.start()

    def _serve_one(self) -> None:
        raw, _ = self.listener.accept()
        with self.context.wrap_socket(raw, server_side=True) as tls:
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(4096)
            tls.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\n"
                        b"Content-Length: 9\r\nConnection: close\r\n\r\ntoo large")
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


def test_client_reads_an_answer_that_came_before_its_write_failed(kit: Any, tmp_path: Any) -> None:
    # RFC 9110 15.5.14 lets a server answer 413 and close while the body is
    # still coming; the client must report that answer, not a reset.
    server = _ImpatientServer(tmp_path)

    async def main() -> None:
        async with client(kit, server.port) as c:
            result = await c.request(RawRequest(
                method="POST", target="/.well-known/est/simpleenroll", body=b"A" * (8 << 20),
                extra_headers=(("Content-Type", "application/pkcs10"),)))
            assert isinstance(result, RawResponseReceived)
            assert result.status == 413 and result.body == b"too large"

    try:
        kit.run(main)
    finally:
        server.close()


def _stdlib_get_cacerts(port: int) -> tuple[int, str, bytes]:
    context = ssl.create_default_context(cadata=pem(CA_CERT).decode())
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        conn.request("GET", "/.well-known/est/cacerts")
        response = conn.getresponse()
        body = response.read()
        # keep-alive: a second request on the same connection
        conn.request("GET", "/.well-known/est/cacerts")
        second = conn.getresponse()
        second.read()
        assert second.status == 200
        return response.status, response.getheader("Content-Type") or "", body
    finally:
        conn.close()


def test_stdlib_ssl_http_client(kit: Any) -> None:
    async def main() -> None:
        async with kit.server(TestCA(), config()) as server:
            status, content_type, body = await kit.to_thread(_stdlib_get_cacerts, server.port)
            assert status == 200
            assert content_type.startswith("application/pkcs7-mime")
            certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
            assert certs == [CA_CERT]

    kit.run(main)
