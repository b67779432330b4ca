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

``ca issue`` is offline issuance by the operator: a certificate for a key it
generates (``--subject``/``--san``/``--key-type``, the key saved with mode
0600) or for a ready PKCS#10 (``--csr``, whose signature must verify). It
goes through the CA's public :meth:`EmbeddedCA.enroll` with the operator as
principal, so it is recorded in the store like any issuance (requester
``operator:<account>``, operation ``simpleenroll``) and can authenticate as
a TLS client certificate, which the CA accepts only from its store.
``--ra`` issues a Registration Authority certificate: "If the client's
certificate was issued by the EST CA, and it includes the id-kp-cmcRA
[RFC6402] extended key usage extension, then the client is a Registration
Authority (RA)" (RFC 7030 3.7). The profile is per CA, not per request, so
the directory is opened with a profile holding the EKUs (and ``--days``)
this one certificate needs.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import sys
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from .._errors import DecodeError, LocalProtocolError
from ..auth import ID_KP_CMC_RA
from ..ca import (
    CAError,
    CASettings,
    EmbeddedCA,
    NotFoundError,
    PendingState,
    Profile,
    SignerError,
    StateError,
    StoreError,
)
from ..ca.data_dir import read_config
from ..ca.pkcs11_token import PIN_ENV, Pkcs11Settings
from ..ca.store_location import check_location
from ..codecs import pkcs10
from ._client import KEY_TYPES, _read_csr, _subject, new_key
from ._common import (
    KEY_PASSWORD_ENV, CLIError, ExitCode, KeyPassphrase, parse_names, positive_count, read_password,
    validity_days, write_output, write_private_key,
)

__all__ = ["add_parser", "init_ca", "CA_KEY_TYPES"]

#: Key types of the CA itself (``ca init --key-type``).
CA_KEY_TYPES = ("p256", "rsa", "ed25519")

_REASONS = tuple(flag.value for flag in x509.ReasonFlags)


def _account() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _actor() -> str:
    # Recorded in the audit log: which local account ran the command.
    account = _account()
    return f"cli:{account}" if account else "cli"


def _operator() -> str:
    # The requester of an operator issuance, as 'ca list' shows it.
    account = _account()
    return f"operator:{account}" if account else "operator"


#: ``--store``'s help, the same for serve and every ca command.
STORE_HELP = ("where the records live: postgresql://[USER@]HOST[:PORT]/DB (password from "
              "PGPASSWORD or ~/.pgpass, never in the URL) or an SQLite file; default: what "
              "'ca init --store' recorded, else DIR/estproto.db")


def store_location(text: str) -> str:
    """argparse type of ``--store``."""
    try:
        return check_location(text)
    except CAError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def init_ca(
    data_dir: str, hostnames: list[str] | None, key_type: str = "p256", intermediate: bool = False,
    settings: CASettings | None = None, store: str | None = None,
    pkcs11: Pkcs11Settings | None = None,
) -> EmbeddedCA:
    """``EmbeddedCA.init`` with the CLI's error translation (caller closes it).

    Args:
        hostnames: names for the TLS certificate; None opens an existing CA
            as it is.
        store: ``--store`` (a new CA records it).
        pkcs11: ``--pkcs11-module`` and friends (a new CA's keys).

    Raises:
        CLIError: REFUSED when the directory cannot be used.
    """
    try:
        if hostnames is None:
            return EmbeddedCA.open(data_dir, settings=settings, store_location=store)
        return EmbeddedCA.init(
            data_dir, hostnames=hostnames, key_type=key_type,  # type: ignore[arg-type]  # argparse choices; init() re-checks
            intermediate=intermediate, settings=settings, store_location=store, pkcs11=pkcs11,
        )
    except (CAError, SignerError, StoreError, ValueError) as exc:
        raise CLIError(ExitCode.REFUSED, f"cannot initialise the CA in {data_dir}: {exc}") from None
    except OSError as exc:
        raise CLIError(ExitCode.REFUSED, f"cannot initialise the CA in {data_dir}: {exc.strerror or exc}") from None


def _open(data_dir: str, settings: CASettings | None = None, store: str | None = None) -> EmbeddedCA:
    try:
        return EmbeddedCA.open(data_dir, settings=settings, store_location=store)
    except (CAError, StoreError) as exc:
        raise CLIError(ExitCode.REFUSED, str(exc)) from None


def _with_ca(
    action: Callable[[EmbeddedCA, argparse.Namespace], int],
    settings: CASettings | None = None,
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        ca = _open(args.data_dir, settings, args.store)
        try:
            return action(ca, args)
        except (NotFoundError, StateError, SignerError) as exc:
            raise CLIError(ExitCode.REFUSED, str(exc)) from None
        except StoreError as exc:
            raise CLIError(ExitCode.REFUSED, f"store error: {exc}") from None
        finally:
            ca.close()

    return run


# -- actions -----------------------------------------------------------------


def _existing_config(data_dir: str) -> dict[str, Any] | None:
    """The config of the CA already in *data_dir*, or None."""
    try:
        return read_config(Path(data_dir))
    except CAError as exc:
        raise CLIError(ExitCode.REFUSED, str(exc)) from None


def _cmd_init(args: argparse.Namespace) -> int:
    existing = _existing_config(args.data_dir)
    if existing is not None:
        # init is idempotent, but must not claim settings it did not apply.
        wanted = {"key_type": args.key_type, "intermediate": True if args.intermediate else None}
        differs = [f"--{k.replace('_', '-')} (it has {existing.get(k)})" for k, v in wanted.items()
                   if v is not None and existing.get(k) != v]
        if args.pkcs11_module is not None and existing.get("pkcs11") is None:
            differs.append("--pkcs11-module (its keys are files)")
        if differs:
            raise CLIError(ExitCode.REFUSED, f"a CA already exists in {args.data_dir}: "
                                             f"{', '.join(differs)} applies to a new CA only")
    ca = init_ca(args.data_dir, args.hostname or ["127.0.0.1", "localhost"], args.key_type or "p256",
                 args.intermediate, store=args.store, pkcs11=_pkcs11_settings(args))
    try:
        print(f"CA ready in {args.data_dir}" + (" (existing)" if existing is not None else " (new)"))
        print(f"  root:        {ca.root_certificate.subject.rfc4514_string()}")
        if ca.issuer_certificate != ca.root_certificate:
            print(f"  issuing CA:  {ca.issuer_certificate.subject.rfc4514_string()}")
        print(f"  trust file:  {ca.data_dir / 'ca.pem'}")
        print(f"  fingerprint: {ca.fingerprint()}")
        if existing is None and args.pkcs11_module is not None:
            print(f"  CA key:      PKCS#11 token {args.token_label!r}, label {args.key_label!r}")
    finally:
        ca.close()
    return 0


def _pkcs11_settings(args: argparse.Namespace) -> Pkcs11Settings | None:
    """``--pkcs11-module``, ``--token-label``, ``--key-label`` and
    ``--pkcs11-pin-file``: all of the first three, or none."""
    given = {"--pkcs11-module": args.pkcs11_module, "--token-label": args.token_label,
             "--key-label": args.key_label}
    if all(v is None for v in given.values()):
        if args.pkcs11_pin_file is not None:
            raise CLIError(ExitCode.USAGE, "--pkcs11-pin-file needs --pkcs11-module")
        return None
    missing = [flag for flag, v in given.items() if not v]
    if missing:
        raise CLIError(ExitCode.USAGE, f"a CA key in a PKCS#11 token needs {', '.join(missing)} "
                                       f"too")
    pin_file = None if args.pkcs11_pin_file is None else str(Path(args.pkcs11_pin_file).resolve())
    try:
        return Pkcs11Settings(str(Path(args.pkcs11_module).resolve()), args.token_label,
                              args.key_label, pin_file)
    except CAError as exc:
        raise CLIError(ExitCode.USAGE, str(exc)) from None


def _list_users(ca: EmbeddedCA, args: argparse.Namespace) -> int:
    for name in ca.list_users():
        print(name)
    return 0


def _remove_user(ca: EmbeddedCA, args: argparse.Namespace) -> int:
    if not ca.remove_user(args.name, actor=_actor()):
        raise CLIError(ExitCode.REFUSED, f"no user {args.name!r}")
    print(f"user {args.name} removed")
    return 0


def _add_user(ca: EmbeddedCA, args: argparse.Namespace) -> int:
    password = read_password(args.name, confirm=args.password_file is None, file=args.password_file)
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


def _crl(ca: EmbeddedCA, args: argparse.Namespace) -> int:
    crl = ca.crl(datetime.timedelta(hours=args.hours))
    encoding = serialization.Encoding.DER if args.format == "der" else serialization.Encoding.PEM
    write_output(args.out, crl.public_bytes(encoding))
    assert crl.next_update_utc is not None
    print(f"CRL with {len(crl)} revoked certificate(s), next update {crl.next_update_utc:%Y-%m-%d %H:%M} UTC",
          file=sys.stderr)
    return 0


def _crl_hours(text: str) -> int:
    try:
        hours = int(text)
    except ValueError:
        hours = 0
    if not 1 <= hours <= 24 * 366:
        raise argparse.ArgumentTypeError(f"{text!r}: whole hours from 1 to {24 * 366}")
    return hours


def _fingerprint(ca: EmbeddedCA, args: argparse.Namespace) -> int:
    print(ca.fingerprint())
    return 0


_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ID_KP_CMC_RA: "cmcRA",
}


def _issue_settings(args: argparse.Namespace, csr: pkcs10.CertificationRequest) -> CASettings:
    """The profile of this one certificate. The CA's other settings stay the
    defaults: no manual approval (the operator's command is the approval)."""
    ekus: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.CLIENT_AUTH,)
    if args.ra:
        ekus += (ID_KP_CMC_RA,)
        if csr.subject_alt_names:
            # A gateway is also the TLS server its devices talk EST to.
            ekus = (ExtendedKeyUsageOID.SERVER_AUTH,) + ekus
    if args.days is None:
        return CASettings(profile=Profile(extended_key_usages=ekus))
    return CASettings(profile=Profile(extended_key_usages=ekus, validity_days=args.days))


def _issue_request(args: argparse.Namespace) -> tuple[pkcs10.CertificationRequest, pkcs10.PrivateKey | None]:
    """Check the arguments and read or build the request, before the CA is
    opened (a usage error records nothing).

    Returns:
        The request, and the generated key (None with ``--csr``), not yet saved.
    """
    if args.csr:
        extra = [flag for flag, value in (("--subject", args.subject), ("--san", args.san),
                                          ("--key-type", args.key_type), ("--key-out", args.key_out),
                                          ("--key-password-file", args.key_password_file))
                 if value]
        if extra:
            raise CLIError(ExitCode.USAGE, f"--csr carries the subject, names and key: "
                                           f"drop {', '.join(extra)}")
        der = _read_csr(args.csr)
        try:
            # Whoever made the request must hold its key: the self-signature
            # is the proof (RFC 2986 section 3), operator or not.
            return pkcs10.decode_csr(der, verify=True), None
        except DecodeError as exc:
            raise CLIError(ExitCode.REFUSED, f"{args.csr}: not issuing: {exc}") from None
    if not args.key_out:
        raise CLIError(ExitCode.USAGE, "a new key is generated: give --key-out FILE to keep it "
                                       "(or --csr FILE for a request made elsewhere)")
    subject = _subject(args)
    sans = parse_names(args.san or ())
    key = new_key(args.key_type or "p256")
    try:
        der = pkcs10.build_csr(key, subject, subject_alt_names=sans)
    except LocalProtocolError as exc:
        raise CLIError(ExitCode.USAGE, str(exc)) from None
    return pkcs10.decode_csr(der, verify=False), key


def _issue(
    ca: EmbeddedCA, args: argparse.Namespace, csr: pkcs10.CertificationRequest, key: pkcs10.PrivateKey | None,
) -> int:
    from .._events import CertificateResponse, ConnectionFacts, SimpleEnrollRequest
    from ..ca import Principal

    if key is not None:
        # Saved before issuing: no certificate is recorded for a key that
        # could not be kept.
        write_private_key(args.key_out, key, KeyPassphrase(args.key_password_file).given())
    request = SimpleEnrollRequest(label="", credentials=None, facts=ConnectionFacts(is_tls=False, peer="cli"),
                                  csr=csr)
    response = ca.enroll(request, Principal(_operator(), "operator"))
    if not isinstance(response, CertificateResponse):
        raise CLIError(ExitCode.REFUSED, f"not issued: {getattr(response, 'reason', response)}")
    cert = response.certificate
    subject = cert.subject.rfc4514_string()
    ekus = ",".join(_EKU_NAMES.get(oid, oid.dotted_string) for oid in ca.settings.profile.extended_key_usages)
    ca.store.audit(_actor(), "issue", f"serial={cert.serial_number:x} subject={subject} eku={ekus}")
    chain = (cert,) + ca.ca_certificates[:-1]  # then any intermediate, never the root
    write_output(args.out, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    print(f"issued {cert.serial_number:x} ({subject}), EKU {ekus}, until {cert.not_valid_after_utc:%Y-%m-%d}",
          file=sys.stderr)
    return 0


def _cmd_issue(args: argparse.Namespace) -> int:
    csr, key = _issue_request(args)
    return _with_ca(lambda ca, a: _issue(ca, a, csr, key), _issue_settings(args, csr))(args)


# -- parser ------------------------------------------------------------------


def add_parser(commands: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add ``ca`` and its subcommands to *commands* (an argparse subparsers
    object)."""
    ca = commands.add_parser(
        "ca", help="operate the embedded CA (init, users, approvals, revocation, CRLs)",
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
        p.add_argument("--store", type=store_location, metavar="LOCATION", help=STORE_HELP)
        return p

    p = command("init", "create the CA in DIR (idempotent: an existing CA is kept)",
                "estproto ca init --data-dir ./est-ca --hostname 127.0.0.1 --hostname est.example")
    p.add_argument("--hostname", action="append", metavar="NAME",
                   help="name or IP address of the EST endpoint for its TLS certificate "
                        "(repeatable; default 127.0.0.1 and localhost)")
    p.add_argument("--key-type", choices=CA_KEY_TYPES, default=None,
                   help="CA key type (default p256; a new CA only)")
    p.add_argument("--intermediate", action="store_true",
                   help="issue from an intermediate CA under the root")
    hsm = p.add_argument_group(
        "CA key in a PKCS#11 token (a new CA only; p256 or rsa)",
        f"The key is generated in the token (or an existing one with --key-label is used) and "
        f"never leaves it. The user PIN comes from --pkcs11-pin-file or ${PIN_ENV}, never a "
        f"flag; an --intermediate's root key is <key-label>-root in the same token.")
    hsm.add_argument("--pkcs11-module", metavar="PATH",
                     help="the token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so")
    hsm.add_argument("--token-label", metavar="LABEL", help="the token's label")
    hsm.add_argument("--key-label", metavar="LABEL", help="the CA key's CKA_LABEL in the token")
    hsm.add_argument("--pkcs11-pin-file", metavar="FILE",
                     help=f"file holding the user PIN (recorded in config.json; default ${PIN_ENV})")
    p.set_defaults(func=_cmd_init)

    p = command("add-user", "create or replace an HTTP user (password from $ESTPROTO_PASSWORD or a prompt)",
                "ESTPROTO_PASSWORD=secret estproto ca add-user --data-dir ./est-ca alice")
    p.add_argument("name", metavar="NAME", help="the user name")
    p.add_argument("--password-file", metavar="FILE", help="read the password from the first line of FILE")
    p.set_defaults(func=_with_ca(_add_user))

    p = command("list-users", "list the HTTP users", "estproto ca list-users --data-dir ./est-ca")
    p.set_defaults(func=_with_ca(_list_users))

    p = command("remove-user", "delete an HTTP user (its certificates stay valid)",
                "estproto ca remove-user --data-dir ./est-ca alice")
    p.add_argument("name", metavar="NAME", help="the user name")
    p.set_defaults(func=_with_ca(_remove_user))

    p = command("list", "list issued certificates, or pending requests with --pending",
                "estproto ca list --data-dir ./est-ca --pending")
    p.add_argument("--pending", action="store_true", help="list deferred requests awaiting approval")
    p.add_argument("--all", action="store_true", help="with --pending: also decided requests")
    p.set_defaults(func=_with_ca(_list))

    p = command("approve", "approve a pending request; the client's next retry gets its certificate",
                "estproto ca approve --data-dir ./est-ca 3")
    p.add_argument("id", type=positive_count, metavar="ID", help="request id from 'ca list --pending'")
    p.set_defaults(func=_with_ca(_approve))

    p = command("reject", "reject a pending request; the client's retries get 403",
                "estproto ca reject --data-dir ./est-ca 3 --note 'unknown device'")
    p.add_argument("id", type=positive_count, metavar="ID", help="request id from 'ca list --pending'")
    p.add_argument("--note", default="", help="why (kept in the store)")
    p.set_defaults(func=_with_ca(_reject))

    p = command("revoke", "revoke a certificate (it can no longer authenticate or re-enroll)",
                "estproto ca revoke --data-dir ./est-ca 5f3a... --reason keyCompromise")
    p.add_argument("serial", metavar="SERIAL", help="serial number in hex, as 'ca list' shows it")
    p.add_argument("--reason", choices=_REASONS, default="unspecified", metavar="REASON",
                   help="RFC 5280 reason: " + ", ".join(_REASONS))
    p.set_defaults(func=_with_ca(_revoke))

    p = command("crl", "write a CRL of the revoked certificates, signed by the issuing CA (RFC 5280)",
                "estproto ca crl --data-dir ./est-ca --out crl.pem\n"
                "  openssl verify -crl_check -CRLfile crl.pem -CAfile ./est-ca/ca.pem device.pem")
    p.add_argument("--out", metavar="FILE", help="where to write it (default stdout)")
    p.add_argument("--format", choices=("pem", "der"), default="pem", help="encoding (default pem)")
    p.add_argument("--hours", type=_crl_hours, default=24, metavar="N",
                   help="hours until its nextUpdate (default 24)")
    p.set_defaults(func=_with_ca(_crl))

    p = command("fingerprint", "print the root's SHA-256 fingerprint, for client bootstrap",
                "estproto ca fingerprint --data-dir ./est-ca")
    p.set_defaults(func=_with_ca(_fingerprint))

    p = command("issue", "issue a certificate offline, recorded in the store (--ra: an RA certificate)",
                "estproto ca issue --data-dir ./est-ca --subject CN=gateway --san DNS:gw.example "
                "--ra --key-out gw.key --out gw.pem\n"
                "  estproto ca issue --data-dir ./est-ca --csr req.pem --out dev.pem")
    g = p.add_argument_group("the request (a generated key, or --csr)")
    g.add_argument("--subject", metavar="DN", help="subject, e.g. 'CN=gateway,O=Example'")
    g.add_argument("--san", action="append", metavar="NAMES",
                   help="subjectAltName entries: DNS:name,IP:addr,URI:uri,email:addr (repeatable)")
    g.add_argument("--key-type", choices=KEY_TYPES, default=None,
                   help="type of the generated key (default p256)")
    g.add_argument("--key-out", metavar="FILE", help="where to save the generated key (PEM, mode 0600)")
    g.add_argument("--key-password-file", metavar="FILE",
                   help=f"encrypt the saved key with the passphrase on FILE's first line (or ${KEY_PASSWORD_ENV})")
    g.add_argument("--csr", metavar="FILE",
                   help="issue for this PKCS#10 (PEM or DER; its signature must verify) instead")
    p.add_argument("--ra", action="store_true",
                   help="a Registration Authority certificate (RFC 7030 3.7): EKU clientAuth and "
                        "id-kp-cmcRA, plus serverAuth when it has subjectAltNames")
    p.add_argument("--days", type=validity_days, metavar="N", help="validity in days (default 365)")
    p.add_argument("--out", metavar="FILE",
                   help="write the certificate, then any intermediate CA, as PEM (default stdout)")
    p.set_defaults(func=_cmd_issue)

