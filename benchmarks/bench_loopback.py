"""Loopback EST enrollment benchmark: real sockets, real TLS, the embedded CA, both adapters.

What it measures: ``/simpleenroll`` (RFC 7030 4.2.1) against an estproto
server running :class:`estproto.ca.EmbeddedCA` (a P-256 CA in a temporary
data directory, its SQLite store with group commit, one HTTP Basic user),
served by :func:`estproto.trio.serve` and by
:func:`estproto.asyncio.start_server` in turn. For each adapter:

* keep-alive: N enrollments over K concurrent keep-alive TLS connections;
* new connection: N enrollments, each on its own new TLS connection (full
  handshake, no session resumption), K at a time.

Reported per run: enrollments per second (wall time of the run, as the load
generator sees it), server CPU per enrollment (user + system time of the
server process from ``/proc/PID/stat``, all threads, divided by N) and peak
server memory (``VmHWM`` from ``/proc/PID/status``: the peak resident set
since the server started).

Processes: the server runs in its own process, started from this script's
internal entry point (``--serve trio|asyncio --data-dir D --port 0``, which
prints ``port N`` once listening and shuts down gracefully on SIGTERM), so
its CPU time and memory are its own. The load generator is this process:
K plain threads, each with a stdlib ``http.client.HTTPSConnection`` over
``ssl`` (an independent client, not estproto's), sending pre-built CSRs (N
distinct P-256 keys, built before timing) with HTTP Basic credentials up
front, as curl ``--user`` does. A few warm-up enrollments per server run
first (they also pay the one scrypt password check; the CA then remembers
the verified credentials, see :mod:`estproto.ca.authority`). Every response
must be 200; any other answer fails the run.

The server's request log (one ``logging`` line per request) is disabled, as
the logger has no handler here; a deployment that logs to a file pays a
few microseconds more per request.

Defaults suit a 2-core machine (N=400, K=8): the server and the generator
each get about one core. ``--quick`` does a tiny run (N=24, K=4) for tests.
Figures depend on the machine and its load (the load average is printed).

The last line is machine-readable::

    enroll_per_s keepalive_asyncio=X keepalive_trio=X newconn_asyncio=X newconn_trio=X server_cpu_us=X peak_rss_mb=X

where ``server_cpu_us`` and ``peak_rss_mb`` come from the keep-alive runs
(the larger of the two adapters), as the comment line above it says.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ADAPTERS = ("asyncio", "trio")
USER = "bench"
PASSWORD = "bench-password"
PATH = "/.well-known/est/simpleenroll"

#: Seconds the server process may take to report its port.
STARTUP_TIMEOUT = 30.0

#: Seconds one request may take before the run fails.
REQUEST_TIMEOUT = 30.0


# ---------------------------------------------------------------------------
# Server process (internal entry point)


def _serve(adapter: str, data_dir: Path, host: str, port: int) -> None:
    """Run the embedded CA on *adapter* until SIGTERM; print ``port N``."""
    from estproto import ServerConfig
    from estproto.ca import EmbeddedCA

    ca = EmbeddedCA.open(data_dir)
    config = ServerConfig(tls=ca.server_tls_context(), est=ca.est_settings())
    handler = ca.handler()
    try:
        if adapter == "trio":
            import trio

            import estproto.trio

            async def run_trio() -> None:
                async with trio.open_nursery() as nursery:
                    server = await nursery.start(estproto.trio.serve, handler, config, host, port)
                    print(f"port {server.port}", flush=True)
                    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for _ in signals:
                            break
                    nursery.cancel_scope.cancel()  # graceful shutdown

            trio.run(run_trio)
        else:
            import asyncio

            import estproto.asyncio

            async def run_asyncio() -> None:
                server = await estproto.asyncio.start_server(handler, config, host, port)
                print(f"port {server.port}", flush=True)
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, stop.set)
                await stop.wait()
                server.close()
                await server.wait_closed()

            asyncio.run(run_asyncio())
    finally:
        ca.close()


# ---------------------------------------------------------------------------
# Measuring the server process


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process *pid* (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")" ending comm: field 3 (state) is index 0, so utime (14)
    # and stime (15) are at indexes 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of process *pid*, MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/PID/status")


class ServerProcess:
    """The server subprocess: started, asked for its port, stopped."""

    def __init__(self, adapter: str, data_dir: Path, log: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", adapter,
             "--data-dir", str(data_dir), "--port", "0"],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
        self.pid = self.proc.pid
        self.port = self._read_port()

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        result: list[int] = []
        reader = threading.Thread(target=lambda: result.append(self._port_line()), daemon=True)
        reader.start()
        reader.join(STARTUP_TIMEOUT)
        if not result or not result[0]:
            self.stop()
            raise RuntimeError("the server did not report its port (see its log above)")
        return result[0]

    def _port_line(self) -> int:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("port "):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---------------------------------------------------------------------------
# Load generator (this process: threads + stdlib ssl/http.client)


def _make_bodies(n: int) -> list[bytes]:
    """N base64 DER CSRs for distinct P-256 keys (built before timing)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    bodies = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-device-{i}")]))
            .sign(key, hashes.SHA256())
        )
        bodies.append(base64.b64encode(csr.public_bytes(serialization.Encoding.DER)) + b"\n")
    return bodies


def _crypto_floor_us(bodies: list[bytes], rounds: int = 100) -> float:
    """CPU microseconds, measured now in this process, of what an enrollment
    cannot avoid: load a CSR, check its signature, sign a certificate with a
    P-256 CA key. Printed beside the figures: on a shared machine it shows
    how busy the CPU was (the figures scale with it)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "floor CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ders = [base64.b64decode(b) for b in bodies[:rounds]]
    started = time.process_time()
    for der in ders:
        csr = x509.load_der_x509_csr(der)
        if not csr.is_signature_valid:
            raise RuntimeError("bad CSR")
        (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(issuer)
         .public_key(csr.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .sign(ca_key, hashes.SHA256()))
    return (time.process_time() - started) / len(ders) * 1e6


class LoadGenerator:
    """K threads sending the pre-built CSRs to one server."""

    def __init__(self, port: int, cafile: Path, bodies: list[bytes], connections: int) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(cafile))
        self.bodies = bodies
        self.connections = connections
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.headers = {
            "Content-Type": "application/pkcs10",
            "Content-Transfer-Encoding": "base64",
            "Authorization": f"Basic {token}",
        }

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                           timeout=REQUEST_TIMEOUT)

    def _enroll(self, conn: http.client.HTTPSConnection, body: bytes) -> None:
        conn.request("POST", PATH, body=body, headers=self.headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200 or not data:
            raise RuntimeError(f"enrollment answered {response.status}: {data[:200]!r}")

    def run(self, n: int, keepalive: bool) -> float:
        """Send *n* enrollments; returns the wall time in seconds.

        Raises:
            RuntimeError: a request failed (first error re-raised).
        """
        lock = threading.Lock()
        next_index = [0]
        errors: list[BaseException] = []

        def take() -> int | None:
            with lock:
                if next_index[0] >= n or errors:
                    return None
                next_index[0] += 1
                return next_index[0] - 1

        def worker() -> None:
            conn = self._connect() if keepalive else None
            try:
                while (i := take()) is not None:
                    body = self.bodies[i % len(self.bodies)]
                    if conn is not None:
                        self._enroll(conn, body)
                    else:
                        fresh = self._connect()
                        try:
                            self._enroll(fresh, body)
                        finally:
                            fresh.close()
            except BaseException as exc:  # reported by run()
                with lock:
                    errors.append(exc)
            finally:
                if conn is not None:
                    conn.close()

        threads = [threading.Thread(target=worker) for _ in range(self.connections)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        if errors:
            raise RuntimeError(f"load generator failed: {errors[0]!r}") from errors[0]
        return elapsed


# ---------------------------------------------------------------------------
# Orchestration


@dataclass(frozen=True)
class RunResult:
    adapter: str
    mode: str
    enrollments: int
    seconds: float
    server_cpu: float
    peak_rss_mb: float

    @property
    def per_second(self) -> float:
        return self.enrollments / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.server_cpu / self.enrollments * 1e6


def bench_adapter(adapter: str, data_dir: Path, bodies: list[bytes], n: int, k: int,
                  log: IO[bytes]) -> list[RunResult]:
    """Both runs (keep-alive first, so the peak RSS read after it is its own)."""
    server = ServerProcess(adapter, data_dir, log)
    results = []
    try:
        gen = LoadGenerator(server.port, data_dir / "ca.pem", bodies, k)
        gen.run(1, keepalive=True)  # pays the one scrypt check
        gen.run(2 * k, keepalive=True)  # warm-up
        for mode, keepalive in (("keepalive", True), ("newconn", False)):
            cpu0 = _cpu_seconds(server.pid)
            seconds = gen.run(n, keepalive=keepalive)
            cpu1 = _cpu_seconds(server.pid)
            results.append(RunResult(adapter, mode, n, seconds, cpu1 - cpu0, _peak_rss_mb(server.pid)))
    finally:
        server.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", "--enrollments", type=int, default=400, help="enrollments per run")
    parser.add_argument("-k", "--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--quick", action="store_true", help="tiny run (N=24, K=4) for tests")
    parser.add_argument("--serve", choices=ADAPTERS, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        if args.data_dir is None:
            parser.error("--serve needs --data-dir")
        _serve(args.serve, args.data_dir, args.host, args.port)
        return 0
    n, k = (24, 4) if args.quick else (args.enrollments, args.connections)
    if n < 1 or k < 1:
        parser.error("N and K must be at least 1")

    from estproto.ca import EmbeddedCA

    with tempfile.TemporaryDirectory(prefix="bench-loopback-") as tmp:
        data_dir = Path(tmp) / "ca"
        with EmbeddedCA.init(data_dir, hostnames=("127.0.0.1",)) as ca:
            ca.add_user(USER, PASSWORD)
        bodies = _make_bodies(n)
        load = os.getloadavg()
        print(f"# N={n} enrollments per run, K={k} connections, {os.cpu_count()} CPUs, "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"# crypto floor now (CSR load + verify + P-256 signing, this process): "
              f"{_crypto_floor_us(bodies):.1f} us CPU per enrollment")
        results: list[RunResult] = []
        with open(Path(tmp) / "server.log", "wb") as log:
            try:
                for adapter in ADAPTERS:
                    results += bench_adapter(adapter, data_dir, bodies, n, k, log)
            except Exception:
                log.flush()
                sys.stderr.write((Path(tmp) / "server.log").read_text(errors="replace")[-4000:])
                raise
        for r in results:
            print(f"{r.adapter:8s} {r.mode:10s} {r.per_second:8.1f} enroll/s  "
                  f"server {r.cpu_us:7.1f} us CPU/enroll  peak RSS {r.peak_rss_mb:6.1f} MiB  "
                  f"({r.enrollments} in {r.seconds:.2f} s)")
        by = {(r.adapter, r.mode): r for r in results}
        keepalive = [by[(a, "keepalive")] for a in ADAPTERS]
        cpu_us = max(r.cpu_us for r in keepalive)
        rss = max(r.peak_rss_mb for r in keepalive)
        print("# server_cpu_us, peak_rss_mb: keep-alive runs, the larger of the two adapters")
        print("enroll_per_s "
              + " ".join(f"{mode}_{a}={by[(a, mode)].per_second:.1f}"
                         for mode in ("keepalive", "newconn") for a in ADAPTERS)
              + f" server_cpu_us={cpu_us:.1f} peak_rss_mb={rss:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
