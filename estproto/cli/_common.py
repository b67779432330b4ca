"""What every ``estproto`` command shares: exit codes, errors, passwords, files, logging.

Strategy: a command raises :class:`CLIError` carrying an :class:`ExitCode`
and a one-line message; :func:`estproto.cli.main` prints the message to
stderr and returns the code. Library exceptions are translated in one place
per command family, so the exit codes stay the documented ones.

Secrets never come from argv (another user can read a process's arguments in
``/proc``): passwords come from the ``ESTPROTO_PASSWORD`` environment
variable or a terminal prompt, and private keys are written with mode 0600.
"""

from __future__ import annotations

import argparse
import enum
import getpass
import ipaddress
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ..codecs import pkcs10

__all__ = [
    "ExitCode",
    "CLIError",
    "Parser",
    "PASSWORD_ENV",
    "EXIT_CODES_HELP",
    "read_password",
    "read_certificates",
    "read_private_key",
    "KeyPassphrase",
    "KEY_PASSWORD_ENV",
    "write_private_key",
    "write_output",
    "setup_logging",
    "setup_client_logging",
    "parse_names",
]

#: The environment variable a password is read from (never from argv).
PASSWORD_ENV = "ESTPROTO_PASSWORD"
#: The environment variable the passphrase of private key files is read from.
KEY_PASSWORD_ENV = "ESTPROTO_KEY_PASSWORD"


class ExitCode(enum.IntEnum):
    """Exit statuses scripts can rely on (also listed in ``estproto --help``)."""

    #: Success.
    OK = 0
    #: Bad arguments, unreadable input file, no password available.
    USAGE = 1
    #: Refused: the server answered an HTTP error (4xx/5xx, a CMC failure),
    #: or a ``ca`` operation failed (not initialised, unknown id, already decided).
    REFUSED = 2
    #: TLS failure: the server is not trusted (chain, name, fingerprint) or
    #: the handshake failed.
    TLS = 3
    #: The enrollment is still pending (202) after the allowed retries.
    PENDING = 4
    #: Authentication failed (401: credentials refused or missing).
    AUTHENTICATION = 5
    #: Network: cannot connect or bind, connection lost, timeout.
    NETWORK = 6
    #: The server's answer broke the EST protocol.
    PROTOCOL = 7


EXIT_CODES_HELP = """\
exit codes:
  0  success
  1  usage error (bad arguments, unreadable file, no password)
  2  refused: HTTP error from the server (4xx/5xx, CMC failure),
     or a 'ca' operation failed (not initialised, unknown id ...)
  3  TLS failure: server not trusted (chain, name, fingerprint)
  4  still pending (202 Accepted) after the allowed retries
  5  authentication failed (401)
  6  network error (cannot connect or bind, timeout, connection lost)
  7  protocol error in the server's answer"""


class CLIError(Exception):
    """A command failed; *message* goes to stderr, *code* is the exit status."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 1 (argparse's own default is 2,
    which our scripts contract reserves for "the server refused")."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"{self.prog}: error: {message}\n")


# -- argument types (argparse calls them; a ValueError-free message each) ------


def _number(kind: type, low: float | None, high: float | None, what: str) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value != value or value in (float("inf"), float("-inf")) or (
                low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


#: A TCP port; 0 asks the system for a free one.
port_number = _number(int, 0, 65535, "a port number (0-65535)")
#: A count that may be zero (retries).
count = _number(int, 0, 1_000_000, "a whole number >= 0")
#: A count that must be at least one (workers, ids).
positive_count = _number(int, 1, 1_000_000, "a whole number >= 1")
#: Seconds that may be zero (a Retry-After, a wait), at most a day.
seconds = _number(float, 0, 86_400, "a number of seconds (0-86400)")
#: Whole seconds that may be zero, at most a day (Retry-After is delta-seconds).
whole_seconds = _number(int, 0, 86_400, "whole seconds (0-86400)")
#: A certificate lifetime in days: at least one, at most 100 years.
validity_days = _number(int, 1, 36_500, "a number of days (1-36500)")
#: Seconds that must be positive (a timeout), at most a day.
positive_seconds = _number(float, 0.001, 86_400, "a positive number of seconds (at most 86400)")


def parse_subject(text: str) -> x509.Name:
    """A subject DN as RFC 4514 (``CN=device-1,O=Example``, least significant
    first) or as OpenSSL writes it (``/O=Example/CN=device-1``, most
    significant first).

    Raises:
        CLIError: USAGE, saying which forms are accepted.
    """
    hint = "write e.g. CN=device-1,O=Example or /O=Example/CN=device-1"
    try:
        if text.startswith("/"):
            parts = [p for p in re.split(r"(?<!\\)/", text[1:]) if p]
            if not parts or any("=" not in p for p in parts):
                raise ValueError("no attribute=value")
            # Each part parsed alone, so escapes and attribute names work
            # as in RFC 4514; the order stays as written.
            rdns = [x509.Name.from_rfc4514_string(p.replace("\\/", "/").replace(",", "\\,")).rdns[0]
                    for p in parts]
            name = x509.Name(rdns)
        else:
            if "=" not in text:
                raise ValueError("no attribute=value")
            name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        reason = str(exc) or "not a distinguished name"
        raise CLIError(ExitCode.USAGE, f"--subject {text!r}: {reason}; {hint}") from None
    if not list(name):
        raise CLIError(ExitCode.USAGE, f"--subject {text!r} is empty; {hint}")
    return name


def _first_line(file: str, flag: str) -> str:
    """A secret from the first line of *file* (at most 4096 characters)."""
    try:
        with open(file, encoding="utf-8") as f:
            line = f.readline(4097).rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(ExitCode.USAGE, f"{flag} {file}: unreadable "
                                       f"({getattr(exc, 'strerror', None) or exc})") from None
    if not line or len(line) > 4096:
        raise CLIError(ExitCode.USAGE, f"{flag} {file}: no password on its first line")
    return line


def read_password(user: str, *, confirm: bool = False, file: str | None = None) -> str:
    """The password for *user*: the first line of *file* (``--password-file``),
    else ``$ESTPROTO_PASSWORD``, else a prompt. Never from argv.

    Args:
        user: named in the prompt.
        confirm: ask twice (when creating a password).
        file: a file holding the password on its first line.

    Raises:
        CLIError: USAGE when the file is unreadable or empty, when there is
            no variable and no terminal to ask, or the two entries differ.
    """
    if file is not None:
        return _first_line(file, "--password-file")
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        return from_env
    if not sys.stdin.isatty():
        raise CLIError(ExitCode.USAGE, f"no password: set {PASSWORD_ENV} or run in a terminal")
    try:
        password = getpass.getpass(f"password for {user}: ")
        if confirm and getpass.getpass("again: ") != password:
            raise CLIError(ExitCode.USAGE, "the passwords differ")
    except EOFError:
        raise CLIError(ExitCode.USAGE, f"no password: set {PASSWORD_ENV}") from None
    return password


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CLIError(ExitCode.USAGE, f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_certificates(path: str | Path, what: str = "certificate file") -> list[x509.Certificate]:
    """All certificates in a PEM bundle (or one DER certificate).

    Raises:
        CLIError: USAGE when unreadable or holding no certificate.
    """
    data = _read(path, what)
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CLIError(ExitCode.USAGE, f"{path}: not a certificate ({exc})") from None
    return certs


class KeyPassphrase:
    """The passphrase protecting private key files: the first line of
    ``--key-password-file``, else ``$ESTPROTO_KEY_PASSWORD``; a prompt only
    when an encrypted key must be read and neither is set. Keys a command
    writes are encrypted with it when one of the two is set.
    """

    def __init__(self, file: str | None = None) -> None:
        self.file = file
        self._value: bytes | None = None

    def given(self) -> bytes | None:
        """The passphrase from the file or the variable, or None (no prompt)."""
        if self._value is None:
            if self.file is not None:
                self._value = _first_line(self.file, "--key-password-file").encode()
            elif os.environ.get(KEY_PASSWORD_ENV):
                self._value = os.environ[KEY_PASSWORD_ENV].encode()
        return self._value

    def for_reading(self, path: str | Path) -> bytes:
        """The passphrase to open the encrypted key *path*, prompting if need be.

        Raises:
            CLIError: USAGE when there is none and no terminal to ask.
        """
        value = self.given()
        if value is not None:
            return value
        if not sys.stdin.isatty():
            raise CLIError(ExitCode.USAGE, f"{path} is encrypted: give --key-password-file "
                                           f"or set {KEY_PASSWORD_ENV}")
        try:
            self._value = getpass.getpass(f"passphrase for {path}: ").encode()
        except EOFError:
            raise CLIError(ExitCode.USAGE, f"{path} is encrypted: set {KEY_PASSWORD_ENV}") from None
        return self._value


def read_private_key(path: str | Path, passphrase: KeyPassphrase | None = None) -> pkcs10.PrivateKey:
    """A private key, PEM or DER, encrypted (PKCS#8 or OpenSSL's PEM
    encryption, opened with *passphrase*) or not.

    Raises:
        CLIError: USAGE when unreadable, encrypted without a passphrase, the
            passphrase is wrong, or of a type that cannot sign.
    """
    data = _read(path, "private key")
    load = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    try:
        try:
            key = load(data, password=None)
        except TypeError:
            # cryptography's way of saying "encrypted, and no password given".
            if passphrase is None:
                raise CLIError(ExitCode.USAGE, f"{path} is encrypted: give --key-password-file "
                                               f"or set {KEY_PASSWORD_ENV}") from None
            secret = passphrase.for_reading(path)
            try:
                key = load(data, password=secret)
            except ValueError:
                raise CLIError(ExitCode.USAGE, f"{path}: wrong passphrase (or a damaged key)") from None
    except (ValueError, TypeError) as exc:
        raise CLIError(ExitCode.USAGE, f"{path}: not a private key ({exc})") from None
    if not pkcs10.is_signing_key(key):
        raise CLIError(ExitCode.USAGE, f"{path}: a {type(key).__name__} cannot sign a request "
                                       "(use an EC, RSA, Ed25519 or Ed448 key)")
    return key


def write_private_key(path: str | Path, key: PrivateKeyTypes, passphrase: bytes | None = None) -> None:
    """Write *key* as PKCS#8 PEM with mode 0600 (created that way, never
    world-readable even for a moment), encrypted with *passphrase* if given
    (cryptography's best available PKCS#8 encryption, which openssl reads).

    Raises:
        CLIError: USAGE when the file cannot be written.
    """
    protection: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, protection)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    except OSError as exc:
        raise CLIError(ExitCode.USAGE, f"cannot write {path}: {exc.strerror or exc}") from None


def check_output_path(path: str | None, flag: str) -> None:
    """Refuse an output path that cannot be written, before anything is
    sent: a certificate issued (and recorded by the CA) must not be lost
    to a typo in ``--out``.

    Raises:
        CLIError: USAGE naming *flag* and why.
    """
    if path is None or path == "-":
        return
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise CLIError(ExitCode.USAGE, f"{flag} {path}: is a directory")
    if not parent.is_dir():
        raise CLIError(ExitCode.USAGE, f"{flag} {path}: no directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise CLIError(ExitCode.USAGE, f"{flag} {path}: not writable")


def write_output(path: str | None, data: bytes) -> None:
    """Write *data* to *path*, or to stdout when *path* is None or "-".

    Raises:
        CLIError: USAGE when the file cannot be written.
    """
    if path is None or path == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    if target.exists() and not target.is_file():
        # /dev/stdout, a FIFO: nothing to replace, just write.
        try:
            with open(target, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise CLIError(ExitCode.USAGE, f"cannot write {path}: {exc.strerror or exc}") from None
        return
    # A new file beside the target, renamed over it: renewing in place
    # (--out the same file as --cert) never leaves a half-written file.
    try:
        mode = target.stat().st_mode & 0o777 if target.exists() else None
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as exc:
        raise CLIError(ExitCode.USAGE, f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode if mode is not None else 0o666 & ~_umask())
        os.replace(temporary, target)
    except OSError as exc:
        os.unlink(temporary)
        raise CLIError(ExitCode.USAGE, f"cannot write {path}: {exc.strerror or exc}") from None


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def setup_logging(verbose: int, *, with_pid: bool = False) -> None:
    """Log to stderr: INFO (one line per request) by default, DEBUG with -v.

    Args:
        verbose: how many ``-v`` were given.
        with_pid: put the process id in each line (``serve --workers``).
    """
    pid = "[%(process)d] " if with_pid else ""
    # What the format does not show need not be gathered for every record:
    # the thread, the process name, and the caller's file, line and function
    # (a stack walk per record; ``_srcfile = None`` is the switch the logging
    # HOWTO's "Optimization" section names for it).
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = with_pid
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(f"%(asctime)s {pid}%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


class LineFormatter(logging.Formatter):
    """logging's default line format, its date formatted once per second
    (two lines per enrollment share it; strftime was a fifth of a line's
    cost)."""

    _second: int | None = None
    _date = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._date = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return "%s,%03d" % (self._date, record.msecs)  # logging's default_msec_format


def setup_client_logging(verbose: int) -> None:
    """A client command's progress on stderr: waits and reconnections
    always, each connection and exchange with ``-v`` (never a credential:
    the client logs event names, not headers)."""
    logger = logging.getLogger("estproto.client")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("estproto: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def parse_names(values: Sequence[str]) -> list[x509.GeneralName]:
    """``DNS:x,IP:y,URI:z,email:w`` items (comma-separated, repeatable) as
    subjectAltName entries.

    Raises:
        CLIError: USAGE for an unknown prefix or a bad address.
    """
    names: list[x509.GeneralName] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            kind, sep, rest = item.partition(":")
            kind = kind.lower()
            if not sep or not rest:
                raise CLIError(ExitCode.USAGE,
                               f"--san {item!r}: expected DNS:name, IP:address, URI:uri or email:addr")
            if kind == "dns":
                names.append(x509.DNSName(rest))
            elif kind == "ip":
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(rest)))
                except ValueError:
                    raise CLIError(ExitCode.USAGE, f"--san {item!r}: not an IP address") from None
            elif kind == "uri":
                names.append(x509.UniformResourceIdentifier(rest))
            elif kind == "email":
                names.append(x509.RFC822Name(rest))
            else:
                raise CLIError(ExitCode.USAGE, f"--san {item!r}: unknown type {kind!r} (DNS, IP, URI, email)")
    return names
