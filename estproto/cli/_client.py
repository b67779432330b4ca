"""The EST client commands: ``cacerts``, ``enroll``, ``reenroll``, ``serverkeygen``,
``csrattrs``, ``fullcmc`` (RFC 7030 4.1-4.5), over the trio adapter.

Every command takes the server's URL, ``https://HOST[:PORT]/.well-known/est``
with an optional CA label segment (RFC 7030 3.2.2), and exactly one way to
trust the server (RFC 7030 3.1, 3.6):

* ``--cacert FILE``: an Explicit Trust Anchor database (e.g. the server's
  ``DIR/ca.pem``);
* ``--fingerprint SHA256``: bootstrap (RFC 7030 4.1.1). A provisional TLS
  connection that does not verify the server carries only ``/cacerts``
  ("The client MUST NOT ... use HTTP authentication" there: the core never
  answers a challenge on it); the CA is accepted only if one of the returned
  certificates has that SHA-256 fingerprint, and that certificate alone then
  becomes the explicit trust anchor of a new, verified connection;
* ``--insecure``: the same bootstrap without the fingerprint check, i.e.
  trust whatever CA the server shows; loudly warned about.

Credentials (RFC 7030 3.2.3): ``--user NAME`` with the password from
``$ESTPROTO_PASSWORD`` or a prompt, never argv; and/or ``--cert``/``--key``,
a TLS client certificate (3.3.2). The client answers a Basic or Digest
challenge only once it has verified the server.

Keys: ``--key-type`` generates a key (saved to ``--key-out``, mode 0600,
before the request is sent), ``--key`` uses an existing one, ``--csr`` sends
a ready PKCS#10 (PEM or DER) as it is. An existing ``--key-out`` file is
never overwritten without ``--force``: its key is used again, so the same
command repeated after a 202 asks for the same key (RFC 7030 4.2.3). Output
paths are checked before anything is sent. With a generated or given key the CSR is
linked to the TLS channel (RFC 7030 3.5: tls-unique / tls-exporter in
challengePassword), rebuilt for each connection that carries it; ``--no-pop``
turns that off.

Exit codes are :class:`~estproto.cli._common.ExitCode` (see ``estproto --help``).
"""

from __future__ import annotations

import argparse
import base64
import re
import secrets
import sys
import urllib.parse
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from .._adapter_common import (
    CONNECT_TIMEOUT,
    MAX_RETRIES,
    MAX_RETRY_WAIT,
    ESTAuthenticationError,
    ESTError,
    ESTPendingError,
)
from .._errors import DecodeError, LocalProtocolError, RemoteProtocolError
from .._paths import WELL_KNOWN_PREFIX
from .._tls import ClientTLSContext, TLSError
from ..chain import issuer_chain
from ..client import Credentials, check_fingerprint
from ..codecs import cmc, csrattrs, pkcs7, pkcs10
from ._common import (
    EXIT_CODES_HELP,
    CLIError,
    ExitCode,
    KEY_PASSWORD_ENV,
    KeyPassphrase,
    check_output_path,
    count,
    parse_names,
    parse_subject,
    positive_seconds,
    seconds,
    setup_client_logging,
    validity_days,
    read_certificates,
    read_password,
    read_private_key,
    write_output,
    write_private_key,
)

__all__ = ["add_parsers", "parse_url", "Target", "new_key", "KEY_TYPES"]

#: Key types the client generates (``--key-type``).
KEY_TYPES = ("p256", "p384", "rsa2048", "rsa3072", "ed25519")

_DEFAULT_PORT = 443


@dataclass(frozen=True)
class Target:
    """Where an EST URL points.

    Attributes:
        host: name or address (brackets removed).
        port: TCP port (443 when the URL has none).
        label: the CA label, "" for none.
    """

    host: str
    port: int
    label: str


def parse_url(url: str) -> Target:
    """Parse ``https://HOST[:PORT]/.well-known/est[/LABEL]``.

    Raises:
        CLIError: USAGE for anything else (another scheme, path, a query).
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CLIError(ExitCode.USAGE, f"bad URL {url!r}: {exc}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise CLIError(ExitCode.USAGE, f"bad URL {url!r}: expected https://HOST[:PORT]/.well-known/est")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise CLIError(ExitCode.USAGE, f"bad URL {url!r}: no query, fragment or user:password@ "
                                       "(use --user and $ESTPROTO_PASSWORD)")
    path = parts.path.rstrip("/")
    if path != WELL_KNOWN_PREFIX and not path.startswith(WELL_KNOWN_PREFIX + "/"):
        raise CLIError(ExitCode.USAGE, f"bad URL {url!r}: the path must be {WELL_KNOWN_PREFIX}[/LABEL]")
    label = path[len(WELL_KNOWN_PREFIX):].lstrip("/")
    return Target(parts.hostname, port or _DEFAULT_PORT, urllib.parse.unquote(label))


def new_key(kind: str) -> pkcs10.PrivateKey:
    """A fresh private key of *kind* (one of :data:`KEY_TYPES`)."""
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind in ("rsa2048", "rsa3072"):
        return rsa.generate_private_key(65537, int(kind[3:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise CLIError(ExitCode.USAGE, f"unknown key type {kind!r}")


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- trust and connection ------------------------------------------------------


def _warn(message: str) -> None:
    print(f"estproto: {message}", file=sys.stderr, flush=True)


def _normalise_fingerprint(value: str) -> str:
    hexdigits = re.sub(r"[\s:]", "", value)
    if not re.fullmatch(r"[0-9a-fA-F]{64}", hexdigits):
        raise CLIError(ExitCode.USAGE, "--fingerprint: expected a SHA-256 fingerprint "
                                       "(64 hex digits, colons allowed), as 'estproto ca fingerprint' prints")
    return hexdigits


class _Session:
    """The trust, credentials and client options of one command."""

    def __init__(self, args: argparse.Namespace, need_credentials: bool = False) -> None:
        self.args = args
        self.target = parse_url(args.url)
        setup_client_logging(getattr(args, "verbose", 0))
        self.anchors: list[x509.Certificate] | None = None
        if args.cacert:
            self.anchors = read_certificates(args.cacert, "trust anchor file")
        self.fingerprint = _normalise_fingerprint(args.fingerprint) if args.fingerprint else None
        self.client_chain: list[x509.Certificate] = []
        self.client_key: pkcs10.PrivateKey | None = None
        self.passphrase = KeyPassphrase(getattr(args, "key_password_file", None))
        cert = getattr(args, "cert", None)
        key = getattr(args, "key", None)
        if cert:
            if not key:
                raise CLIError(ExitCode.USAGE, "--cert needs --key (the certificate's private key)")
            self.client_chain = read_certificates(cert, "client certificate")
            self.client_key = read_private_key(key, self.passphrase)
            if _spki(self.client_key.public_key()) != _spki(self.client_chain[0].public_key()):
                raise CLIError(ExitCode.USAGE, f"{key} is not the key of {cert}")
        self.credentials: Credentials | None = None
        user = getattr(args, "user", None)
        if user:
            self.credentials = Credentials(
                user, read_password(user, file=getattr(args, "password_file", None)))

    def _client(self, tls: ClientTLSContext, *, credentials: Credentials | None = None) -> Any:
        from ..trio import ESTClient

        return ESTClient(
            self.target.host, self.target.port, tls, credentials=credentials,
            label=self.target.label, max_retries=getattr(self.args, "max_retries", MAX_RETRIES),
            max_retry_wait=getattr(self.args, "max_retry_wait", MAX_RETRY_WAIT),
            request_timeout=self.args.timeout, connect_timeout=min(self.args.timeout, CONNECT_TIMEOUT),
        )

    async def bootstrap(self) -> list[x509.Certificate]:
        """RFC 7030 4.1.1: /cacerts over an unverified connection, then the
        out-of-band check. Returns the certificates it fetched."""
        if self.fingerprint is None:
            _warn("WARNING: --insecure: the server is NOT authenticated; whoever answers "
                  "at this address is trusted as the CA")
        async with self._client(ClientTLSContext(verify=False)) as client:
            certs = list(await client.cacerts())
        if self.fingerprint is None:
            self.anchors = certs
        else:
            try:
                self.anchors = [check_fingerprint(certs, self.fingerprint)]
            except RemoteProtocolError:
                raise CLIError(ExitCode.TLS, "no CA certificate from the server has the expected "
                                             "fingerprint: not trusting it (RFC 7030 4.1.1)") from None
        return certs

    async def client(self, *, authenticate: bool = True) -> Any:
        """An ESTClient that verifies the server (bootstrapping first if needed)."""
        if self.anchors is None:
            await self.bootstrap()
        assert self.anchors is not None
        tls = ClientTLSContext(
            trust_anchors=self.anchors, client_certificate_chain=self.client_chain,
            client_private_key=self.client_key,
        )
        return self._client(tls, credentials=self.credentials if authenticate else None)


def _run(command: Callable[[], Awaitable[int]]) -> int:
    """Run *command* under trio, translating failures into exit codes."""
    import trio

    try:
        return trio.run(command)
    except CLIError:
        raise
    except ESTAuthenticationError as exc:
        raise CLIError(ExitCode.AUTHENTICATION, f"authentication failed: {exc.reason}") from None
    except ESTPendingError as exc:
        raise CLIError(ExitCode.PENDING, f"enrollment pending: {exc.reason}; run the same "
                                         "command again later (with the same key)") from None
    except ESTError as exc:
        raise CLIError(ExitCode.REFUSED, f"server refused: {exc.status} {exc.reason}") from None
    except TLSError as exc:
        raise CLIError(ExitCode.TLS, f"TLS failure: {exc}") from None
    except RemoteProtocolError as exc:
        raise CLIError(ExitCode.PROTOCOL, f"protocol error in the server's answer: {exc}") from None
    except OSError as exc:
        raise CLIError(ExitCode.NETWORK, f"network error: {exc.strerror or exc or type(exc).__name__}") from None
    except LocalProtocolError as exc:
        raise CLIError(ExitCode.USAGE, str(exc)) from None


# -- CSR material --------------------------------------------------------------


def _subject(args: argparse.Namespace, default: x509.Name | None = None) -> x509.Name:
    if args.subject:
        return parse_subject(args.subject)
    if default is not None:
        return default
    raise CLIError(ExitCode.USAGE, "give --subject, e.g. --subject CN=device-1")


def _read_csr(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CLIError(ExitCode.USAGE, f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" in data:
        body = re.search(rb"-----BEGIN [A-Z ]+-----(.*?)-----END [A-Z ]+-----", data, re.S)
        try:
            data = base64.b64decode(b"".join((body.group(1) if body else b"").split()), validate=True)
        except ValueError:
            raise CLIError(ExitCode.USAGE, f"{path}: bad PEM") from None
    try:
        pkcs10.decode_csr(data, verify=False)
    except DecodeError as exc:
        raise CLIError(ExitCode.USAGE, f"{path}: not a PKCS#10 request ({exc})") from None
    return data


def _csr_key(
    args: argparse.Namespace, existing: pkcs10.PrivateKey | None, passphrase: KeyPassphrase,
) -> pkcs10.PrivateKey:
    """The key the CSR is for: generated (``--key-type``), else *existing*
    (``--key``), else the key already in ``--key-out`` (an earlier run that
    got 202: the same command then asks again for the same key, RFC 7030
    4.2.3), else a generated P-256 key. A generated key is saved to
    ``--key-out`` before anything is sent, and never over an existing file
    without ``--force``."""
    if args.key_type is None and existing is not None:
        return existing
    if not args.key_out:
        raise CLIError(ExitCode.USAGE, "a new key is generated: give --key-out FILE to keep it "
                                       "(or --key FILE to use an existing key)")
    if Path(args.key_out).exists() and not getattr(args, "force", False):
        if args.key_type is not None:
            raise CLIError(ExitCode.USAGE, f"--key-out {args.key_out} exists: --force replaces it "
                                           "with a new key, or drop --key-type to use it")
        _warn(f"using the key in {args.key_out} (from an earlier run)")
        return read_private_key(args.key_out, passphrase)
    key = new_key(args.key_type or "p256")
    write_private_key(args.key_out, key, passphrase.given())
    return key


def _existing_key(args: argparse.Namespace, session: _Session) -> pkcs10.PrivateKey | None:
    if session.client_key is not None:
        return session.client_key
    return read_private_key(args.key, session.passphrase) if getattr(args, "key", None) else None


async def _chain_pool(args: argparse.Namespace, session: _Session, client: Any,
                      more: tuple[x509.Certificate, ...] = ()) -> list[x509.Certificate]:
    """With ``--chain``: the CA certificates the chain is built from, the
    server's current /cacerts (RFC 7030 4.1.3) and our trust anchors."""
    if not getattr(args, "chain", False):
        return []
    return [*more, *(await client.cacerts()), *(session.anchors or ())]


def _write_certificate(args: argparse.Namespace, cert: x509.Certificate,
                       pool: list[x509.Certificate] | None = None) -> None:
    """Write the issued certificate (with ``--chain``, followed by its CA
    certificates from *pool*). A chain that cannot be completed still
    leaves the certificate written, then fails: the CA has issued it."""
    encoding = serialization.Encoding.DER if args.format == "der" else serialization.Encoding.PEM
    missing = None
    chain: list[x509.Certificate] = []
    if getattr(args, "chain", False):
        try:
            chain = issuer_chain(cert, pool or [])
        except LookupError as exc:
            missing = str(exc)
    write_output(args.out, b"".join(c.public_bytes(encoding) for c in [cert, *chain]))
    _warn(f"issued: {cert.subject.rfc4514_string()}, serial {cert.serial_number:x}, "
          f"valid until {cert.not_valid_after_utc:%Y-%m-%d}"
          + (f", with {len(chain)} CA certificate(s)" if chain else ""))
    if missing is not None:
        raise CLIError(ExitCode.PROTOCOL, f"--chain: the issuer {missing} is neither in /cacerts nor "
                                          "a trust anchor; wrote the certificate alone")


# -- commands --------------------------------------------------------------


def _cmd_cacerts(args: argparse.Namespace) -> int:
    session = _Session(args)

    async def run() -> int:
        if session.anchors is None and session.fingerprint is None:
            certs = await session.bootstrap()  # --insecure: what we got is the answer
        else:
            async with await session.client(authenticate=False) as client:
                certs = list(await client.cacerts())
        if args.format == "der":
            write_output(args.out, pkcs7.encode_certs_only(certs))
        else:
            write_output(args.out, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
        for cert in certs:
            _warn(f"CA certificate: {cert.subject.rfc4514_string()}")
        return 0

    return _run(run)


def _check_request_flags(args: argparse.Namespace, *, key_out_kept: bool = False) -> None:
    """Refuse flags that would be silently ignored: a ready-made ``--csr``
    already holds the subject, names and key, and cannot be linked to a TLS
    channel it was signed before (RFC 7030 3.5). Settles ``--pop``'s default.
    Checks the output paths, so nothing is asked of the CA whose answer
    could not be saved."""
    check_output_path(getattr(args, "out", None), "--out")
    check_output_path(getattr(args, "key_out", None), "--key-out")
    if getattr(args, "chain", False) and args.format == "der":
        raise CLIError(ExitCode.USAGE, "--chain writes several certificates: use --format pem")
    pop = getattr(args, "pop", False)
    if args.csr:
        flags = [("--subject", args.subject), ("--san", args.san), ("--key-type", args.key_type),
                 ("--pop", pop)]
        if not key_out_kept:
            flags.append(("--key-out", args.key_out))
        extra = [flag for flag, value in flags if value]
        if extra:
            raise CLIError(ExitCode.USAGE, f"--csr already holds the subject, names and key and "
                                           f"cannot be linked to this connection: drop {', '.join(extra)}")
    if hasattr(args, "pop") and pop is None:
        args.pop = not args.csr


def _enroll_like(args: argparse.Namespace, reenroll: bool) -> int:
    _check_request_flags(args)
    session = _Session(args)
    if reenroll and session.client_key is None:
        raise CLIError(ExitCode.USAGE, "reenroll needs --cert and --key: the certificate being renewed")
    if reenroll and args.if_expires_within is not None and not _renewal_due(
            session.client_chain[0], args.if_expires_within):
        return 0
    csr_der: bytes | None = None
    key: pkcs10.PrivateKey | None = None
    if args.csr:
        csr_der = _read_csr(args.csr)
    else:
        current = session.client_chain[0] if reenroll else None
        subject = _subject(args, current.subject if current is not None else None)
        sans = parse_names(args.san or ())
        if not sans and current is not None and not args.subject:
            # RFC 7030 4.2.2: the SubjectAltName "MUST be identical to the
            # corresponding fields in the certificate being renewed".
            try:
                sans = list(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
            except x509.ExtensionNotFound:
                sans = []
        key = _csr_key(args, _existing_key(args, session), session.passphrase)

    async def run() -> int:
        async with await session.client() as client:
            if csr_der is not None:
                send = client.simplereenroll if reenroll else client.simpleenroll
                cert = await send(csr_der)
            else:
                assert key is not None
                if args.pop:
                    send_linked = client.simplereenroll_linked if reenroll else client.simpleenroll_linked
                    cert = await send_linked(key, subject, subject_alt_names=sans)
                else:
                    send = client.simplereenroll if reenroll else client.simpleenroll
                    cert = await send(pkcs10.build_csr(key, subject, subject_alt_names=sans))
            pool = await _chain_pool(args, session, client)
        if key is not None and _spki(cert.public_key()) != _spki(key.public_key()):
            raise CLIError(ExitCode.PROTOCOL, "the issued certificate does not hold our key")
        _write_certificate(args, cert, pool)
        return 0

    return _run(run)


def _renewal_due(cert: x509.Certificate, days: int) -> bool:
    """Whether *cert* expires within *days* (``reenroll --if-expires-within``:
    a cron job or systemd timer runs the same command daily and the server
    is asked only when renewal is due). Says which, either way."""
    import datetime

    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    until = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if left > datetime.timedelta(days=days):
        _warn(f"not due: {cert.subject.rfc4514_string()} is valid until {until}, "
              f"more than {days} day(s) away; nothing sent")
        return False
    _warn(f"renewing: {cert.subject.rfc4514_string()} expires {until}")
    return True


def _cmd_enroll(args: argparse.Namespace) -> int:
    return _enroll_like(args, reenroll=False)


def _cmd_reenroll(args: argparse.Namespace) -> int:
    return _enroll_like(args, reenroll=True)


#: What this client can open, announced with --encrypt-key: AES key wrap
#: (kari, RFC 3565) and RSAES-OAEP (ktri, RFC 4055).
_DECRYPT_CAPABILITIES = (
    "2.16.840.1.101.3.4.1.45",  # id-aes256-wrap
    "2.16.840.1.101.3.4.1.5",  # id-aes128-wrap
    "1.2.840.113549.1.1.7",  # id-RSAES-OAEP
)


def _key_identifier(cert: x509.Certificate) -> bytes:
    """The certificate's subjectKeyIdentifier, or RFC 5280 4.2.1.2's method 1."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _cmd_serverkeygen(args: argparse.Namespace) -> int:
    _check_request_flags(args, key_out_kept=True)
    session = _Session(args)
    if not args.key_out:
        raise CLIError(ExitCode.USAGE, "give --key-out FILE: where to save the key the server generates")
    if Path(args.key_out).exists() and not args.force:
        raise CLIError(ExitCode.USAGE, f"--key-out {args.key_out} exists: --force replaces it")
    csr_der: bytes | None = _read_csr(args.csr) if args.csr else None
    # RFC 7030 4.4.1: the server "MUST ignore the public key values and
    # signature in the CSR"; our throwaway key only says which type we want.
    throwaway = new_key(args.key_type or "p256")
    subject = _subject(args) if csr_der is None else x509.Name([])  # --csr has its own
    csr_kwargs: dict[str, Any] = {"subject_alt_names": parse_names(args.san or ())}
    decryption_key: pkcs10.PrivateKey | None = None
    if args.encrypt_key:
        if session.client_key is None:
            raise CLIError(ExitCode.USAGE, "--encrypt-key needs --cert and --key: the server "
                                           "encrypts the new key to that certificate's key")
        decryption_key = session.client_key
        # RFC 7030 4.4.1.2: AsymmetricDecryptKeyIdentifier names the key to
        # encrypt to; 4.4.2: the server picks a key wrap algorithm from the
        # SMIMECapabilities "that the client included".
        csr_kwargs["asymmetric_decrypt_key_identifier"] = _key_identifier(session.client_chain[0])
        csr_kwargs["smime_capabilities"] = _DECRYPT_CAPABILITIES

    async def run() -> int:
        async with await session.client() as client:
            if csr_der is not None:
                # A ready-made CSR carries its own attributes; --encrypt-key
                # then only says which key opens the answer.
                result = await client.serverkeygen(csr_der, decryption_key=decryption_key)
            elif args.pop:
                result = await client.serverkeygen_linked(
                    throwaway, subject, decryption_key=decryption_key, **csr_kwargs)
            else:
                result = await client.serverkeygen(
                    pkcs10.build_csr(throwaway, subject, **csr_kwargs), decryption_key=decryption_key)
            pool = await _chain_pool(args, session, client)
        if result.private_key is None:
            raise CLIError(ExitCode.PROTOCOL, "the server sent an encrypted key we cannot open")
        if args.encrypt_key and result.encrypted_key is None:
            # The extra protection asked for is missing: refuse rather than
            # quietly save a key that travelled under TLS alone.
            raise CLIError(ExitCode.PROTOCOL, "the server sent the key unencrypted, "
                                              "although --encrypt-key asked for encryption")
        if _spki(result.private_key.public_key()) != _spki(result.certificate.public_key()):
            raise CLIError(ExitCode.PROTOCOL, "the server's key does not match its certificate")
        write_private_key(args.key_out, result.private_key, session.passphrase.given())
        _write_certificate(args, result.certificate, pool)
        return 0

    return _run(run)


_OID_NAMES = {
    csrattrs.ID_CHALLENGE_PASSWORD: "challengePassword",
    csrattrs.ID_EXTENSION_REQUEST: "extensionRequest",
    csrattrs.ID_RSA_ENCRYPTION: "rsaEncryption",
    csrattrs.ID_EC_PUBLIC_KEY: "id-ecPublicKey",
    csrattrs.ID_ED25519: "id-Ed25519",
    csrattrs.ID_ED448: "id-Ed448",
    csrattrs.ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE: "id-aa-certificationRequestInfoTemplate",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
    "1.2.840.10045.3.1.7": "secp256r1",
    "1.3.132.0.34": "secp384r1",
    "1.3.6.1.1.1.1.22": "macAddress",
}


def _cmd_csrattrs(args: argparse.Namespace) -> int:
    session = _Session(args)

    async def run() -> int:
        async with await session.client(authenticate=False) as client:
            attrs = await client.csrattrs()
        if args.format == "der":
            write_output(args.out, csrattrs.encode_csrattrs(attrs or csrattrs.CsrAttributes()))
            return 0
        lines = []
        for entry in (attrs.entries if attrs is not None else ()):
            name = _OID_NAMES.get(entry.oid, entry.oid)
            if isinstance(entry, csrattrs.RequiredOID):
                lines.append(f"oid {name}")
            else:
                lines.append(f"attribute {name} ({len(entry.values)} value(s))")
        if attrs is not None and attrs.key_type is not None:
            hint = attrs.key_type
            detail = _OID_NAMES.get(hint.curve or "", hint.curve) if hint.curve else (
                f"{hint.key_size} bits" if hint.key_size else "")
            lines.append(f"# key type wanted: {_OID_NAMES.get(hint.algorithm, hint.algorithm)} {detail}".rstrip())
        if attrs is not None and attrs.challenge_password_required:
            lines.append("# the server requires PoP linking (challengePassword)")
        text = "\n".join(lines) + "\n" if lines else "# no CSR attributes\n"
        write_output(args.out, text.encode())
        return 0

    return _run(run)


def _cmd_fullcmc(args: argparse.Namespace) -> int:
    _check_request_flags(args)
    session = _Session(args)
    existing = _existing_key(args, session)
    if args.csr:
        if existing is None:
            raise CLIError(ExitCode.USAGE, "with --csr, give --key: the CSR's key signs the CMC request")
        csr_der = _read_csr(args.csr)
        key = existing
    else:
        key = _csr_key(args, existing, session.passphrase)
        csr_der = pkcs10.build_csr(key, _subject(args), subject_alt_names=parse_names(args.san or ()))
    request = cmc.build_full_pki_request(
        csr_der, key, transaction_id=secrets.randbits(63), sender_nonce=secrets.token_bytes(16),
    )

    async def run() -> int:
        async with await session.client() as client:
            result = await client.fullcmc(request)
            pool = await _chain_pool(args, session, client, tuple(result.response.certificates))
        response = result.response
        if response.status is cmc.CMCStatus.PENDING:
            raise CLIError(ExitCode.PENDING, "CMC status pending: run the same command again later")
        if response.status is not cmc.CMCStatus.SUCCESS:
            fail = response.fail_info.name if response.fail_info is not None else "-"
            raise CLIError(ExitCode.REFUSED, f"CMC status {response.status.name} (failInfo {fail}): "
                                             f"{response.status_string or ''}".rstrip(": "))
        try:
            cert = pkcs7.find_issued_certificate(response.certificates, key.public_key())
        except (DecodeError, LookupError, ValueError):
            raise CLIError(ExitCode.PROTOCOL, "the CMC response holds no certificate for our key") from None
        _write_certificate(args, cert, pool)
        return 0

    return _run(run)


# -- parsers ---------------------------------------------------------------


def _common(p: argparse.ArgumentParser, *, credentials: bool, output: bool = True) -> None:
    p.add_argument("url", metavar="URL",
                   help="the EST server, https://HOST:PORT/.well-known/est[/LABEL]")
    trust = p.add_argument_group("trusting the server (exactly one)").add_mutually_exclusive_group(required=True)
    trust.add_argument("--cacert", metavar="FILE",
                       help="trust anchors, PEM (e.g. the server's DIR/ca.pem)")
    trust.add_argument("--fingerprint", metavar="SHA256",
                       help="bootstrap: accept the CA whose SHA-256 fingerprint this is "
                            "(from 'estproto ca fingerprint'), RFC 7030 4.1.1")
    trust.add_argument("--insecure", action="store_true",
                       help="trust whatever CA the server presents (testing only!)")
    if credentials:
        who = p.add_argument_group("authenticating")
        who.add_argument("--user", metavar="NAME",
                         help="HTTP user; the password comes from --password-file, "
                              "$ESTPROTO_PASSWORD or a prompt")
        who.add_argument("--password-file", metavar="FILE",
                         help="read --user's password from the first line of FILE")
        who.add_argument("--cert", metavar="FILE", help="TLS client certificate (PEM, may hold a chain)")
        who.add_argument("--key", metavar="FILE",
                         help="private key of --cert; without --key-type also the key the CSR is for")
        who.add_argument("--key-password-file", metavar="FILE",
                         help="passphrase of encrypted key files (first line of FILE; else "
                              f"${KEY_PASSWORD_ENV} or a prompt); keys written are encrypted with it")
    p.add_argument("--out", metavar="FILE", help="write the result here (default stdout)")
    p.add_argument("--format", choices=("pem", "der"), default="pem", help="output format (default pem)")
    p.add_argument("--timeout", type=positive_seconds, default=30.0, metavar="S",
                   help="seconds for connecting and for each response (default 30)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="say what happens on the wire: connections (TLS version, cipher, "
                        "server certificate), requests and answers; never credentials")


def _csr_options(p: argparse.ArgumentParser, *, pop: bool = True, key_out_help: str | None = None) -> None:
    g = p.add_argument_group("the request")
    g.add_argument("--subject", metavar="DN", help="subject, e.g. 'CN=device-1,O=Example'")
    g.add_argument("--san", action="append", metavar="NAMES",
                   help="subjectAltName entries: DNS:name,IP:addr,URI:uri,email:addr (repeatable)")
    g.add_argument("--key-type", choices=KEY_TYPES, default=None,
                   help="generate a new key of this type (default p256 when no --key is given)")
    g.add_argument("--key-out", metavar="FILE",
                   help=key_out_help or "where to save a generated key (PEM, mode 0600)")
    g.add_argument("--csr", metavar="FILE", help="send this ready-made PKCS#10 (PEM or DER) instead")
    g.add_argument("--force", action="store_true",
                   help="replace an existing --key-out file (otherwise its key is used again)")
    g.add_argument("--chain", action="store_true",
                   help="write the certificate followed by its CA certificates up to, not "
                        "including, the root (PEM; what a TLS server sends)")
    if pop:
        g.add_argument("--pop", action=argparse.BooleanOptionalAction, default=None,
                       help="link the CSR to the TLS channel, RFC 7030 3.5 (default on; "
                            "not possible with --csr)")


def _retry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-retries", type=count, default=MAX_RETRIES, metavar="N",
                   help=f"times to wait out a 202 Retry-After and ask again (default {MAX_RETRIES})")
    p.add_argument("--max-retry-wait", type=seconds, default=MAX_RETRY_WAIT, metavar="S",
                   help=f"longest Retry-After to wait for, seconds (default {MAX_RETRY_WAIT:g})")


def add_parsers(commands: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the client commands to *commands* (an argparse subparsers object)."""
    url = "https://127.0.0.1:8443/.well-known/est"

    def command(name: str, help: str, examples: list[str]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = commands.add_parser(
            name, help=help, description=help[0].upper() + help[1:] + ".",
            epilog="examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + EXIT_CODES_HELP,
            formatter_class=formatter,
        )
        return p

    p = command("cacerts", "fetch the CA certificates (GET /cacerts), PEM to --out or stdout", [
        f"estproto cacerts {url} --cacert ca.pem --out cacerts.pem",
        f"estproto cacerts {url} --fingerprint AB:CD:...:EF --out ca.pem   # bootstrap",
    ])
    _common(p, credentials=False)
    p.set_defaults(func=_cmd_cacerts)

    p = command("enroll", "get a certificate for a new or existing key (POST /simpleenroll)", [
        f"ESTPROTO_PASSWORD=secret estproto enroll {url} --cacert ca.pem --user alice "
        "--subject CN=device-1 --key-out device.key --out device.pem",
        f"estproto enroll {url} --cacert ca.pem --cert old.pem --key old.key "
        "--subject CN=device-2 --key-type p256 --key-out new.key --out new.pem",
    ])
    _common(p, credentials=True)
    _csr_options(p)
    _retry_options(p)
    p.set_defaults(func=_cmd_enroll)

    p = command("reenroll", "renew (same key) or rekey (--key-type) a certificate (POST /simplereenroll)", [
        f"estproto reenroll {url} --cacert ca.pem --cert device.pem --key device.key --out device-new.pem",
        f"estproto reenroll {url} --cacert ca.pem --cert device.pem --key device.key --out device.pem "
        "--if-expires-within 30   # daily from cron",
    ])
    _common(p, credentials=True)
    _csr_options(p)
    _retry_options(p)
    p.add_argument("--if-expires-within", type=validity_days, metavar="DAYS",
                   help="only if --cert expires within DAYS days; otherwise say so and exit 0 "
                        "without contacting the server (for cron jobs and timers)")
    p.set_defaults(func=_cmd_reenroll)

    p = command("serverkeygen", "have the server generate the key and certificate (POST /serverkeygen)", [
        f"ESTPROTO_PASSWORD=secret estproto serverkeygen {url} --cacert ca.pem --user alice "
        "--subject CN=device-3 --key-out device3.key --out device3.pem",
        f"estproto serverkeygen {url} --cacert ca.pem --cert device.pem --key device.key --encrypt-key "
        "--subject CN=device-4 --key-out device4.key --out device4.pem",
    ])
    _common(p, credentials=True)
    _csr_options(p, key_out_help="where to save the key the server generated (required)")
    p.add_argument("--encrypt-key", action="store_true",
                   help="ask for the key encrypted to the --cert/--key certificate's key on top "
                        "of TLS (RFC 7030 4.4.1.2)")
    _retry_options(p)
    p.set_defaults(func=_cmd_serverkeygen)

    p = command("csrattrs", "show what the server wants in a CSR (GET /csrattrs)", [
        f"estproto csrattrs {url} --cacert ca.pem",
    ])
    _common(p, credentials=False)
    p.set_defaults(func=_cmd_csrattrs)

    p = command("fullcmc", "enroll with a CMC Full PKI Request (POST /fullcmc)", [
        f"ESTPROTO_PASSWORD=secret estproto fullcmc {url} --cacert ca.pem --user alice "
        "--subject CN=device-4 --key-out device4.key --out device4.pem",
    ])
    _common(p, credentials=True)
    _csr_options(p, pop=False)
    _retry_options(p)
    p.set_defaults(func=_cmd_fullcmc)
