"""``estproto serve``: an EST server (RFC 7030) over TLS on the embedded CA.

What it does, in order:

1. ``EmbeddedCA.init`` on the data directory (idempotent: the first start
   creates the CA, later starts load it and only widen the TLS
   certificate's names when a new ``--hostname`` appears).
2. Builds the server configuration from the flags: authentication methods
   (RFC 7030 3.2.3: HTTP Basic and Digest users, TLS client certificates,
   or both), proof-of-possession policy (3.5), manual approval with
   Retry-After (4.2.3), labels (3.2.2), TLS versions (RFC 8996: 1.2 and 1.3).
3. Serves with the asyncio adapter (or trio with ``--framework trio``; see
   :data:`DEFAULT_FRAMEWORK`),
   prints exactly one line ``listening on https://HOST:PORT/.well-known/est``
   on stdout once it accepts connections, logs one line per request on
   stderr (method, path, status, duration, peer: never credentials), and
   shuts down gracefully on SIGINT or SIGTERM: stop accepting, answer the
   requests in flight (bounded by the adapters' ``SHUTDOWN_TIMEOUT``), then
   close the store so every group commit is on disk.

``--workers N`` runs N server processes, gunicorn/uvicorn style, because one
Python process uses one core. Every worker binds its own listening socket
with ``SO_REUSEPORT`` on the same port, and the kernel spreads incoming
connections over them; the store is shared (SQLite WAL is safe across
processes; ``EmbeddedCA.init`` takes a file lock). The parent initialises
the CA once, reserves the port (a bound, non-listening ``SO_REUSEPORT``
socket, so port 0 works: the kernel picks, the workers join), starts the
workers, waits until each has printed its listening line, prints its own
once, restarts a worker that dies, and forwards SIGTERM/SIGINT for a
graceful stop.

SO_REUSEPORT would let a second ``serve --workers`` by the same user join
the first one's port (clients would get either CA at random), so the parent
holds an exclusive lock per port (:func:`_lock_port`) for as long as it runs,
and a second one is refused; a single-process ``serve`` binds without
SO_REUSEPORT and gets "address in use" from the kernel either way.

Each worker hands its SO_REUSEPORT sockets to the adapter's public ``serve``
(``sockets=``).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

from .. import auth
from .._config import ServerConfig
from .._adapter_common import PublishedFile
from ..ca import CA_FILES, CAError, CASettings, EmbeddedCA, Profile
from ..ca.crl import CRL_MEDIA_TYPE, check_crl_url
from ..ca.users import AUTH_SCHEMES, DEFAULT_AUTH_SCHEMES
from ._ca import STORE_HELP, init_ca, store_location
from ._serve_config import SECTION, Setting, apply_config_file
from ._common import (
    CLIError, ExitCode, port_number, positive_count, setup_logging, validity_days, whole_seconds,
)

__all__ = ["add_parser", "listening_line", "build_config", "ca_settings", "with_config_file", "SETTINGS"]

_log = logging.getLogger("estproto.serve")

#: serve's flags, as ``--config`` files may set them (filled by add_parser).
SETTINGS: list[Setting] = []

#: ``--framework`` by default. Both adapters serve the same core and pass the
#: same tests, real peers included; asyncio's costs less server CPU per
#: enrollment (benchmarks/bench_loopback.py's load, the two servers in paired
#: rounds): cheaper in 26 of 30 rounds, by 3-7% at 4 clients (keep-alive or a
#: new TLS connection each), 4% at 16 keep-alive, 12% at 16 with new
#: connections, neutral with one client; in 9 of 10 with --workers 2.
DEFAULT_FRAMEWORK = "asyncio"

#: Seconds a worker may take from spawn to its listening line (imports, CA
#: load; a cold start on a loaded 2-core machine takes about 2 s).
WORKER_START_TIMEOUT = 60.0

#: Seconds the parent waits for workers after forwarding a stop signal: the
#: adapters' graceful shutdown (10 s) plus closing the store.
WORKER_STOP_TIMEOUT = 20.0

#: Worker restarts allowed per minute before the parent gives up: a worker
#: that dies at once every time (disk full, broken files) must not spin.
MAX_RESTARTS_PER_MINUTE = 5

#: Seconds between the parent's checks on its workers.
_SUPERVISE_INTERVAL = 0.2

_PR_SET_PDEATHSIG = 1


def listening_line(host: str, port: int) -> str:
    """The one line ``serve`` prints when ready (the scripting contract)."""
    shown = f"[{host}]" if ":" in host else host
    return f"listening on https://{shown}:{port}/.well-known/est"


def serve_hostnames(args: argparse.Namespace) -> list[str] | None:
    """Names the TLS certificate must cover, or None to keep the existing CA's.

    ``--hostname`` values when given. Otherwise, for a new CA: the listening
    address (unless a wildcard), 127.0.0.1 and localhost; for an existing
    CA: the listening address if it is a specific one (so a certificate is
    re-issued only when it does not cover where we listen), else None.
    """
    if args.hostname:
        return list(args.hostname)
    specific = args.host not in ("", "0.0.0.0", "::")
    if (Path(args.data_dir) / CA_FILES["config"]).exists():
        return [args.host] if specific else None
    names = ["127.0.0.1", "localhost"]
    if specific and args.host not in names:
        names.insert(0, args.host)
    return names


def ca_settings(args: argparse.Namespace) -> CASettings:
    """The CA's run-time policy from ``serve``'s flags."""
    passwords = args.auth in ("basic", "both")
    return CASettings(
        manual_approval=args.manual_approval,
        retry_after=args.retry_after,
        pop_policy=auth.PoPPolicy(args.pop),
        labels=frozenset(args.label or ()),
        accept_basic=passwords,
        accept_digest=passwords,
        accept_certificates=args.auth in ("cert", "both"),
        auth_schemes=args.auth_schemes,
        profile=Profile(validity_days=args.validity_days),
        crl_url=args.crl_url,
    )


def _crl_url(text: str) -> str:
    """``--crl-url``: an http:// URL with a path."""
    try:
        check_crl_url(text)
    except CAError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _host_port(text: str) -> tuple[str, int]:
    """``--crl-listen``: HOST:PORT ([v6]:PORT)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not host or not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: HOST:PORT, e.g. 0.0.0.0:8080")
    return host, number


class Publication(NamedTuple):
    """What serve publishes over plain HTTP besides EST, and where."""

    files: dict[str, PublishedFile]  # path -> producer
    host: str
    port: int
    sockets: list[socket.socket] | None  # bound already (--workers), else None


def _publication(args: argparse.Namespace, ca: EmbeddedCA) -> Publication | None:
    """The CRL endpoint for ``--crl-url`` (None without it): served on
    ``--crl-listen``, else on --host at the URL's port."""
    if args.crl_url is None:
        return None
    parts = check_crl_url(args.crl_url)
    host, port = args.crl_listen or (args.host, parts.port or 80)
    publisher = ca.crl_publisher()

    def current_crl() -> tuple[bytes, str]:
        return publisher.current(), CRL_MEDIA_TYPE

    sockets = _bind(host, port, listen=True) if args.reuse_port else None
    return Publication({parts.path: current_crl}, host, port, sockets)


def _auth_schemes(text: str) -> tuple[str, ...]:
    """``--auth-schemes``: a comma-separated list, in 401 order."""
    schemes = tuple(part.strip().lower() for part in text.split(","))
    if not all(schemes) or any(a not in AUTH_SCHEMES for a in schemes) or len(set(schemes)) != len(schemes):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated list of {', '.join(AUTH_SCHEMES)}, each at most once")
    return schemes


def build_config(ca: EmbeddedCA, tls_min: str = "1.2", tls_max: str = "1.3") -> ServerConfig:
    """The server configuration for *ca*: its TLS identity and EST settings.

    Raises:
        CLIError: USAGE for an impossible TLS version range.
    """
    if (tls_min, tls_max) == ("1.3", "1.2"):
        raise CLIError(ExitCode.USAGE, "--tls-min is above --tls-max")
    return ServerConfig(
        tls=ca.server_tls_context(min_version=tls_min, max_version=tls_max),
        est=ca.est_settings(),
    )


def _bind(host: str, port: int, *, listen: bool, reuse_port: bool = True) -> list[socket.socket]:
    """Sockets on *host*:*port*, with SO_REUSEPORT unless told (one per address)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for family, kind, proto, _, address in infos:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            if listen:
                sock.listen(socket.SOMAXCONN)
                sock.setblocking(False)
            if port == 0:
                # Every further address must share the port the kernel chose.
                port = sock.getsockname()[1]
                break
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


# -- one server process ------------------------------------------------------


async def _run_trio(
    handler: Any, config: ServerConfig, host: str, port: int, reuse_port: bool,
    ready: Callable[[int], None], publication: Publication | None = None,
) -> None:
    import trio

    from .. import trio as est_trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            sockets = _bind(host, port, listen=True) if reuse_port else None
            server = await nursery.start(functools.partial(
                est_trio.serve, handler, config, host, port, sockets=sockets))
            if publication is not None:
                bound = await nursery.start(functools.partial(
                    est_trio.serve_publication, publication.files, publication.host, publication.port,
                    sockets=publication.sockets))
                _published(publication, bound)

            async def watch() -> None:
                stopping = False
                async for signum in signals:
                    if stopping:
                        _log.info("already stopping (%s)", signal.Signals(signum).name)
                        continue
                    stopping = True
                    _log.info("%s: stopping gracefully", signal.Signals(signum).name)
                    server.close()

            nursery.start_soon(watch)
            ready(server.port)
            await server.wait_closed()
            nursery.cancel_scope.cancel()


async def _run_asyncio(
    handler: Any, config: ServerConfig, host: str, port: int, reuse_port: bool,
    ready: Callable[[int], None], publication: Publication | None = None,
) -> None:
    import asyncio

    from .. import asyncio as est_asyncio

    sockets = _bind(host, port, listen=True) if reuse_port else None
    server = await est_asyncio.start_server(handler, config, host, port, sockets=sockets)
    published = None
    if publication is not None:
        try:
            published = await est_asyncio.start_publication_server(
                publication.files, publication.host, publication.port, sockets=publication.sockets)
        except BaseException:
            server.close()
            await server.wait_closed()
            raise
        _published(publication, published.port)
    loop = asyncio.get_running_loop()
    stopping = False

    def stop(signum: signal.Signals) -> None:
        nonlocal stopping
        if stopping:
            _log.info("already stopping (%s)", signum.name)
            return
        stopping = True
        _log.info("%s: stopping gracefully", signum.name)
        server.close()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    ready(server.port)
    await server.wait_closed()
    if published is not None:
        await published.aclose()


def _published(publication: Publication, port: int) -> None:
    shown = f"[{publication.host}]" if ":" in publication.host else publication.host
    for path in publication.files:
        _log.info("publishing the CRL on http://%s:%d%s", shown, port, path)


def _only_exception(exc: BaseException) -> BaseException:
    """The single exception inside (nested) exception groups, else *exc*."""
    while True:
        inner = getattr(exc, "exceptions", None)
        if not isinstance(inner, tuple) or len(inner) != 1:
            return exc
        exc = inner[0]


def _probe_bind(host: str, port: int) -> None:
    """Fail now, before the CA is touched, if *host*:*port* cannot be bound
    (an address not on this machine, a port in use): a failed ``serve``
    must not have added that host to the CA's certificate."""
    try:
        for sock in _bind(host, port, listen=False, reuse_port=False):
            sock.close()
    except OSError as exc:
        raise CLIError(ExitCode.NETWORK, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _open_or_create_ca(args: argparse.Namespace, settings: CASettings | None = None) -> EmbeddedCA:
    """The CA in ``--data-dir``; a new one is created (the scripting contract:
    ``serve`` initialises on its first start) and said so on stderr, so a
    mistyped directory does not go unnoticed."""
    new = not (Path(args.data_dir) / CA_FILES["config"]).exists()
    ca = init_ca(args.data_dir, serve_hostnames(args), settings=settings, store=args.store)
    if new:
        print(f"estproto: no CA in {args.data_dir}: created a new one "
              f"(fingerprint {ca.fingerprint()})", file=sys.stderr, flush=True)
    return ca


def _serve_one(args: argparse.Namespace) -> int:
    if not args.reuse_port:
        _probe_bind(args.host, args.port)
    ca = _open_or_create_ca(args, ca_settings(args))
    try:
        config = build_config(ca, args.tls_min, args.tls_max)

        def ready(port: int) -> None:
            print(listening_line(args.host, port), flush=True)

        runner = _run_asyncio if args.framework == "asyncio" else _run_trio
        try:
            publication = _publication(args, ca)
            if args.framework == "asyncio":
                import asyncio

                asyncio.run(runner(ca.inline_handler(), config, args.host, args.port, args.reuse_port, ready,
                                   publication))
            else:
                import trio

                trio.run(runner, ca.inline_handler(), config, args.host, args.port, args.reuse_port, ready,
                         publication)
        except Exception as exc:
            # trio raises a bind failure inside an exception group (nursery).
            inner = _only_exception(exc)
            if not isinstance(inner, OSError):
                raise
            where = f"{args.host}:{args.port}"
            if args.crl_url:
                where += " or the CRL address"
            raise CLIError(ExitCode.NETWORK, f"cannot listen on {where}: {inner.strerror or inner}") from None
    finally:
        ca.close()  # flushes the store's last group commit
    _log.info("stopped")
    return 0


# -- several worker processes ---------------------------------------------


def _die_with_parent() -> None:
    # Linux: a worker gets SIGTERM when the supervising parent dies, even by
    # SIGKILL, so no orphan keeps serving the port.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _worker_command(args: argparse.Namespace, port: int) -> list[str]:
    command = [
        sys.executable, "-m", "estproto", "serve", "--data-dir", args.data_dir,
        "--host", args.host, "--port", str(port), "--reuse-port", "--auth", args.auth,
        "--auth-schemes", ",".join(args.auth_schemes),
        "--pop", args.pop, "--retry-after", str(args.retry_after), "--tls-min", args.tls_min,
        "--tls-max", args.tls_max, "--framework", args.framework,
        "--validity-days", str(args.validity_days),
    ]
    if args.store:
        command += ["--store", args.store]
    for name in args.hostname or ():
        command += ["--hostname", name]
    for label in args.label or ():
        command += ["--label", label]
    if args.manual_approval:
        command.append("--manual-approval")
    if args.crl_url:
        command += ["--crl-url", args.crl_url]
    if args.crl_listen:
        command += ["--crl-listen", f"[{args.crl_listen[0]}]:{args.crl_listen[1]}"]
    command += ["-v"] * args.verbose
    return command


class _Worker:
    def __init__(self, command: list[str], index: int) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def wait_ready(self, deadline: float) -> bool:
        """Read the worker's listening line; False if it died or timed out."""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            line = b""
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    return False
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    return False
                line += chunk
        self.proc.stdout.close()  # the worker prints nothing more
        return line.startswith(b"listening on ")


def _lock_port(port: int) -> int:
    """Hold the per-port lock of ``serve --workers``; returns its fd.

    Raises:
        CLIError: NETWORK when another ``serve --workers`` holds the port.
    """
    import fcntl
    import tempfile

    path = Path(tempfile.gettempdir()) / f"estproto-serve-port-{port}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CLIError(ExitCode.NETWORK, f"port {port} is already served by another "
                                         f"'estproto serve --workers' (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _supervise(args: argparse.Namespace) -> int:
    try:
        reserved = _bind(args.host, args.port, listen=False)
    except OSError as exc:
        raise CLIError(ExitCode.NETWORK, f"cannot bind {args.host}:{args.port}: {exc.strerror or exc}") from None
    # Initialise once, before any worker (they then only load it), and only
    # once the address is known to work.
    try:
        _open_or_create_ca(args).close()
    except BaseException:
        for sock in reserved:
            sock.close()
        raise
    port = reserved[0].getsockname()[1]
    try:
        lock = _lock_port(port)
    except CLIError:
        for sock in reserved:
            sock.close()
        raise
    command = _worker_command(args, port)
    stopping = False
    workers: list[_Worker] = []

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            _log.info("%s: stopping %d workers gracefully", signal.Signals(signum).name, len(workers))
        stopping = True
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        workers.extend(_Worker(command, i) for i in range(args.workers))
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        for worker in workers:
            if not worker.wait_ready(deadline):
                if stopping:
                    break
                _log.error("worker %d (pid %d) did not start", worker.index, worker.proc.pid)
                forward(signal.SIGTERM, None)
                _reap(workers)
                raise CLIError(ExitCode.NETWORK if worker.proc.poll() == ExitCode.NETWORK
                               else ExitCode.REFUSED, "a worker failed to start (see its log above)")
        for sock in reserved:
            sock.close()
        if not stopping:
            print(listening_line(args.host, port), flush=True)
            _log.info("%d workers serving: pids %s", len(workers),
                      " ".join(str(w.proc.pid) for w in workers))
        restarts: list[float] = []
        while not stopping:
            time.sleep(_SUPERVISE_INTERVAL)
            for i, worker in enumerate(workers):
                status = worker.proc.poll()
                if status is None or stopping:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60.0] + [now]
                if len(restarts) > MAX_RESTARTS_PER_MINUTE:
                    _log.error("workers keep dying; stopping")
                    forward(signal.SIGTERM, None)
                    _reap(workers)
                    return int(ExitCode.REFUSED)
                _log.warning("worker %d (pid %d) exited with %s; restarting",
                             worker.index, worker.proc.pid, status)
                workers[i] = _Worker(command, worker.index)
                workers[i].wait_ready(time.monotonic() + WORKER_START_TIMEOUT)
        return _reap(workers)
    finally:
        for sock in reserved:
            sock.close()
        os.close(lock)  # releases the port lock


def _reap(workers: list[_Worker]) -> int:
    """Wait for the workers to end (killing stragglers); 0 if all ended cleanly."""
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT
    worst = 0
    for worker in workers:
        try:
            status = worker.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _log.warning("worker pid %d did not stop in time; killing it", worker.proc.pid)
            worker.proc.kill()
            status = worker.proc.wait()
        if status != 0 and not (status < 0 and -status in (signal.SIGTERM, signal.SIGINT)):
            worst = worst or int(ExitCode.REFUSED)
    _log.info("stopped")
    return worst


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise CLIError(ExitCode.USAGE, "--workers must be at least 1")
    if args.crl_listen and not args.crl_url:
        raise CLIError(ExitCode.USAGE, "--crl-listen needs --crl-url (what certificates name)")
    if args.workers > 1 and args.crl_listen and args.crl_listen[1] == 0:
        raise CLIError(ExitCode.USAGE, "--crl-listen port 0 cannot be shared by --workers")
    if args.retry_after < 0:
        raise CLIError(ExitCode.USAGE, "--retry-after must not be negative")
    setup_logging(args.verbose, with_pid=args.workers > 1 or args.reuse_port)
    if args.workers > 1:
        return _supervise(args)
    return _serve_one(args)


def with_config_file(argv: list[str]) -> list[str]:
    """serve's arguments with its ``--config`` file applied (see
    :mod:`._serve_config`); needs :func:`add_parser` to have run."""
    return apply_config_file(argv, SETTINGS)


def add_parser(commands: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add ``serve`` to *commands* (an argparse subparsers object)."""
    p = commands.add_parser(
        "serve", help="run an EST server on the embedded CA (creates the CA on first start)",
        description=(
            "Run an EST server (RFC 7030) over TLS on the embedded CA in --data-dir, "
            "creating the CA on first start. Prints 'listening on https://HOST:PORT/"
            ".well-known/est' when ready, logs one line per request on stderr, and stops "
            "gracefully on SIGINT/SIGTERM. Clients trust DIR/ca.pem."
        ),
        epilog=(
            "examples:\n"
            "  estproto serve --data-dir ./est-ca --host 127.0.0.1 --port 8443\n"
            "  estproto serve --data-dir ./est-ca --port 8443 --manual-approval --retry-after 30\n"
            "  estproto serve --data-dir ./est-ca --host 0.0.0.0 --port 8443 "
            "--hostname est.example --workers 4\n"
            "  estproto serve --config /etc/estproto/serve.ini --port 9443\n\n"
            f"a --config file ([{SECTION}] section; relative data-dir: to the file):\n"
            f"  [{SECTION}]\n  data-dir = est-ca\n  host = 0.0.0.0\n  hostname = est.example, 192.0.2.10\n"
            "  manual-approval = true"
        ),
        formatter_class=formatter,
    )

    def option(*flags: str, **kwargs: Any) -> None:
        action = p.add_argument(*flags, **kwargs)
        kind = {"store_true": "switch", "append": "list", "count": "count"}.get(kwargs.get("action", ""), "value")
        name = next(f for f in flags if f.startswith("--"))[2:]
        SETTINGS.append(Setting(name, kind, action))

    SETTINGS.clear()
    option("--config", metavar="FILE",
           help=f"read settings from FILE's [{SECTION}] section (keys are these flags' long "
                "names, e.g. port = 8443; flags given here win)")
    option("--data-dir", required=True, metavar="DIR", help="the CA's data directory")
    option("--store", type=store_location, metavar="LOCATION", help=STORE_HELP)
    option("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    option("--port", type=port_number, default=8443, help="TCP port (default 8443; 0 picks a free one)")
    option("--hostname", action="append", metavar="NAME",
                   help="name or IP in the server's TLS certificate (repeatable; "
                        "default: --host, 127.0.0.1, localhost)")
    option("--label", action="append", metavar="LABEL",
                   help="also serve /.well-known/est/LABEL/... (repeatable)")
    option("--auth", choices=("basic", "cert", "both"), default="both",
                   help="accept HTTP users (Basic and Digest), TLS client certificates, "
                        "or both (default both)")
    option("--auth-schemes", type=_auth_schemes, default=DEFAULT_AUTH_SCHEMES,
                   metavar="LIST",
                   help="HTTP schemes offered in a 401, in this order (default "
                        f"{','.join(DEFAULT_AUTH_SCHEMES)}: Bouncy Castle answers only the first "
                        "and its plain HttpAuth has no Digest; curl --anyauth and estproto pick "
                        "Digest anyway); e.g. digest-sha256,digest-md5 for Digest only")
    option("--pop", choices=[m.value for m in auth.PoPPolicy], default="verify-if-present",
                   help="proof-of-possession linking, RFC 7030 3.5 (default verify-if-present)")
    option("--manual-approval", action="store_true",
                   help="answer enrollments 202 until approved with 'estproto ca approve'")
    option("--retry-after", type=whole_seconds, default=60, metavar="S",
                   help="seconds in Retry-After while pending (default 60)")
    option("--validity-days", type=validity_days, default=Profile.validity_days, metavar="N",
                   help=f"lifetime of issued certificates in days (default {Profile.validity_days}; "
                        "never beyond the CA certificate's own)")
    option("--crl-url", type=_crl_url, metavar="URL",
           help="publish the CRL at this http://HOST[:PORT]/PATH and name it in every issued "
                "certificate (cRLDistributionPoints, RFC 5280 4.2.1.13); re-signed after each "
                "revocation and before it ages")
    option("--crl-listen", type=_host_port, metavar="HOST:PORT",
           help="where the CRL is served over plain HTTP (default: --host and the URL's port, "
                "80 if it has none; for a proxy in front)")
    option("--tls-min", choices=("1.2", "1.3"), default="1.2", help="lowest TLS version (default 1.2)")
    option("--tls-max", choices=("1.2", "1.3"), default="1.3", help="highest TLS version (default 1.3)")
    option("--framework", choices=("trio", "asyncio"), default=DEFAULT_FRAMEWORK,
           help=f"I/O framework (default {DEFAULT_FRAMEWORK})")
    option("--workers", type=positive_count, default=1, metavar="N",
                   help="server processes sharing the port with SO_REUSEPORT (default 1)")
    option("-v", "--verbose", action="count", default=0, help="debug logging")
    # Internal: a worker started by a --workers parent joins its port.
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_serve)
