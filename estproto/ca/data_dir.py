"""The CA's data directory: creating it, extending its TLS certificate, loading it.

One data directory holds everything::

    DIR/root.pem, root.key                 the root CA (P-256 by default)
    DIR/intermediate.pem, intermediate.key optional issuing CA
    DIR/server.pem, server.key             TLS certificate of the EST endpoint
    DIR/ca.pem                             what a client trusts: the root
                                           (and intermediate): it verifies both
                                           the TLS endpoint and issued certs
    DIR/digest.secret                      HMAC key of Digest nonces, shared by
                                           every worker process
    DIR/estproto.db                        the SQLite store (see store.py)
    DIR/config.json                        written last: marks a complete init

With the CA keys in a PKCS#11 token (``pkcs11`` given to
:func:`create_or_update`) there are no root.key and intermediate.key: the
issuing key is the token's ``key_label`` and an intermediate's root key
``<key_label>-root`` in the same token; config.json records where (never
the PIN). The TLS key of the endpoint stays a file: every TLS handshake
uses it, and a token round trip per handshake is not what an HSM is for.

Key files are created with mode 0600 and written atomically (temporary file,
fsync, rename); :func:`create_or_update` holds an exclusive ``flock`` so
that several ``serve --workers N`` processes starting at once create one CA,
not several.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..codecs.external_key import ExternalSigningKey
from .errors import CAError
from .keys import PrivateKey, SigningKey, cert_pem, key_pem, load_key, new_key
from .pkcs11_token import Pkcs11Settings, TokenKey, create_key, open_key
from .policy import BACKDATE, end_entity_key_usage
from .signer import sign_certificate
from .store import IssuedRecord, Store
from .store_location import open_store

__all__ = ["CA_FILES", "CAMaterial", "create_or_update", "load", "read_config", "write_file",
           "check_key_matches",
           "ROOT_VALIDITY_DAYS", "INTERMEDIATE_VALIDITY_DAYS", "SERVER_VALIDITY_DAYS"]

#: Names of the files in the data directory.
CA_FILES = {
    "root_cert": "root.pem", "root_key": "root.key",
    "intermediate_cert": "intermediate.pem", "intermediate_key": "intermediate.key",
    "server_cert": "server.pem", "server_key": "server.key",
    "trust": "ca.pem", "digest_secret": "digest.secret", "store": "estproto.db",
    "config": "config.json", "lock": ".init.lock",
}

#: Format version of config.json.
_CONFIG_FORMAT = 1

#: Validity of the CA certificates and of the EST endpoint's TLS certificate.
ROOT_VALIDITY_DAYS = 3650
INTERMEDIATE_VALIDITY_DAYS = 1825
SERVER_VALIDITY_DAYS = 397


@dataclass(frozen=True)
class CAMaterial:
    """What a loaded data directory holds."""

    #: The root certificate and its key (None when the key is in a token:
    #: nothing after init signs with it).
    root: tuple[x509.Certificate, PrivateKey | None]
    #: The issuing certificate and its key (None when the key is in the
    #: token :attr:`pkcs11` names: open it with :func:`open_key`).
    issuer: tuple[x509.Certificate, PrivateKey | None]
    server: tuple[x509.Certificate, PrivateKey]
    realm: str
    digest_secret: bytes
    #: config.json's store location (None: DIR/estproto.db).
    store_location: str | None = None
    #: Where the issuing key lives when it is in a PKCS#11 token.
    pkcs11: Pkcs11Settings | None = None


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write *data* atomically with *mode* (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may only have narrowed it; be exact
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class _FileLock:
    """An exclusive ``flock`` on a file, as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> _FileLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _ca_cert(
    key: SigningKey, subject: x509.Name, issuer: x509.Certificate | None,
    issuer_key: SigningKey | None, days: int, path_length: int | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]  # our own CA: EC, RSA or EdDSA
            critical=False,
        )
    return sign_certificate(builder, issuer_key or key)


def _server_cert(
    key: PrivateKey, hostnames: Sequence[str], issuer: x509.Certificate, issuer_key: SigningKey,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = end_entity_key_usage(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=SERVER_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hostnames]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]  # our own CA: EC, RSA or EdDSA
            critical=False,
        )
    )
    return sign_certificate(builder, issuer_key)


def _record_server_certificate(d: Path, store: Store | None, server: x509.Certificate,
                               action: str, detail: str) -> None:
    own = store is None
    st = store or open_store(_config_store(d), d / CA_FILES["store"])
    try:
        st.record_issued(IssuedRecord.for_certificate(
            server, requester="init", request_der=None, label="", operation="init"))
        st.audit("init", action, detail)
    finally:
        if own:
            st.close()


def _config_store(d: Path) -> str | None:
    config = read_config(d)
    location = None if config is None else config.get("store")
    return None if location is None else str(location)


def _write_config(d: Path, config: dict[str, Any]) -> None:
    write_file(d / CA_FILES["config"], json.dumps(config, indent=2).encode() + b"\n", 0o644)


def create_or_update(
    d: Path, hostnames: list[str], key_type: str, intermediate: bool, realm: str, store: Store | None,
    store_location: str | None = None, pkcs11: Pkcs11Settings | None = None,
) -> None:
    """Create the CA in *d* (mode 0700) unless it exists; an existing one
    gets a TLS certificate covering *hostnames* too if it does not yet.
    A new CA's config.json records *store_location* (where *store* is),
    and its keys are made in the token *pkcs11* names, if given (see
    the module docstring)."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _FileLock(d / CA_FILES["lock"]):
        if not (d / CA_FILES["config"]).exists():
            _create(d, hostnames, key_type, intermediate, realm, store, store_location, pkcs11)
        else:
            _cover_hostnames(d, hostnames, store)


def _root_label(pkcs11: Pkcs11Settings) -> str:
    return f"{pkcs11.key_label}-root"


def _create(
    d: Path, hostnames: list[str], key_type: str, intermediate: bool, realm: str, store: Store | None,
    store_location: str | None, pkcs11: Pkcs11Settings | None,
) -> None:
    if pkcs11 is None:
        _create_with_keys(d, hostnames, key_type, intermediate, realm, store, store_location,
                          new_key(key_type), new_key(key_type) if intermediate else None, None)
        return
    if key_type not in ("p256", "rsa"):
        raise CAError(f"a CA key in a PKCS#11 token is p256 or rsa, not {key_type}")
    opened: list[TokenKey] = []
    try:
        if intermediate:
            opened.append(create_key(pkcs11.with_key_label(_root_label(pkcs11)), key_type))
        opened.append(create_key(pkcs11, key_type))
        root_key, issuer_key = (opened[0], opened[1]) if intermediate else (opened[0], None)
        _create_with_keys(d, hostnames, key_type, intermediate, realm, store, store_location,
                          root_key, issuer_key, pkcs11)
    finally:
        for key in opened:
            key.close()


def _create_with_keys(
    d: Path, hostnames: list[str], key_type: str, intermediate: bool, realm: str, store: Store | None,
    store_location: str | None, root_key: SigningKey, intermediate_key: SigningKey | None,
    pkcs11: Pkcs11Settings | None,
) -> None:
    tag = secrets.token_hex(4)
    root_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "estproto"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"estproto Root CA {tag}"),
    ])
    root = _ca_cert(root_key, root_name, None, None, ROOT_VALIDITY_DAYS, None)
    issuer, issuer_key = root, root_key
    files: list[tuple[str, bytes, int]] = [("root_cert", cert_pem(root), 0o644)]
    if not isinstance(root_key, ExternalSigningKey):
        files.append(("root_key", key_pem(root_key), 0o600))
    trust = cert_pem(root)
    if intermediate_key is not None:
        issuer_key = intermediate_key
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "estproto"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"estproto Issuing CA {tag}"),
        ])
        issuer = _ca_cert(issuer_key, name, root, root_key, INTERMEDIATE_VALIDITY_DAYS, 0)
        files.append(("intermediate_cert", cert_pem(issuer), 0o644))
        if not isinstance(issuer_key, ExternalSigningKey):
            files.append(("intermediate_key", key_pem(issuer_key), 0o600))
        trust = cert_pem(issuer) + trust
    server_key = new_key("rsa" if key_type == "rsa" else "p256")
    server = _server_cert(server_key, hostnames, issuer, issuer_key)
    files += [("server_key", key_pem(server_key), 0o600), ("server_cert", cert_pem(server), 0o644),
              ("trust", trust, 0o644), ("digest_secret", secrets.token_bytes(32), 0o600)]
    for name_key, data, mode in files:
        write_file(d / CA_FILES[name_key], data, mode)
    _record_server_certificate(
        d, store, server, "init", f"root={root.subject.rfc4514_string()} key={key_type} "
        f"intermediate={intermediate} hosts={','.join(hostnames)}")
    # Written last: its presence means the directory is complete.
    config: dict[str, Any] = {"format": _CONFIG_FORMAT, "key_type": key_type,
                              "intermediate": intermediate, "hostnames": hostnames, "realm": realm}
    if store_location is not None:
        config["store"] = store_location
    if pkcs11 is not None:
        config["pkcs11"] = pkcs11.to_config()
    _write_config(d, config)


def _cover_hostnames(d: Path, hostnames: list[str], store: Store | None) -> None:
    config = json.loads((d / CA_FILES["config"]).read_text())
    current = list(config.get("hostnames", []))
    missing = [h for h in hostnames if h not in current]
    if not missing:
        return
    wanted = current + missing
    issuer_name = "intermediate" if config.get("intermediate") else "root"
    issuer = x509.load_pem_x509_certificate((d / CA_FILES[f"{issuer_name}_cert"]).read_bytes())
    server_key = load_key(d / CA_FILES["server_key"])
    if "pkcs11" in config:
        token_key = open_key(Pkcs11Settings.from_config(config["pkcs11"]))
        try:
            check_key_matches(token_key, issuer)
            server = _server_cert(server_key, wanted, issuer, token_key)
        finally:
            token_key.close()
    else:
        server = _server_cert(server_key, wanted, issuer, load_key(d / CA_FILES[f"{issuer_name}_key"]))
    _record_server_certificate(d, store, server, "server-certificate", f"hosts={','.join(wanted)}")
    write_file(d / CA_FILES["server_cert"], cert_pem(server), 0o644)
    config["hostnames"] = wanted
    _write_config(d, config)


def read_config(d: Path) -> dict[str, Any] | None:
    """config.json of the CA in *d* (key_type, intermediate, hostnames,
    realm), or None when *d* holds no CA yet.

    Raises:
        CAError: the file exists but cannot be read or parsed.
    """
    path = d / CA_FILES["config"]
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CAError(f"{path}: unreadable ({exc})") from None
    return value if isinstance(value, dict) else None


def load(d: Path) -> CAMaterial:
    """The certificates, keys and secrets of an initialised data directory.

    Raises:
        CAError: not initialised, or its files are unreadable.
    """
    config_path = d / CA_FILES["config"]
    if not config_path.exists():
        raise CAError(f"{d} is not an initialised estproto CA (run: estproto ca init --data-dir {d})")
    try:
        config = json.loads(config_path.read_text())
        if config.get("format") != _CONFIG_FORMAT:
            raise CAError(f"{config_path}: unknown format {config.get('format')!r}")
        pkcs11 = Pkcs11Settings.from_config(config["pkcs11"]) if "pkcs11" in config else None

        def key(name: str) -> PrivateKey | None:
            return None if pkcs11 is not None else load_key(d / CA_FILES[name])

        root: tuple[x509.Certificate, PrivateKey | None] = (
            x509.load_pem_x509_certificate((d / CA_FILES["root_cert"]).read_bytes()),
            key("root_key"))
        issuer = root
        if config.get("intermediate"):
            issuer = (x509.load_pem_x509_certificate((d / CA_FILES["intermediate_cert"]).read_bytes()),
                      key("intermediate_key"))
        server = (x509.load_pem_x509_certificate((d / CA_FILES["server_cert"]).read_bytes()),
                  load_key(d / CA_FILES["server_key"]))
        digest_secret = (d / CA_FILES["digest_secret"]).read_bytes()
    except (OSError, ValueError) as exc:
        raise CAError(f"cannot load the CA in {d}: {exc}") from exc
    location = config.get("store")
    return CAMaterial(root=root, issuer=issuer, server=server,
                      realm=str(config.get("realm", "estproto")), digest_secret=digest_secret,
                      store_location=None if location is None else str(location), pkcs11=pkcs11)


def check_key_matches(key: SigningKey, certificate: x509.Certificate) -> None:
    """Raises CAError unless *key* is the key of *certificate* (a token
    holding another key under the recorded label must not sign)."""
    if key.public_key() != certificate.public_key():
        raise CAError(f"the CA key does not match the certificate of "
                      f"{certificate.subject.rfc4514_string()}")
