"""Loopback enrollment benchmark: ``estproto serve`` beside a bare server, real sockets and TLS.

What it measures: ``/simpleenroll`` (RFC 7030 4.2.1) answered by

* ``estproto serve``, the server a user runs (the command line, default
  settings: the embedded CA with its SQLite store committing every issued
  certificate before answering, the request log on, Basic and Digest users and
  client certificates accepted), on asyncio (the default) and on trio
  (``--framework trio``), and with ``--workers 2`` when asked (``--workers``);
* the bare server of ``bare_server.py``: the same libraries (asyncio, h11,
  pyOpenSSL memory BIOs, cryptography), the same TLS identity and issuing CA
  key, and nothing else (no store, no log, no EST rules);
* with ``--durable``, also that bare server committing each certificate's
  row on its own to SQLite (``synchronous=FULL``) before answering: what
  durability alone costs a naive server, beside what estproto costs with it
  (the line ``durable_reference``, estproto serve's CPU on its default
  framework / that server's CPU, information only).

Two modes: keep-alive (N enrollments over K concurrent keep-alive TLS
connections) and new connection (each enrollment on its own new TLS
connection: full handshake, no resumption, K at a time).

Reported per server and mode: enrollments per second (wall time, as the load
generator sees it), server CPU per enrollment (user + system time of the
server's processes from ``/proc``, all threads and workers, divided by N) and
peak server memory (``VmHWM``).

The load generator is this process: K plain threads, each with a stdlib
``http.client.HTTPSConnection`` over ``ssl`` (an independent client, not
estproto's), sending pre-built CSRs (N distinct P-256 keys) with HTTP Basic
credentials up front, as curl ``--user`` does. Warm-up enrollments first (they
also pay estproto's one scrypt password check, which it then caches). Every
response must be 200.

Method: all servers run side by side; each round runs every (server, mode)
once, in turn, so a change in machine load hits every side of a ratio alike,
and each keeps its cheapest round (``--rounds``, default 3). Defaults: N=400,
K=4 (a 2-core machine: the server and the generator each get about one
core). ``--quick`` is a tiny run for tests.

The last two lines are machine-readable::

    enroll_per_s keepalive_asyncio=X keepalive_trio=X newconn_asyncio=X newconn_trio=X server_cpu_us=X peak_rss_mb=X
    loopback_ratio keepalive=X.XX newconn=X.XX

``loopback_ratio`` is estproto serve's CPU per enrollment over the bare
server's (on serve's default framework, ``DEFAULT_FRAMEWORK``); ``server_cpu_us`` and
``peak_rss_mb`` are estproto's keep-alive figures (the larger framework).

``--store postgresql://...`` adds ``estproto serve --store URL`` (trio and
asyncio) beside the SQLite ones (password from PGPASSWORD, as for serve),
and, for a database on this machine, the database's own CPU per enrollment
(every process named ``postgres``), which the server CPU does not include.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import re
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

from estproto.cli._serve import DEFAULT_FRAMEWORK

ADAPTERS = ("asyncio", "trio")
USER = "bench"
PASSWORD = "bench-password"
PATH = "/.well-known/est/simpleenroll"

#: Seconds the server process may take to report its port.
STARTUP_TIMEOUT = 30.0

#: Seconds one request may take before the run fails.
REQUEST_TIMEOUT = 30.0


# ---------------------------------------------------------------------------
# Measuring the server process


def _tree(pid: int) -> list[int]:
    """*pid* and its descendants (``serve --workers``: the parent and its workers)."""
    pids = [pid]
    for p in pids:
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return pids


def _cpu_seconds(pid: int) -> float:
    """CPU seconds run so far by *pid*, its threads and its descendants.

    The sum of each live thread's ``/proc/PID/task/TID/schedstat`` (time
    on a CPU, in nanoseconds): ``/proc/PID/stat`` counts in clock ticks
    (10 ms), too coarse for a run of a few hundred enrollments. Threads
    that exit during a run would drop their time; the servers keep theirs
    (trio's thread cache and asyncio's executor keep idle threads).
    """
    return sum(_cpu_seconds_of(p) for p in _tree(pid))


def _database_cpu_seconds() -> float:
    """CPU seconds of every process named ``postgres`` on this machine (a
    local database's server processes), as :func:`_cpu_seconds` counts."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
        except OSError:
            continue
        total += _cpu_seconds_of(int(entry))
    return total


def _cpu_seconds_of(pid: int) -> float:
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def _peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of *pid* and its descendants, MiB (summed)."""
    total = 0.0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0
        except (OSError, StopIteration):
            continue
    return total


@dataclass(frozen=True)
class ServerKind:
    """One server under test: how to start it and which line says its port."""

    name: str
    command: list[str]
    ready: re.Pattern[str]


def server_kinds(data_dir: Path, workers: bool, store: str | None = None,
                 durable: Path | None = None) -> list[ServerKind]:
    serve = [sys.executable, "-m", "estproto", "serve", "--data-dir", str(data_dir),
             "--host", "127.0.0.1", "--port", "0"]
    listening = re.compile(r"listening on https://127\.0\.0\.1:(\d+)/")
    kinds = [
        ServerKind("trio", [*serve, "--framework", "trio"], listening),
        ServerKind("asyncio", [*serve, "--framework", "asyncio"], listening),
    ]
    if store:
        kinds += [
            ServerKind("trio_postgresql", [*serve, "--store", store, "--framework", "trio"],
                       listening),
            ServerKind("asyncio_postgresql", [*serve, "--store", store, "--framework", "asyncio"],
                       listening),
        ]
    if workers:
        kinds.append(ServerKind(f"{DEFAULT_FRAMEWORK}_workers2", [*serve, "--workers", "2"], listening))
    bare = [sys.executable, str(Path(__file__).with_name("bare_server.py")), str(data_dir), USER,
            PASSWORD]
    bare_ready = re.compile(r"port (\d+)")
    kinds.append(ServerKind("bare", bare, bare_ready))
    if durable is not None:
        kinds.append(ServerKind("bare_durable", [*bare, "--durable", str(durable)], bare_ready))
    return kinds


class ServerProcess:
    """A server subprocess: started, asked for its port, stopped."""

    def __init__(self, kind: ServerKind, log: IO[bytes]) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(kind.command, stdout=subprocess.PIPE, stderr=log, text=True,
                                     stdin=subprocess.DEVNULL)
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
            raise RuntimeError(f"{self.kind.name}: the server did not report its port (see its log)")
        return result[0]

    def _port_line(self) -> int:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = self.kind.ready.search(line)
            if match:
                return int(match.group(1))
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
    server: str
    mode: str
    enrollments: int
    seconds: float
    server_cpu: float
    #: CPU of a local PostgreSQL during the run (PostgreSQL-backed kinds only).
    database_cpu: float | None = None

    @property
    def per_second(self) -> float:
        return self.enrollments / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.server_cpu / self.enrollments * 1e6


def measure(server: ServerProcess, gen: LoadGenerator, mode: str, n: int) -> RunResult:
    on_database = server.kind.name.endswith("_postgresql")
    db0 = _database_cpu_seconds() if on_database else 0.0
    cpu0 = _cpu_seconds(server.pid)
    seconds = gen.run(n, keepalive=mode == "keepalive")
    cpu1 = _cpu_seconds(server.pid)
    database = _database_cpu_seconds() - db0 if on_database else None
    return RunResult(server.kind.name, mode, n, seconds, cpu1 - cpu0, database)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", "--enrollments", type=int, default=400, help="enrollments per run")
    parser.add_argument("-k", "--connections", type=int, default=4, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the cheapest is kept)")
    parser.add_argument("--workers", action="store_true", help="also measure serve --workers 2")
    parser.add_argument("--quick", action="store_true", help="tiny run (N=24, K=4, 1 round) for tests")
    parser.add_argument("--durable", action="store_true",
                        help="also measure the bare server with a durable SQLite commit per enrollment")
    parser.add_argument("--store", metavar="URL",
                        help="also measure serve --store URL (postgresql://...; PGPASSWORD in the env)")
    args = parser.parse_args(argv)
    n, k, rounds = (24, 4, 1) if args.quick else (args.enrollments, args.connections, args.rounds)
    if n < 1 or k < 1 or rounds < 1:
        parser.error("N, K and rounds must be at least 1")

    from estproto.ca import EmbeddedCA

    with tempfile.TemporaryDirectory(prefix="bench-loopback-") as tmp:
        data_dir = Path(tmp) / "ca"
        with EmbeddedCA.init(data_dir, hostnames=("127.0.0.1",)) as ca:
            ca.add_user(USER, PASSWORD)
        if args.store:
            with EmbeddedCA.open(data_dir, store_location=args.store) as ca:
                ca.add_user(USER, PASSWORD)
        bodies = _make_bodies(n)
        load = os.getloadavg()
        print(f"# N={n} enrollments per run, K={k} connections, {rounds} round(s), cheapest kept; "
              f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"# crypto floor now (CSR load + verify + P-256 signing, this process): "
              f"{_crypto_floor_us(bodies):.1f} us CPU per enrollment")
        best: dict[tuple[str, str], RunResult] = {}
        servers: list[ServerProcess] = []
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            try:
                durable = Path(tmp) / "bare.db" if args.durable else None
                for kind in server_kinds(data_dir, args.workers, args.store, durable):
                    servers.append(ServerProcess(kind, log))
                gens = {s.kind.name: LoadGenerator(s.port, data_dir / "ca.pem", bodies, k) for s in servers}
                for s in servers:
                    gens[s.kind.name].run(1, keepalive=True)  # pays the one scrypt check
                    gens[s.kind.name].run(2 * k, keepalive=True)  # warm-up
                for _ in range(rounds):
                    for mode in ("keepalive", "newconn"):
                        for s in servers:
                            r = measure(s, gens[s.kind.name], mode, n)
                            key = (r.server, mode)
                            if key not in best or r.cpu_us < best[key].cpu_us:
                                best[key] = r
                rss = {s.kind.name: _peak_rss_mb(s.pid) for s in servers}
            except Exception:
                log.flush()
                sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
                raise
            finally:
                for s in servers:
                    s.stop()
        names = [s.kind.name for s in servers]
        for mode in ("keepalive", "newconn"):
            bare = best[("bare", mode)]
            for name in names:
                r = best[(name, mode)]
                label = {"bare": "bare server", "bare_durable": "bare server, durable"}.get(
                    name, f"estproto serve ({name})")
                database = ("" if r.database_cpu is None else
                            f"  database {r.database_cpu / r.enrollments * 1e6:7.1f} us CPU/enroll")
                print(f"{mode:10s} {label:32s} {r.per_second:8.1f} enroll/s  "
                      f"server {r.cpu_us:7.1f} us CPU/enroll  x{r.cpu_us / bare.cpu_us:5.2f} bare  "
                      f"peak RSS {rss[name]:6.1f} MiB{database}")
        if args.durable:
            durable_ratio = {mode: best[(DEFAULT_FRAMEWORK, mode)].cpu_us
                             / best[("bare_durable", mode)].cpu_us
                             for mode in ("keepalive", "newconn")}
            print(f"durable_reference keepalive={durable_ratio['keepalive']:.2f} "
                  f"newconn={durable_ratio['newconn']:.2f}")
        cpu_us = max(best[(a, "keepalive")].cpu_us for a in ADAPTERS)
        print("# server_cpu_us, peak_rss_mb: estproto serve keep-alive, the larger of the two frameworks")
        print("enroll_per_s "
              + " ".join(f"{mode}_{a}={best[(a, mode)].per_second:.1f}"
                         for mode in ("keepalive", "newconn") for a in ADAPTERS)
              + f" server_cpu_us={cpu_us:.1f} peak_rss_mb={max(rss[a] for a in ADAPTERS):.1f}")
        ratio = {mode: best[(DEFAULT_FRAMEWORK, mode)].cpu_us / best[("bare", mode)].cpu_us
                 for mode in ("keepalive", "newconn")}
        print(f"loopback_ratio keepalive={ratio['keepalive']:.2f} newconn={ratio['newconn']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
