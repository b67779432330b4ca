"""A real estproto EST server for the interop tests, and shared checks.

:class:`RunningServer` starts :func:`estproto.trio.serve` (or, with
``framework="asyncio"``, :func:`estproto.asyncio.start_server`) with an
:class:`~estproto.ca.EmbeddedCA` on ``127.0.0.1`` port 0, inside its event
loop in a daemon thread (``server_thread.ServerThread``), so that real
external peers (curl, openssl, strongSwan's ``pki``) can talk to it over
loopback while the test drives them with ``subprocess``. It is stopped with
the server's ``close`` from the loop's thread (graceful shutdown), and the
thread is joined.

The server's log (logger ``estproto.server``) and the CA's log are captured
in :attr:`RunningServer.log` so that a failing peer can be diagnosed from
what the server saw.

The helpers below assert what came back from an enrollment the way issue 5
asks: the certificate's public key equals the CSR's (compared as openssl
prints them), the chain verifies to the trust anchor file with
``openssl verify``, the subject is the one requested. They run real openssl
processes, each bounded by :data:`TOOL_TIMEOUT`.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from pathlib import Path
from typing import Any, Sequence

import estproto
from estproto.ca import CASettings, EmbeddedCA
from server_thread import FRAMEWORKS, ServerThread

#: Seconds any external tool may run: a hung peer fails the test instead of
#: hanging the suite (every exchange here takes well under a second).
TOOL_TIMEOUT = 20.0


USER = "user"
PASSWORD = "pass"
EST_PATH = "/.well-known/est"

#: Loggers captured while a server runs (the request log and the CA's).
_LOGGERS = ("estproto.server", "estproto.ca")


class _ListHandler(logging.Handler):
    """Keeps formatted log records in memory."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._lines_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lines_lock:
            self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


class RunningServer:
    """An EmbeddedCA served by the trio or asyncio adapter in a background thread.

    Args:
        data_dir: the CA's data directory (created by ``EmbeddedCA.init``).
        framework: ``"trio"`` or ``"asyncio"`` (``server_thread.FRAMEWORKS``).
        settings: run-time policy, e.g. ``CASettings(manual_approval=True,
            retry_after=1)`` for deferred enrollment.
        est_overrides: EST-layer settings (``ca.est_settings(**overrides)``),
            e.g. ``line_policy``.

    Attributes:
        ca: the :class:`EmbeddedCA` (the same object the server calls, so
            ``ca.approve(id)`` takes effect at once).
        port: the bound port.
        trust: ``DIR/ca.pem``, the trust anchor file for the peers.
        url: ``https://127.0.0.1:PORT/.well-known/est``.
    """

    def __init__(self, data_dir: Path, *, settings: CASettings | None = None,
                 framework: str = "trio", **est_overrides: object) -> None:
        if framework not in FRAMEWORKS:
            raise ValueError(f"unknown framework {framework!r}")
        self.framework = framework
        self.data_dir = data_dir
        self.ca = EmbeddedCA.init(data_dir, hostnames=("127.0.0.1", "localhost"), settings=settings)
        self.ca.add_user(USER, PASSWORD)
        self.trust = data_dir / "ca.pem"
        self.config = estproto.ServerConfig(tls=self.ca.server_tls_context(), est=self.ca.est_settings(**est_overrides))
        self._server = ServerThread(framework, self.ca.handler(), self.config)  # started by start()
        self._log_handler = _ListHandler()
        self._levels: dict[str, int] = {}

    @property
    def port(self) -> int:
        """The bound port (0 before :meth:`start`)."""
        return self._server.port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{EST_PATH}"

    @property
    def log(self) -> list[str]:
        """What the server and the CA logged so far."""
        return list(self._log_handler.lines)

    def start(self) -> RunningServer:
        """Start serving; returns once the port is bound.

        Raises:
            RuntimeError: the server did not start (its exception is chained).
        """
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.addHandler(self._log_handler)
            logger.setLevel(logging.DEBUG)
        try:
            self._server.start()
        except BaseException as exc:
            raise RuntimeError("the EST server did not start") from exc
        return self

    def stop(self) -> None:
        """Close the server gracefully and join its thread; close the CA."""
        try:
            self._server.stop()
        except BaseException as exc:
            raise RuntimeError("the EST server failed or did not stop") from exc
        finally:
            for name in _LOGGERS:
                logger = logging.getLogger(name)
                logger.removeHandler(self._log_handler)
                logger.setLevel(self._levels.get(name, logging.NOTSET))
            self.ca.close()

    def log_text(self) -> str:
        """The captured log, for assertion messages."""
        return "\n".join(self.log[-40:])


# ---------------------------------------------------------------------------
# Running tools and checking what came back


def run(args: Sequence[str | Path], *, input: bytes | None = None, cwd: Path | None = None,
        check: bool = True, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run a tool, bounded by *timeout*; on failure raise with its output.

    Raises:
        AssertionError: non-zero exit with *check* (stdout and stderr quoted).
        subprocess.TimeoutExpired: the tool hung.
    """
    proc = subprocess.run([str(a) for a in args], input=input, cwd=cwd, capture_output=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(str(a) for a in args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout[-3000:]!r}\nstderr: {proc.stderr[-3000:]!r}"
        )
    return proc


def pubkey_of(openssl: str, kind: str, path: Path, *extra: str) -> bytes:
    """The public key of *path* as openssl prints it (PEM SubjectPublicKeyInfo).

    Args:
        kind: ``"x509"`` (a certificate), ``"req"`` (a CSR) or ``"pkey"``
            (a private key).
        extra: further arguments such as ``-inform DER``.
    """
    if kind == "x509":
        args = [openssl, "x509", "-in", str(path), "-noout", "-pubkey", *extra]
    elif kind == "req":
        args = [openssl, "req", "-in", str(path), "-noout", "-pubkey", *extra]
    elif kind == "pkey":
        args = [openssl, "pkey", "-in", str(path), "-pubout", *extra]
    else:
        raise ValueError(kind)
    out = run(args).stdout
    assert b"-----BEGIN PUBLIC KEY-----" in out, out
    return out


def subject_of(openssl: str, cert: Path) -> str:
    """``openssl x509 -subject`` in RFC 2253 form, without the ``subject=`` prefix."""
    out = run([openssl, "x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "RFC2253"]).stdout
    return out.decode().strip().removeprefix("subject=")


def san_of(openssl: str, cert: Path) -> str:
    """The subjectAltName extension as openssl prints it ('' when absent)."""
    out = run([openssl, "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"]).stdout
    lines = out.decode().strip().splitlines()
    return lines[-1].strip() if len(lines) > 1 else ""


def verify_chain(openssl: str, trust: Path, cert: Path) -> None:
    """``openssl verify -CAfile trust cert`` must say OK (client purpose)."""
    out = run([openssl, "verify", "-CAfile", str(trust), "-purpose", "sslclient", str(cert)]).stdout
    assert out.strip().endswith(b": OK"), out


def certs_from_pkcs7(openssl: str, p7: Path, *extra: str) -> list[bytes]:
    """The PEM certificates ``openssl pkcs7 -print_certs`` reads from *p7*."""
    out = run([openssl, "pkcs7", "-in", str(p7), "-print_certs", *extra]).stdout
    blocks = []
    for chunk in out.split(b"-----BEGIN CERTIFICATE-----")[1:]:
        body = chunk.split(b"-----END CERTIFICATE-----")[0]
        blocks.append(b"-----BEGIN CERTIFICATE-----" + body + b"-----END CERTIFICATE-----\n")
    assert blocks, out
    return blocks


def check_issued(openssl: str, trust: Path, cert: Path, *, pubkey: bytes, subject: str,
                 san: str | None = None) -> None:
    """Everything issue 5 asks of a returned certificate.

    Args:
        pubkey: the requested key, PEM SubjectPublicKeyInfo from openssl.
        subject: the wanted subject, RFC 2253 as openssl prints it.
        san: the wanted subjectAltName text as openssl prints it, if any.
    """
    assert pubkey_of(openssl, "x509", cert) == pubkey, "issued for another key"
    verify_chain(openssl, trust, cert)
    assert subject_of(openssl, cert) == subject
    if san is not None:
        assert san_of(openssl, cert) == san


def describe(proc: subprocess.CompletedProcess[Any], server: RunningServer) -> str:
    """A failure message: the peer's output and the server's log."""
    return (f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]!r}\n"
            f"stderr: {proc.stderr[-4000:]!r}\nserver log:\n{server.log_text()}")
