"""``estproto conformance``: judge any EST server against RFC 7030, 8951 and 9908.

Usage::

    estproto conformance https://est.example:8443 --cacert ca.pem --user dev \\
        [--cert c.pem --key k.pem] [--label L] [--json out.json] \\
        [--only SECTION ...] [--timeout S]

(also ``python -m estproto.conformance ...``). The password of ``--user``
comes from the ``ESTPROTO_PASSWORD`` environment variable, never from argv.
One line per check, ``PASS|FAIL|SKIP <check-id> (<RFC section>) <what was
seen>``, then the summary ``N passed, M failed, K skipped``. Exit status: 0
when nothing failed, 1 when a check failed, 2 for a usage error or a server
that cannot be reached at all.

``--insecure`` is the bootstrap of RFC 7030 4.1.1 done blindly: /cacerts is
fetched over an unverified connection and its certificates become the trust
anchors for everything else (the server's TLS certificate must chain to
them). Only for test servers: nothing is checked out of band.

The checks themselves live in :mod:`estproto.conformance._suite`; see
:data:`CHECKS` for their ids and sections.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Sequence, TextIO

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .._errors import DecodeError, RemoteProtocolError
from .._events import RawRequest, RawResponseReceived
from .._paths import WELL_KNOWN_PREFIX
from .._tls import ClientTLSContext
from ..codecs import pkcs7, transfer
from ..codecs.pkcs10 import PrivateKey, is_signing_key
from ..trio import ESTClient
from ._suite import CHECKS, GROUPS, Check, CheckResult, Result, SuiteOptions, run_checks

__all__ = [
    "main",
    "run",
    "run_checks",
    "summary",
    "CHECKS",
    "GROUPS",
    "Check",
    "CheckResult",
    "Result",
    "SuiteOptions",
    "UsageError",
    "PASSWORD_ENV",
]

#: Where the password of ``--user`` comes from (argv is readable by others).
PASSWORD_ENV = "ESTPROTO_PASSWORD"

#: Default seconds for a connection and for each response.
DEFAULT_TIMEOUT = 10.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or files, or a server that cannot be reached (exit 2)."""


def summary(results: Sequence[CheckResult]) -> str:
    """``N passed, M failed, K skipped``."""
    counts = {r: sum(1 for x in results if x.result is r) for r in Result}
    return (f"{counts[Result.PASS]} passed, {counts[Result.FAIL]} failed, "
            f"{counts[Result.SKIP]} skipped")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="estproto conformance",
        description="Run RFC 7030 / 8951 / 9908 conformance checks against an EST server.",
        epilog=f"The password for --user is read from ${PASSWORD_ENV}. Exit status: 0 all "
               "checks passed or skipped, 1 a check failed, 2 usage or connection error. "
               f"Sections: {', '.join(GROUPS)}.",
    )
    parser.add_argument("url", help="https://host[:port][/.well-known/est]")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--cacert", metavar="FILE", help="PEM trust anchors for the server")
    trust.add_argument("--insecure", action="store_true",
                       help="trust whatever /cacerts returns (test servers only)")
    parser.add_argument("--user", metavar="NAME", help=f"HTTP user (password from ${PASSWORD_ENV})")
    parser.add_argument("--cert", metavar="FILE", help="PEM client certificate (chain)")
    parser.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    parser.add_argument("--label", metavar="L", default="", help="a CA label the server serves")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' = stdout)")
    parser.add_argument("--only", metavar="SECTION", nargs="+", choices=GROUPS,
                        help="run only these sections")
    parser.add_argument("--timeout", metavar="S", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds per connection and response (default {DEFAULT_TIMEOUT:g})")
    return parser


def _parse_url(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"URL must be https://host[:port][{WELL_KNOWN_PREFIX}], not {url!r}")
    path = parts.path.rstrip("/")
    if path not in ("", WELL_KNOWN_PREFIX):
        raise UsageError(f"EST lives under {WELL_KNOWN_PREFIX} (RFC 7030 3.2.2); "
                         "give the label with --label")
    try:
        port = parts.port or 443
    except ValueError:
        raise UsageError(f"bad port in {url!r}") from None
    return parts.hostname, port


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _certificates(path: str, what: str) -> tuple[x509.Certificate, ...]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path, what))
    except ValueError:
        raise UsageError(f"{what} {path} holds no PEM certificate") from None
    return tuple(certs)


def _private_key(path: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path, "key"), password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cannot load key {path}: {exc}") from None
    if not is_signing_key(key):
        raise UsageError(f"{path}: a {type(key).__name__} cannot sign a CSR")
    return key


async def _bootstrap(host: str, port: int, timeout: float) -> tuple[x509.Certificate, ...]:
    """RFC 7030 4.1.1 without the out-of-band check: /cacerts, unverified."""
    tls = ClientTLSContext(verify=False)
    async with ESTClient(host, port, tls, request_timeout=timeout, connect_timeout=timeout) as client:
        result = await client.request(RawRequest(method="GET", target=f"{WELL_KNOWN_PREFIX}/cacerts"))
    if not isinstance(result, RawResponseReceived) or result.status != 200:
        status = getattr(result, "status", "?")
        raise UsageError(f"--insecure: /cacerts answered {status}, nothing to trust")
    try:
        return pkcs7.decode_certs_only(transfer.decode_base64(result.body, lenient=True))
    except DecodeError as exc:
        raise UsageError(f"--insecure: /cacerts is unusable: {exc}") from None


async def _reachable(options: SuiteOptions) -> None:
    tls = ClientTLSContext(trust_anchors=options.trust_anchors)
    async with ESTClient(options.host, options.port, tls, request_timeout=options.timeout,
                         connect_timeout=options.timeout) as client:
        await client.request(RawRequest(method="GET", target=f"{WELL_KNOWN_PREFIX}/cacerts"))


def _options(args: argparse.Namespace) -> SuiteOptions:
    host, port = _parse_url(args.url)
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    if not args.cacert and not args.insecure:
        raise UsageError("give --cacert FILE (or --insecure for a test server)")
    password = None
    if args.user is not None:
        password = os.environ.get(PASSWORD_ENV)
        if not password:
            raise UsageError(f"--user needs the password in ${PASSWORD_ENV}")
    anchors = _certificates(args.cacert, "--cacert") if args.cacert else ()
    chain: tuple[x509.Certificate, ...] = ()
    key = None
    if args.cert is not None:
        chain = _certificates(args.cert, "--cert")
        key = _private_key(args.key)
    return SuiteOptions(
        host=host, port=port, trust_anchors=anchors, username=args.user, password=password,
        client_chain=chain, client_key=key, label=args.label, timeout=args.timeout,
        only=frozenset(args.only or ()),
    )


async def run(options: SuiteOptions, *, insecure: bool = False, out: TextIO | None = None) -> list[CheckResult]:
    """Check reachability, then run the checks, printing one line each.

    Args:
        options: see :class:`SuiteOptions`.
        insecure: fetch the trust anchors from /cacerts first (RFC 7030
            4.1.1 without its out-of-band check).
        out: a text stream for the lines (default stdout).

    Raises:
        UsageError: the server cannot be reached or its TLS not verified.
    """
    stream = sys.stdout if out is None else out
    try:
        if insecure:
            anchors = await _bootstrap(options.host, options.port, options.timeout)
            options = dataclasses.replace(options, trust_anchors=anchors)
        await _reachable(options)
    except (OSError, RemoteProtocolError) as exc:
        raise UsageError(f"cannot reach {options.host}:{options.port}: "
                         f"{type(exc).__name__}: {exc}") from None

    def report(result: CheckResult) -> None:
        print(result.line(), file=stream, flush=True)

    return await run_checks(options, report)


def main(argv: list[str] | None = None) -> int:
    """The command line (``estproto conformance`` and ``python -m estproto.conformance``).

    Returns:
        0 when no check failed, 1 when one did, 2 for a usage or
        connection error (argparse's own errors included).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        options = _options(args)
        results = trio.run(lambda: run(options, insecure=args.insecure))
    except UsageError as exc:
        print(f"estproto conformance: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(summary(results))
    if args.json:
        data = json.dumps([r.as_json() for r in results], indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(data)
        else:
            try:
                Path(args.json).write_text(data, encoding="utf-8")
            except OSError as exc:
                print(f"estproto conformance: error: cannot write {args.json}: {exc}", file=sys.stderr)
                return EXIT_USAGE
    return EXIT_FAILED if any(r.result is Result.FAIL for r in results) else EXIT_OK
