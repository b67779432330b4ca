"""``estproto ca ...``: the operator's commands for the embedded CA.

Each subcommand opens the data directory with
:class:`estproto.ca.EmbeddedCA` (``init`` creates it, idempotently), does one
thing and closes the store. The store is SQLite in WAL mode, so these
commands run safely while ``estproto serve`` (any number of workers) is
using the same directory: approving a deferred request (RFC 7030 4.2.3) only
changes its row, and the serving process issues the certificate on the
client's next retry.

``ca fingerprint`` prints the SHA-256 fingerprint of the root certificate,
the out-of-band value a client checks when it bootstraps its trust
(RFC 7030 4.1.1: ``estproto cacerts URL --fingerprint ...``).
"""

from __future__ import annotations

import argparse
import getpass
from typing import Any, Callable

from cryptography import x509

from ..ca import CAError, CASettings, EmbeddedCA, NotFoundError, PendingState, StateError, StoreError
from ._common import CLIError, ExitCode, read_password

__all__ = ["add_parser", "init_ca", "CA_KEY_TYPES"]

#: Key types of the CA itself (``ca init --key-type``).
CA_KEY_TYPES = ("p256", "rsa", "ed25519")

_REASONS = tuple(flag.value for flag in x509.ReasonFlags)


def _actor() -> str:
    # Recorded in the audit log: which local account ran the command.
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def init_ca(
    data_dir: str, hostnames: list[str] | None, key_type: str = "p256", intermediate: bool = False,
    settings: CASettings | None = None,
) -> EmbeddedCA:
    """``EmbeddedCA.init`` with the CLI's error translation (caller closes it).

    Args:
        hostnames: names for the TLS certificate; None opens an existing CA
            as it is.

    Raises:
        CLIError: REFUSED when the directory cannot be used.
    """
    try:
        if hostnames is None:
            return EmbeddedCA.open(data_dir, settings=settings)
        return EmbeddedCA.init(
            data_dir, hostnames=hostnames, key_type=key_type,  # type: ignore[arg-type]
            intermediate=intermediate, settings=settings,
        )
    except (CAError, StoreError, ValueError) as exc:
        raise CLIError(ExitCode.REFUSED, f"cannot initialise the CA in {data_dir}: {exc}") from None
    except OSError as exc:
        raise CLIError(ExitCode.REFUSED, f"cannot initialise the CA in {data_dir}: {exc.strerror or exc}") from None


def _open(data_dir: str) -> EmbeddedCA:
    try:
        return EmbeddedCA.open(data_dir)
    except (CAError, StoreError) as exc:
        raise CLIError(ExitCode.REFUSED, str(exc)) from None


def _with_ca(action: Callable[[EmbeddedCA, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        ca = _open(args.data_dir)
        try:
            return action(ca, args)
        except (NotFoundError, StateError) as exc:
            raise CLIError(ExitCode.REFUSED, str(exc)) from None
        except StoreError as exc:
            raise CLIError(ExitCode.REFUSED, f"store error: {exc}") from None
        finally:
            ca.close()

    return run


# -- actions -----------------------------------------------------------------


def _cmd_init(args: argparse.Namespace) -> int:
    ca = init_ca(args.data_dir, args.hostname or ["127.0.0.1", "localhost"], args.key_type, args.intermediate)
    try:
        print(f"CA ready in {args.data_dir}")
        print(f"  root:        {ca.root_certificate.subject.rfc4514_string()}")
        if ca.issuer_certificate != ca.root_certificate:
            print(f"  issuing CA:  {ca.issuer_certificate.subject.rfc4514_string()}")
        print(f"  trust file:  {ca.data_dir / 'ca.pem'}")
        print(f"  fingerprint: {ca.fingerprint()}")
    finally:
        ca.close()
    return 0


def _add_user(ca: EmbeddedCA, args: argparse.Namespace) -> int:
    password = read_password(args.name, confirm=True)
    try:
        ca.add_user(args.name, password, actor=_actor())
    except ValueError as exc:
        raise CLIError(ExitCode.USAGE, str(exc)) from None
    print(f"user {args.name} saved")
    return 0


def _list(ca: EmbeddedCA, args: argparse.Namespace) -> int:
    if args.pending:
        state = None if args.all else PendingState.PENDING
        rows = ca.list_pending(state)
        print("id\tstate\toperation\trequester\tsubject\treceived")
        for p in rows:
            print(f"{p.id}\t{p.state.value}\t{p.operation}\t{p.requester}\t{p.subject}\t"
                  f"{p.created_at:%Y-%m-%d %H:%M:%S}")
        return 0
    print("serial\tstatus\toperation\trequester\tsubject\tnot_after")
    for r in ca.list_issued():
        status = f"revoked({r.revocation_reason})" if r.revoked else "valid"
        print(f"{r.serial}\t{status}\t{r.operation}\t{r.requester}\t{r.subject}\t{r.not_after:%Y-%m-%d}")
    return 0


def _approve(ca: EmbeddedCA, args: argparse.Namespace) -> int:
    record = ca.approve(args.id, actor=_actor())
    print(f"approved request {record.id} ({record.subject}); the client's next retry gets its certificate")
    return 0


def _reject(ca: EmbeddedCA, args: argparse.Namespace) -> int:
    record = ca.reject(args.id, args.note, actor=_actor())
    print(f"rejected request {record.id} ({record.subject})")
    return 0


def _revoke(ca: EmbeddedCA, args: argparse.Namespace) -> int:
    try:
        record = ca.revoke(args.serial, args.reason, actor=_actor())
    except ValueError as exc:
        raise CLIError(ExitCode.USAGE, str(exc)) from None
    print(f"revoked {record.serial} ({record.subject}): {record.revocation_reason}")
    return 0


def _fingerprint(ca: EmbeddedCA, args: argparse.Namespace) -> int:
    print(ca.fingerprint())
    return 0


# -- parser ------------------------------------------------------------------


def add_parser(commands: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add ``ca`` and its subcommands to *commands* (an argparse subparsers
    object)."""
    ca = commands.add_parser(
        "ca", help="operate the embedded CA (init, users, approvals, revocation)",
        description="Operate the embedded CA kept in a data directory.",
        epilog="example:\n  estproto ca init --data-dir ./est-ca --hostname 127.0.0.1",
        formatter_class=formatter,
    )
    sub = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=help, description=help[0].upper() + help[1:] + ".",
            epilog=f"example:\n  {example}", formatter_class=formatter,
        )
        p.add_argument("--data-dir", required=True, metavar="DIR", help="the CA's data directory")
        return p

    p = command("init", "create the CA in DIR (idempotent: an existing CA is kept)",
                "estproto ca init --data-dir ./est-ca --hostname 127.0.0.1 --hostname est.example")
    p.add_argument("--hostname", action="append", metavar="NAME",
                   help="name or IP address of the EST endpoint for its TLS certificate "
                        "(repeatable; default 127.0.0.1 and localhost)")
    p.add_argument("--key-type", choices=CA_KEY_TYPES, default="p256",
                   help="CA key type (default p256)")
    p.add_argument("--intermediate", action="store_true",
                   help="issue from an intermediate CA under the root")
    p.set_defaults(func=_cmd_init)

    p = command("add-user", "create or replace an HTTP user (password from $ESTPROTO_PASSWORD or a prompt)",
                "ESTPROTO_PASSWORD=secret estproto ca add-user --data-dir ./est-ca alice")
    p.add_argument("name", metavar="NAME", help="the user name")
    p.set_defaults(func=_with_ca(_add_user))

    p = command("list", "list issued certificates, or pending requests with --pending",
                "estproto ca list --data-dir ./est-ca --pending")
    p.add_argument("--pending", action="store_true", help="list deferred requests awaiting approval")
    p.add_argument("--all", action="store_true", help="with --pending: also decided requests")
    p.set_defaults(func=_with_ca(_list))

    p = command("approve", "approve a pending request; the client's next retry gets its certificate",
                "estproto ca approve --data-dir ./est-ca 3")
    p.add_argument("id", type=int, metavar="ID", help="request id from 'ca list --pending'")
    p.set_defaults(func=_with_ca(_approve))

    p = command("reject", "reject a pending request; the client's retries get 403",
                "estproto ca reject --data-dir ./est-ca 3 --note 'unknown device'")
    p.add_argument("id", type=int, metavar="ID", help="request id from 'ca list --pending'")
    p.add_argument("--note", default="", help="why (kept in the store)")
    p.set_defaults(func=_with_ca(_reject))

    p = command("revoke", "revoke a certificate (it can no longer authenticate or re-enroll)",
                "estproto ca revoke --data-dir ./est-ca 5f3a... --reason keyCompromise")
    p.add_argument("serial", metavar="SERIAL", help="serial number in hex, as 'ca list' shows it")
    p.add_argument("--reason", choices=_REASONS, default="unspecified", metavar="REASON",
                   help="RFC 5280 reason: " + ", ".join(_REASONS))
    p.set_defaults(func=_with_ca(_revoke))

    p = command("fingerprint", "print the root's SHA-256 fingerprint, for client bootstrap",
                "estproto ca fingerprint --data-dir ./est-ca")
    p.set_defaults(func=_with_ca(_fingerprint))
