"""The embedded CA: the default :class:`~estproto.ca.CABackend` (RFC 7030 4.1-4.5).

One data directory holds everything, created by :meth:`EmbeddedCA.init` (and
reused by every later ``init`` or :meth:`EmbeddedCA.open`)::

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

Key files are created with mode 0600 and written atomically (temporary file,
fsync, rename); ``init`` holds an exclusive ``flock`` so that several
``serve --workers N`` processes starting at once create one CA, not several.

Issuing (RFC 7030 4.2): the profile copies the CSR's subject and its
subjectAltName extension and ignores every other requested extension unless
the profile lists its OID (never basicConstraints, keyUsage, EKU, SKI, AKI or
nameConstraints: those are the CA's to set). It adds basicConstraints
CA:false, keyUsage digitalSignature (plus keyEncipherment for RSA keys and
keyAgreement for EC keys, so a device key can also receive a
server-generated key encrypted to it, RFC 7030 4.4.1.2), the EKUs of the
profile (clientAuth by default), SKI and AKI. Serial numbers are
random 159-bit integers (``x509.random_serial_number``); the store's UNIQUE
constraint is the final word, and a collision is retried with a new serial.
A certificate is returned only after :meth:`Store.record_issued` committed it.

Authorization (RFC 7030 3.2.3, 3.3.2): a TLS client certificate that
verified against our CA *and* is in our store, unrevoked (so revocation is
effective without a CRL on the TLS layer), or HTTP Basic / Digest against
the users table. Basic checks cost one scrypt (~80 ms); successful checks are
remembered for a short time under HMAC(process secret, user, password), so
a client sending Basic on every request pays once. Unknown users are checked
against a dummy hash and cost the same as a wrong password.

Deferred enrollment (RFC 7030 4.2.3): in manual-approval mode a request is
answered "202 Accepted" with Retry-After and recorded; "the client ... is
expected to periodically repeat the same request". The repeat is recognised
by :meth:`EmbeddedCA.request_fingerprint`: a hash of the operation, label,
authenticated requester, the CSR's public key and its subject and SAN. Not
the CSR bytes: a client polling on a new TLS connection must regenerate a
PoP-linked CSR (the challengePassword changes, and with it the signature).
The requester is part of it so nobody else can collect an approved request
(essential for serverkeygen, whose answer holds a private key). The
certificate is issued when the client retries after approval, by the server
process that holds the CA key: ``approve`` only changes a row, so the
operator's command needs no access to the CA key. A later identical retry
gets the same certificate again (the response may have been lost); for
serverkeygen, whose key is never stored, a retry after delivery starts a new
request.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .. import auth
from .._errors import BadSignature, DecodeError, LocalProtocolError
from .._est_server import ESTServerSettings
from .._events import (
    AuthenticationRequired,
    CertificateResponse,
    ErrorResponse,
    FullCMCRequest,
    FullCMCResponse,
    RetryLater,
    ServerKeygenRequest,
    ServerKeygenResponse,
    ServerRequest,
    ServerResponse,
    SimpleEnrollRequest,
    SimpleReenrollRequest,
)
from .._paths import WELL_KNOWN_PREFIX, Operation, format_est_path
from .._response_future import InlineHandler, ResponseFuture
from .._tls import ServerTLSContext
from ..codecs import cmc, pkcs10, serverkey
from ..codecs.csrattrs import (
    ID_CHALLENGE_PASSWORD,
    ID_EC_PUBLIC_KEY,
    ID_ED25519,
    ID_RSA_ENCRYPTION,
    CsrAttributes,
    RequestedAttribute,
    RequiredOID,
)
from .backend import CABackend, Principal

if TYPE_CHECKING:
    from .backend import Handler
from .store import (
    DuplicateSerialError,
    IssuedRecord,
    PendingRecord,
    PendingState,
    SQLiteStore,
    StateError,
    Store,
    StoreError,
)

__all__ = ["EmbeddedCA", "CASettings", "Profile", "CAError", "KeyType", "CA_FILES", "AUTH_SCHEMES", "DEFAULT_AUTH_SCHEMES"]

_log = logging.getLogger("estproto.ca")

PrivateKey = Union[
    ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey
]
KeyType = Literal["p256", "rsa", "ed25519"]

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

#: Backdating of notBefore, for clients whose clock is a little behind.
_BACKDATE = datetime.timedelta(minutes=5)

#: Attempts at a fresh serial number after a collision (2**-159 each).
_SERIAL_ATTEMPTS = 5

#: Most remembered successful Basic checks; beyond it the cache is cleared.
#: Bounds memory when many distinct users authenticate.
MAX_BASIC_CACHE = 4096

#: Extensions a CSR can never set: the CA decides them.
_NEVER_COPIED = frozenset({
    "2.5.29.19",  # basicConstraints
    "2.5.29.15",  # keyUsage
    "2.5.29.37",  # extendedKeyUsage
    "2.5.29.14",  # subjectKeyIdentifier
    "2.5.29.35",  # authorityKeyIdentifier
    "2.5.29.30",  # nameConstraints
    "2.5.29.17",  # subjectAltName (copied through its own path)
})

_OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
_OID_SHA256_RSA = "1.2.840.113549.1.1.11"
_DER_SECP256R1 = bytes.fromhex("06082a8648ce3d030107")
_DER_INT_2048 = bytes.fromhex("02020800")

_CURVES: Mapping[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1,
}


class CAError(Exception):
    """The CA cannot be set up or loaded (not initialised, unreadable or
    inconsistent files, unsupported settings)."""


class _Refused(Exception):
    """An enrollment the profile refuses: answered 4xx (CMC: badRequest)."""

    def __init__(self, status: int, reason: str,
                 fail_info: cmc.CMCFailInfo = cmc.CMCFailInfo.BAD_REQUEST) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.fail_info = fail_info


@dataclass(frozen=True)
class Profile:
    """What issued certificates look like.

    Attributes:
        validity_days: lifetime of issued certificates.
        extended_key_usages: EKU OIDs put in every certificate.
        copy_extensions: dotted OIDs of further requested extensions copied
            from the CSR (never those in the CA's own list).
        min_rsa_bits: smallest RSA modulus accepted.
        serverkeygen_key_type: key generated by /serverkeygen when the CSR's
            key type is not one we generate.
    """

    validity_days: int = 365
    extended_key_usages: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.CLIENT_AUTH,)
    copy_extensions: frozenset[str] = frozenset()
    min_rsa_bits: int = 2048
    serverkeygen_key_type: KeyType = "p256"

    def __post_init__(self) -> None:
        if self.validity_days < 1:
            raise CAError("validity_days must be at least 1")
        bad = self.copy_extensions & _NEVER_COPIED
        if bad:
            raise CAError(f"the CA sets these extensions itself: {sorted(bad)}")


#: HTTP authentication schemes the embedded CA can offer, with the Digest
#: algorithm each stands for (RFC 7617, RFC 7616).
AUTH_SCHEMES: Mapping[str, str | None] = {
    "basic": None, "digest-sha256": "SHA-256", "digest-md5": "MD5",
}
DEFAULT_AUTH_SCHEMES = ("basic", "digest-sha256", "digest-md5")


@dataclass(frozen=True)
class CASettings:
    """Run-time policy of an :class:`EmbeddedCA` (not stored in the data dir).

    Attributes:
        profile: the certificate profile.
        manual_approval: enrollments wait for an operator (202 + Retry-After).
        retry_after: seconds given in Retry-After while pending.
        pop_policy: proof-of-possession linking (3.5); REQUIRE also lists
            challengePassword in /csrattrs. Also used by /fullcmc.
        labels: CA labels served besides the unlabelled paths (all map to
            this one CA; the label is recorded with each certificate).
        accept_basic, accept_digest, accept_certificates: authentication
            methods accepted (all by default).
        auth_schemes: the HTTP schemes of a 401, in the order sent, from
            :data:`AUTH_SCHEMES` (those switched off by ``accept_basic`` /
            ``accept_digest`` are left out). Basic comes first by default:
            Bouncy Castle's EST client answers only the first challenge and
            its plain ``HttpAuth`` cannot do Digest, while curl, libest and
            estproto's own client pick Digest wherever it is listed (RFC 7235
            4.1 leaves the order to the server; RFC 7030 3.2.3 allows either
            over TLS, and credentials are honoured only over TLS).
        basic_cache_seconds: how long a successful Basic check is remembered
            (0 disables; a changed password takes effect in other processes
            after at most this long).
        keks: DecryptKeyIdentifier -> AES key-encryption key for encrypted
            serverkeygen responses (RFC 7030 4.4.1.1).
        group_commit: batch store commits (see :mod:`estproto.ca.store`).
    """

    profile: Profile = field(default_factory=Profile)
    manual_approval: bool = False
    retry_after: int = 60
    pop_policy: auth.PoPPolicy = auth.PoPPolicy.VERIFY_IF_PRESENT
    labels: frozenset[str] = frozenset()
    accept_basic: bool = True
    accept_digest: bool = True
    accept_certificates: bool = True
    auth_schemes: tuple[str, ...] = DEFAULT_AUTH_SCHEMES
    basic_cache_seconds: float = 30.0
    keks: Mapping[bytes, bytes] = field(default_factory=dict, repr=False)
    group_commit: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", frozenset(self.labels))
        if self.retry_after < 0:
            raise CAError("retry_after must be >= 0")
        schemes = tuple(self.auth_schemes)
        object.__setattr__(self, "auth_schemes", schemes)
        unknown = [a for a in schemes if a not in AUTH_SCHEMES]
        if unknown or len(set(schemes)) != len(schemes):
            raise CAError(f"auth_schemes: each of {', '.join(AUTH_SCHEMES)} at most once, "
                          f"not {', '.join(schemes) or 'nothing'}")

    @property
    def challenge_schemes(self) -> tuple[str, ...]:
        """The schemes a 401 offers, in order (switched-off ones left out)."""
        return tuple(
            a for a in self.auth_schemes
            if (self.accept_basic if a == "basic" else self.accept_digest)
        )


# ---------------------------------------------------------------------------
# Files


def _write_file(path: Path, data: bytes, mode: int) -> None:
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


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey,
                            ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise CAError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def _new_key(kind: str) -> PrivateKey:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise CAError(f"unsupported key type {kind!r} (p256, rsa, ed25519)")


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 384:
        return hashes.SHA512()
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _ca_cert(
    key: PrivateKey, subject: x509.Name, issuer: x509.Certificate | None,
    issuer_key: PrivateKey | None, days: int, path_length: int | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    signer = issuer_key or key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
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
    return builder.sign(signer, _hash_for(signer))


def _san_text(names: Sequence[x509.GeneralName]) -> str:
    return ", ".join(f"{type(n).__name__[:-4] or 'Name'}:{getattr(n, 'value', n)}" for n in names)


def _normalise_serial(serial: int | str) -> str:
    if isinstance(serial, int):
        return format(serial, "x")
    text = serial.strip().lower().replace(":", "")
    if text.startswith("0x"):
        text = text[2:]
    try:
        return format(int(text, 16), "x")
    except ValueError:
        raise ValueError(f"not a hexadecimal serial number: {serial!r}") from None


def _lp(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: unambiguous input for a hash."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


# ---------------------------------------------------------------------------


#: AES key wrap algorithms a client may list in SMIMECapabilities (RFC 3565).
_KEY_WRAPS: dict[str, Literal["aes128_wrap", "aes192_wrap", "aes256_wrap"]] = {
    "2.16.840.1.101.3.4.1.5": "aes128_wrap",
    "2.16.840.1.101.3.4.1.25": "aes192_wrap",
    "2.16.840.1.101.3.4.1.45": "aes256_wrap",
}


def _end_entity_key_usage(key: object) -> x509.KeyUsage:
    """keyUsage of an end-entity certificate for *key* (a public key).

    digitalSignature for every key (TLS client and server authentication,
    signing); keyEncipherment for RSA (key transport) and keyAgreement for EC
    (ECDH): RFC 7030 4.4.1.2 "If the key identified is bound to an X.509
    certificate, then the key MUST either explicitly support keyTransport or
    keyAgreement", so these let a device receive a server-generated key
    encrypted to it. EdDSA keys can only sign.
    """
    rsa_key = isinstance(key, rsa.RSAPublicKey)
    ec_key = isinstance(key, ec.EllipticCurvePublicKey)
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
        data_encipherment=False, key_agreement=ec_key, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )


@dataclass(frozen=True)
class _Draft:
    """A certificate ready to sign but for its serial number (drawn anew
    on each :meth:`sign`, should the store find it taken)."""

    ca: EmbeddedCA
    builder: x509.CertificateBuilder
    csr: pkcs10.CertificationRequest
    sans: list[x509.GeneralName]
    not_after: datetime.datetime
    principal: Principal
    label: str
    operation: Operation
    request_der: bytes

    def sign(self) -> tuple[x509.Certificate, IssuedRecord]:
        key = self.ca._issuer_key
        cert = self.builder.serial_number(x509.random_serial_number()).sign(key, _hash_for(key))
        record = self.ca._record_from(
            cert, subject=self.csr.subject, sans=self.sans, not_after=self.not_after,
            requester=self.principal.name, request_der=self.request_der, label=self.label,
            operation=self.operation.value)
        return cert, record

    def log_issued(self, record: IssuedRecord) -> None:
        _log.info("issued serial %s to %s (%s, subject %s)", record.serial, self.principal.name,
                  self.operation.value, record.subject)


class EmbeddedCA(CABackend):
    """The embedded CA backend (use :meth:`init` or :meth:`open`).

    Thread-safe: the server calls it from many worker threads.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        store: Store,
        root: tuple[x509.Certificate, PrivateKey],
        issuer: tuple[x509.Certificate, PrivateKey],
        server: tuple[x509.Certificate, PrivateKey],
        realm: str,
        digest_secret: bytes,
        settings: CASettings,
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.settings = settings
        self.realm = realm
        self.root_certificate, self._root_key = root
        self.issuer_certificate, self._issuer_key = issuer
        self.server_certificate, self._server_key = server
        chain = [self.issuer_certificate] if self.issuer_certificate != self.root_certificate else []
        #: The CA certificates a client trusts (ca.pem, /cacerts): issuing CA first.
        self.ca_certificates: tuple[x509.Certificate, ...] = tuple(chain) + (self.root_certificate,)
        self._issuer_ski = x509.SubjectKeyIdentifier.from_public_key(
            self.issuer_certificate.public_key()
        )
        # What every issued certificate shares, built once rather than per
        # enrollment: the issuer and basicConstraints, as the start of each
        # builder; and the AKI.
        self._base_builder = (
            x509.CertificateBuilder()
            .issuer_name(self.issuer_certificate.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._issuer_ski)
        algorithms = [AUTH_SCHEMES[a] for a in self.settings.auth_schemes if a != "basic"]
        self._digest = auth.DigestAuthority(
            digest_secret, realm, algorithms=[a for a in algorithms if a] or ["SHA-256"])
        # Credentials count only in a scheme the 401 offers (Digest answers
        # only for the algorithms offered: DigestAuthority checks that).
        offered = self.settings.challenge_schemes
        self._basic_offered = "basic" in offered
        self._digest_offered = any(a != "basic" for a in offered)
        self._cache_secret = secrets.token_bytes(32)
        self._basic_cache: dict[bytes, float] = {}
        self._cache_lock = threading.Lock()

    # -- construction ------------------------------------------------------

    @classmethod
    def init(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        hostnames: Sequence[str] = ("127.0.0.1", "localhost"),
        key_type: KeyType = "p256",
        intermediate: bool = False,
        realm: str = "estproto",
        settings: CASettings | None = None,
        store: Store | None = None,
    ) -> EmbeddedCA:
        """Create the CA in *data_dir*, or load it if it exists (idempotent).

        On a later call the existing CA is kept; *key_type*, *intermediate*
        and *realm* are ignored, and the TLS certificate is re-issued only
        if *hostnames* names a host it does not cover (it then covers the
        union: init never removes a name).

        Args:
            data_dir: created (mode 0700) if missing.
            hostnames: names and IP addresses of the EST endpoint (IP
                addresses become iPAddress SANs, the rest dNSName).
            key_type: "p256" (default), "rsa" (2048) or "ed25519" for the CA
                keys; the TLS key is P-256 except with "rsa".
            intermediate: issue from an intermediate CA under the root.
            realm: the HTTP authentication realm (Digest HA1 values depend
                on it, so it is fixed at init).
            settings: run-time policy.
            store: a store to use instead of DIR/estproto.db.

        Raises:
            CAError: unusable arguments or files.
            StoreError: the store cannot be opened or written.
            OSError: the directory cannot be created or written.
        """
        if not hostnames:
            raise CAError("at least one hostname is needed for the TLS certificate")
        if key_type not in ("p256", "rsa", "ed25519"):
            raise CAError(f"unsupported key type {key_type!r} (p256, rsa, ed25519)")
        auth.basic_challenge(realm)  # rejects a realm with control characters
        root_dir = Path(data_dir)
        root_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with cls._init_lock(root_dir):
            if not (root_dir / CA_FILES["config"]).exists():
                cls._create(root_dir, list(hostnames), key_type, intermediate, realm, store)
            else:
                cls._cover_hostnames(root_dir, list(hostnames), store)
        return cls.open(root_dir, settings=settings, store=store)

    @staticmethod
    def _init_lock(data_dir: Path) -> _FileLock:
        return _FileLock(data_dir / CA_FILES["lock"])

    @classmethod
    def _create(
        cls, d: Path, hostnames: list[str], key_type: str, intermediate: bool, realm: str,
        store: Store | None,
    ) -> None:
        tag = secrets.token_hex(4)
        root_key = _new_key(key_type)
        root_name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "estproto"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"estproto Root CA {tag}"),
        ])
        root = _ca_cert(root_key, root_name, None, None, ROOT_VALIDITY_DAYS, None)
        issuer, issuer_key = root, root_key
        files: list[tuple[str, bytes, int]] = [
            ("root_key", _key_pem(root_key), 0o600), ("root_cert", _cert_pem(root), 0o644),
        ]
        trust = _cert_pem(root)
        if intermediate:
            issuer_key = _new_key(key_type)
            name = x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "estproto"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"estproto Issuing CA {tag}"),
            ])
            issuer = _ca_cert(issuer_key, name, root, root_key, INTERMEDIATE_VALIDITY_DAYS, 0)
            files += [("intermediate_key", _key_pem(issuer_key), 0o600),
                      ("intermediate_cert", _cert_pem(issuer), 0o644)]
            trust = _cert_pem(issuer) + trust
        server_key = _new_key("rsa" if key_type == "rsa" else "p256")
        server = cls._server_cert(server_key, hostnames, issuer, issuer_key)
        files += [("server_key", _key_pem(server_key), 0o600), ("server_cert", _cert_pem(server), 0o644),
                  ("trust", trust, 0o644), ("digest_secret", secrets.token_bytes(32), 0o600)]
        for name_key, data, mode in files:
            _write_file(d / CA_FILES[name_key], data, mode)
        own = store is None
        st = store or SQLiteStore(d / CA_FILES["store"])
        try:
            st.record_issued(cls._record(server, requester="init", request_der=None, label="",
                                         operation="init"))
            st.audit("init", "init", f"root={root.subject.rfc4514_string()} key={key_type} "
                     f"intermediate={intermediate} hosts={','.join(hostnames)}")
        finally:
            if own:
                st.close()
        config = {"format": _CONFIG_FORMAT, "key_type": key_type, "intermediate": intermediate,
                  "hostnames": hostnames, "realm": realm}
        # Written last: its presence means the directory is complete.
        _write_file(d / CA_FILES["config"], json.dumps(config, indent=2).encode() + b"\n", 0o644)

    @staticmethod
    def _server_cert(
        key: PrivateKey, hostnames: Sequence[str], issuer: x509.Certificate, issuer_key: PrivateKey,
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = _end_entity_key_usage(key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
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
        return builder.sign(issuer_key, _hash_for(issuer_key))

    @classmethod
    def _cover_hostnames(cls, d: Path, hostnames: list[str], store: Store | None) -> None:
        config = json.loads((d / CA_FILES["config"]).read_text())
        current = list(config.get("hostnames", []))
        missing = [h for h in hostnames if h not in current]
        if not missing:
            return
        wanted = current + missing
        issuer_name = "intermediate" if config.get("intermediate") else "root"
        issuer = x509.load_pem_x509_certificate((d / CA_FILES[f"{issuer_name}_cert"]).read_bytes())
        issuer_key = _load_key(d / CA_FILES[f"{issuer_name}_key"])
        server_key = _load_key(d / CA_FILES["server_key"])
        server = cls._server_cert(server_key, wanted, issuer, issuer_key)
        own = store is None
        st = store or SQLiteStore(d / CA_FILES["store"])
        try:
            st.record_issued(cls._record(server, requester="init", request_der=None, label="",
                                         operation="init"))
            st.audit("init", "server-certificate", f"hosts={','.join(wanted)}")
        finally:
            if own:
                st.close()
        _write_file(d / CA_FILES["server_cert"], _cert_pem(server), 0o644)
        config["hostnames"] = wanted
        _write_file(d / CA_FILES["config"], json.dumps(config, indent=2).encode() + b"\n", 0o644)

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        settings: CASettings | None = None,
        store: Store | None = None,
    ) -> EmbeddedCA:
        """Load an initialised CA.

        Args:
            data_dir: a directory made by :meth:`init`.
            settings: run-time policy.
            store: a store to use instead of DIR/estproto.db.

        Raises:
            CAError: not initialised, or its files are unreadable.
            StoreError: the store cannot be opened or written (read-only
                directory, disk full, newer schema).
        """
        d = Path(data_dir)
        settings = settings or CASettings()
        config_path = d / CA_FILES["config"]
        if not config_path.exists():
            raise CAError(f"{d} is not an initialised estproto CA (run: estproto ca init --data-dir {d})")
        try:
            config = json.loads(config_path.read_text())
            if config.get("format") != _CONFIG_FORMAT:
                raise CAError(f"{config_path}: unknown format {config.get('format')!r}")
            root = (x509.load_pem_x509_certificate((d / CA_FILES["root_cert"]).read_bytes()),
                    _load_key(d / CA_FILES["root_key"]))
            issuer = root
            if config.get("intermediate"):
                issuer = (x509.load_pem_x509_certificate((d / CA_FILES["intermediate_cert"]).read_bytes()),
                          _load_key(d / CA_FILES["intermediate_key"]))
            server = (x509.load_pem_x509_certificate((d / CA_FILES["server_cert"]).read_bytes()),
                      _load_key(d / CA_FILES["server_key"]))
            digest_secret = (d / CA_FILES["digest_secret"]).read_bytes()
        except (OSError, ValueError) as exc:
            raise CAError(f"cannot load the CA in {d}: {exc}") from exc
        if store is None:
            store = SQLiteStore(d / CA_FILES["store"], group_commit=settings.group_commit)
        return cls(d, store=store, root=root, issuer=issuer, server=server,
                   realm=str(config.get("realm", "estproto")), digest_secret=digest_secret,
                   settings=settings)

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def __enter__(self) -> EmbeddedCA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- server glue -------------------------------------------------------

    def handler(self) -> "Handler":
        """``make_handler(self)``: the callable the trio/asyncio servers run."""
        from .backend import make_handler

        return make_handler(self)

    def inline_handler(self) -> InlineHandler:
        """``make_inline_handler(self)``: the handler ``estproto serve`` runs.
        A /simpleenroll with recently verified Basic credentials is signed on
        the event loop and answered once the store's committer has made its
        record durable (:meth:`answer_inline`); the rest runs in threads."""
        from .backend import make_inline_handler

        return make_inline_handler(self)

    def server_tls_context(self, **kwargs: Any) -> ServerTLSContext:
        """The TLS context of the EST endpoint.

        The server certificate (with the intermediate, if any) and, as
        client trust anchors, our CA certificates (RFC 7030 3.3.2), asking
        for a client certificate when certificates are accepted.

        Args:
            kwargs: passed to :class:`ServerTLSContext` (min_version,
                max_version, session_resumption, alpn_protocols).
        """
        chain = [self.server_certificate] + [
            c for c in self.ca_certificates if c != self.root_certificate
        ]
        return ServerTLSContext(
            chain, self._server_key, client_trust_anchors=self.ca_certificates,
            request_client_certificate=self.settings.accept_certificates,
            **kwargs,
        )

    def est_settings(self, **overrides: Any) -> ESTServerSettings:
        """EST-layer settings matching this CA: its labels and PoP policy."""
        settings = ESTServerSettings(
            labels=self.settings.labels, pop_policy=self.settings.pop_policy,
            # 401 before 400: an unauthenticated POST learns the challenge
            # whatever its body (curl --digest probes with an empty one).
            challenges_before_body=self.challenges,
        )
        replaced: ESTServerSettings = dataclasses.replace(settings, **overrides)
        return replaced

    def fingerprint(self) -> str:
        """SHA-256 of the root certificate, ``AB:CD:...`` as OpenSSL prints
        it: the out-of-band value for client bootstrap (RFC 7030 4.1.1)."""
        digest = self.root_certificate.fingerprint(hashes.SHA256())
        return ":".join(f"{b:02X}" for b in digest)

    # -- operator functions ------------------------------------------------

    def add_user(self, name: str, password: str, *, actor: str = "operator") -> None:
        """Create or replace an HTTP user (scrypt hash plus Digest HA1s).

        Raises:
            ValueError: empty name or password, ':' or control characters
                in the name (RFC 7617 section 2).
        """
        if not name or ":" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise ValueError("a user name must be non-empty, without ':' or control characters")
        if not password:
            raise ValueError("the password must not be empty")
        from .store import UserRecord

        record = UserRecord(
            name=name,
            password_hash=auth.hash_password(password),
            realm=self.realm,
            ha1_sha256=auth.digest_ha1(name, self.realm, password, "SHA-256"),
            ha1_md5=auth.digest_ha1(name, self.realm, password, "MD5"),
            created_at=datetime.datetime.now(datetime.timezone.utc),
        )
        self.store.put_user(record, actor)
        with self._cache_lock:
            self._basic_cache.clear()

    def remove_user(self, name: str, *, actor: str = "operator") -> bool:
        """Delete an HTTP user; False if there was none."""
        removed = self.store.delete_user(name, actor)
        with self._cache_lock:
            self._basic_cache.clear()
        return removed

    def list_users(self) -> list[str]:
        """User names."""
        return self.store.list_users()

    def list_issued(self, *, limit: int | None = None) -> list[IssuedRecord]:
        """Issued certificates, oldest first."""
        return self.store.list_issued(limit=limit)

    def list_pending(self, state: PendingState | None = PendingState.PENDING) -> list[PendingRecord]:
        """Deferred requests in *state* (None: all)."""
        return self.store.list_pending(state)

    def approve(self, pending_id: int, *, actor: str = "operator") -> PendingRecord:
        """Approve a pending request; the client's next retry gets its certificate.

        Raises:
            NotFoundError, StateError: no such request, or already decided.
        """
        return self.store.decide_pending(pending_id, PendingState.APPROVED, actor)

    def reject(self, pending_id: int, note: str = "", *, actor: str = "operator") -> PendingRecord:
        """Reject a pending request; the client's retries get 403.

        Raises:
            NotFoundError, StateError: no such request, or already decided.
        """
        return self.store.decide_pending(pending_id, PendingState.REJECTED, actor, note)

    def revoke(
        self, serial: int | str, reason: x509.ReasonFlags | str = x509.ReasonFlags.unspecified,
        *, actor: str = "operator",
    ) -> IssuedRecord:
        """Revoke a certificate: it can no longer authenticate or re-enroll.

        Args:
            serial: int, or hex (colons and a 0x prefix allowed).
            reason: an RFC 5280 reason (``x509.ReasonFlags`` or its value,
                e.g. "keyCompromise").

        Raises:
            ValueError: bad serial or reason.
            NotFoundError: no such certificate.
        """
        flag = reason if isinstance(reason, x509.ReasonFlags) else x509.ReasonFlags(reason)
        return self.store.revoke(_normalise_serial(serial), flag.value, actor)

    # -- CABackend: reading ------------------------------------------------

    def _check_label(self, label: str) -> None:
        if label and label not in self.settings.labels:
            raise LookupError(label)

    def cacerts(self, label: str) -> tuple[x509.Certificate, ...]:
        self._check_label(label)
        return self.ca_certificates

    def csrattrs(self, label: str) -> CsrAttributes | None:
        """What our profile wants (RFC 7030 4.5.2, RFC 9908 3.2).

        challengePassword when PoP linking is required (3.5: "the EST
        server MAY ... indicate this requirement in the CSR Attributes
        Response"), the signature algorithm and key type of the CA's kind.
        No subjectAltName template: with a plain extensionRequest "the
        client SHOULD use the given extension value in its CSR" (RFC 9908
        3.5), so a placeholder would be copied into requests.
        """
        self._check_label(label)
        entries: list[RequiredOID | RequestedAttribute] = []
        if self.settings.pop_policy is auth.PoPPolicy.REQUIRE:
            entries.append(RequiredOID(ID_CHALLENGE_PASSWORD))
        key = self._issuer_key
        if isinstance(key, rsa.RSAPrivateKey):
            entries += [RequiredOID(_OID_SHA256_RSA),
                        RequestedAttribute(ID_RSA_ENCRYPTION, (_DER_INT_2048,))]
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            entries += [RequiredOID(ID_ED25519), RequestedAttribute(ID_ED25519, ())]
        else:
            entries += [RequiredOID(_OID_ECDSA_SHA256),
                        RequestedAttribute(ID_EC_PUBLIC_KEY, (_DER_SECP256R1,))]
        return CsrAttributes(tuple(entries))

    # -- CABackend: authorization ------------------------------------------

    def known_certificate(self, cert: x509.Certificate) -> IssuedRecord | None:
        """The store's record of *cert* if we issued it and it is not
        revoked (compared by DER, not only by serial), else None."""
        record = self.store.get_issued(format(cert.serial_number, "x"))
        if record is None or record.revoked:
            return None
        if not hmac.compare_digest(record.der, cert.public_bytes(serialization.Encoding.DER)):
            return None
        return record

    def _unknown_certificate_reason(self, cert: x509.Certificate) -> str:
        """Why a verified certificate is not one of ours to accept."""
        record = self.store.get_issued(format(cert.serial_number, "x"))
        if record is None or not hmac.compare_digest(
                record.der, cert.public_bytes(serialization.Encoding.DER)):
            return "was not issued by this CA"
        return f"is revoked ({record.revocation_reason or 'unspecified'})"

    def challenges(self) -> tuple[str, ...]:
        """The ``WWW-Authenticate`` values of a 401, in the configured order
        (:attr:`CASettings.auth_schemes`); empty when no password is taken."""
        schemes = self.settings.challenge_schemes
        digest = {}
        if self._digest_offered:
            digest = dict(zip(self._digest.algorithms, self._digest.challenges(time.time())))
        out = []
        for scheme in schemes:
            algorithm = AUTH_SCHEMES[scheme]
            out.append(auth.basic_challenge(self.realm) if algorithm is None else digest[algorithm])
        return tuple(out)

    def _refuse(self, stale: bool = False) -> ServerResponse:
        if stale and self._digest_offered:
            return AuthenticationRequired(tuple(self._digest.challenges(time.time(), stale=True)))
        challenges = self.challenges()
        if not challenges:
            return ErrorResponse(403, "a valid client certificate issued by this CA is required")
        return AuthenticationRequired(challenges)

    def authorize(self, request: ServerRequest) -> Principal | ServerResponse:
        """Authenticate by client certificate, Basic or Digest (RFC 7030 3.2.3, 3.3.2).

        A certificate counts when the TLS layer verified it against our CA
        and the store holds it unrevoked. Otherwise HTTP credentials are
        checked; failing both, 401 with Digest and Basic challenges.
        """
        facts = request.facts
        cert = facts.client_certificate
        if self.settings.accept_certificates and cert is not None and facts.client_certificate_verified:
            record = self.known_certificate(cert)
            if record is not None:
                return Principal(f"cert:{record.serial}", "certificate", cert)
            why = self._unknown_certificate_reason(cert)
            _log.info("client certificate refused for %s from %s: %s (subject %s, serial %x)",
                      request.operation.value, facts.peer or "-", why,
                      cert.subject.rfc4514_string(), cert.serial_number)
            if isinstance(request, SimpleReenrollRequest) and not request.is_ra:
                # A password cannot help: the certificate itself is refused.
                return ErrorResponse(403, f"the certificate being renewed {why}")
        creds = request.credentials
        if isinstance(creds, auth.BasicCredentials) and self._basic_offered:
            if self._check_basic(creds):
                return Principal(f"user:{creds.username}", "basic")
            _log.info("Basic authentication failed for user %r, %s from %s", creds.username,
                      request.operation.value, facts.peer or "-")
        elif isinstance(creds, auth.DigestCredentials) and self._digest_offered:
            result = self._digest.verify(creds, request.operation.method,
                                         self._digest_uri(request, creds.uri), self._ha1, time.time())
            if result is auth.DigestResult.OK:
                return Principal(f"user:{creds.username}", "digest")
            if result is auth.DigestResult.STALE:
                return self._refuse(stale=True)
            _log.info("Digest authentication failed for user %r, %s from %s", creds.username,
                      request.operation.value, facts.peer or "-")
        return self._refuse()

    def answer_inline(self, request: ServerRequest) -> ServerResponse | ResponseFuture | None:
        """The fast path, for a server's event loop (see
        :func:`~estproto.ca.backend.make_handler`): a /simpleenroll whose
        Basic credentials passed the password check recently, with manual
        approval off and no client certificate to look up, is authorized
        from the cache and signed here; the store's committer makes its
        record durable and only then finishes the returned future with the
        certificate. Anything else returns None: the blocking path, in a
        worker thread, decides (scrypt, store reads, key generation).
        """
        if not isinstance(request, SimpleEnrollRequest) or self.settings.manual_approval:
            return None
        creds = request.credentials
        if not isinstance(creds, auth.BasicCredentials) or not self._basic_offered:
            return None
        if self.settings.accept_certificates and request.facts.client_certificate is not None:
            return None  # authorize() prefers the certificate: a store read
        if not self._basic_cached(self._basic_cache_key(creds), time.monotonic()):
            return None
        principal = Principal(f"user:{creds.username}", "basic")
        try:
            self._check_label(request.label)
        except LookupError:
            return ErrorResponse(404, "unknown CA label")
        try:
            return self._issue_later(request.csr, principal, request.label, Operation.SIMPLEENROLL)
        except _Refused as exc:
            return ErrorResponse(exc.status, exc.reason)

    @staticmethod
    def _digest_uri(request: ServerRequest, sent: str) -> str:
        """The request-target Digest must match (RFC 7616 3.4.6).

        ServerRequest does not carry the target, so it is rebuilt from the
        operation and label; the ``uri`` the client sent is accepted when
        its path is that (an absolute URI or a query string do not change
        the resource: the EST layer ignores both).
        """
        expected = format_est_path(request.operation, request.label)
        path = sent.split("?", 1)[0]
        if path.startswith(("https://", "http://")):
            slash = path.find("/", path.index("//") + 2)
            path = path[slash:] if slash >= 0 else "/"
        return sent if path == expected and path.startswith(WELL_KNOWN_PREFIX) else expected

    def _ha1(self, username: str, algorithm: str) -> str | None:
        user = self.store.get_user(username)
        if user is None or user.realm != self.realm:
            return None
        return {"SHA-256": user.ha1_sha256, "MD5": user.ha1_md5}.get(algorithm)

    def _basic_cache_key(self, creds: auth.BasicCredentials) -> bytes:
        return hmac.new(
            self._cache_secret,
            _lp(creds.username.encode("utf-8", "surrogatepass"),
                creds.password.encode("utf-8", "surrogatepass")),
            hashlib.sha256,
        ).digest()

    def _basic_cached(self, key: bytes, now: float) -> bool:
        """Whether these credentials passed the password check within
        ``basic_cache_seconds`` (no store read, no scrypt)."""
        if self.settings.basic_cache_seconds <= 0:
            return False
        with self._cache_lock:
            expiry = self._basic_cache.get(key)
        return expiry is not None and expiry > now

    def _check_basic(self, creds: auth.BasicCredentials) -> bool:
        ttl = self.settings.basic_cache_seconds
        key = self._basic_cache_key(creds)
        now = time.monotonic()
        if self._basic_cached(key, now):
            return True
        user = self.store.get_user(creds.username)
        # An unknown user is checked against a dummy hash: same cost.
        ok = auth.check_password_hash(user.password_hash if user else None, creds.password)
        if ok and ttl > 0:
            with self._cache_lock:
                if len(self._basic_cache) >= MAX_BASIC_CACHE:
                    self._basic_cache = {k: v for k, v in self._basic_cache.items() if v > now}
                    if len(self._basic_cache) >= MAX_BASIC_CACHE:
                        self._basic_cache.clear()
                self._basic_cache[key] = now + ttl
        return ok

    # -- issuing -----------------------------------------------------------

    @staticmethod
    def request_fingerprint(
        operation: Operation, label: str, requester: str, csr: pkcs10.CertificationRequest,
    ) -> str:
        """What identifies "the same request" when a client polls (RFC 7030 4.2.3).

        SHA-256 over operation, label, requester, public key (not for
        serverkeygen, whose CSR key the server ignores, 4.4.1), subject and
        the subjectAltName extension; see the module docstring for why the
        CSR bytes themselves are not used.
        """
        san = csr.get_extension("2.5.29.17")
        spki = b"" if operation is Operation.SERVERKEYGEN else csr.public_key_der
        data = _lp(operation.value.encode(), label.encode(), requester.encode("utf-8", "surrogatepass"),
                   spki, csr.subject_der, san.value_der if san else b"")
        return hashlib.sha256(data).hexdigest()

    def _check_key(self, key: object) -> None:
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < self.settings.profile.min_rsa_bits:
                raise _Refused(400, f"RSA keys need at least {self.settings.profile.min_rsa_bits} bits")
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in _CURVES:
                raise _Refused(400, f"elliptic curve {key.curve.name} is not accepted")
        elif not isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            raise _Refused(400, "unsupported public key type")

    @staticmethod
    def _record(
        cert: x509.Certificate, *, requester: str, request_der: bytes | None, label: str,
        operation: str,
    ) -> IssuedRecord:
        try:
            sans = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            sans = []
        return EmbeddedCA._record_from(
            cert, subject=cert.subject, sans=sans, not_after=cert.not_valid_after_utc,
            requester=requester, request_der=request_der, label=label, operation=operation,
        )

    @staticmethod
    def _record_from(
        cert: x509.Certificate, *, subject: x509.Name, sans: Sequence[x509.GeneralName],
        not_after: datetime.datetime, requester: str, request_der: bytes | None, label: str,
        operation: str,
    ) -> IssuedRecord:
        """The record of *cert*, from the subject, SANs and notAfter it was
        built with (parsing them back out of the new certificate would cost
        as much as the rest of the record)."""
        return IssuedRecord(
            serial=format(cert.serial_number, "x"),
            der=cert.public_bytes(serialization.Encoding.DER),
            subject=subject.rfc4514_string(),
            san=_san_text(sans),
            requester=requester,
            request_der=request_der,
            label=label,
            operation=operation,
            issued_at=datetime.datetime.now(datetime.timezone.utc),
            not_after=not_after,
        )

    def _issue(
        self,
        csr: pkcs10.CertificationRequest,
        principal: Principal,
        label: str,
        operation: Operation,
        *,
        public_key: CertificatePublicKeyTypes | None = None,
        request_der: bytes | None = None,
        pending_id: int | None = None,
    ) -> x509.Certificate:
        """Sign a certificate for *csr* under the profile and record it.

        Raises:
            _Refused: the profile refuses the request.
            StoreError: not recorded (then it is not returned either).
        """
        draft = self._draft(csr, principal, label, operation, public_key, request_der)
        for _ in range(_SERIAL_ATTEMPTS):
            cert, record = draft.sign()
            try:
                self.store.record_issued(record, pending_id=pending_id)
            except DuplicateSerialError:
                _log.warning("serial number collision on %s; drawing another", record.serial)
                continue
            draft.log_issued(record)
            return cert
        raise StoreError("could not find an unused serial number")

    def _issue_later(
        self, csr: pkcs10.CertificationRequest, principal: Principal, label: str, operation: Operation,
    ) -> ResponseFuture:
        """:meth:`_issue` without blocking: signs now, and the future gets
        the CertificateResponse once the store's committer has made the
        record durable (or the StoreError saying it did not).

        Raises:
            _Refused: the profile refuses the request.
            StoreError: the store is closed.
        """
        draft = self._draft(csr, principal, label, operation, None, None)
        future = ResponseFuture()
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            cert, record = draft.sign()
            first = attempts == 1

            def committed(error: BaseException | None) -> None:  # on the committer
                if error is None:
                    draft.log_issued(record)
                    future.set_response(CertificateResponse(cert))
                elif isinstance(error, DuplicateSerialError) and attempts < _SERIAL_ATTEMPTS:
                    _log.warning("serial number collision on %s; drawing another", record.serial)
                    try:
                        attempt()
                    except BaseException as exc:
                        future.set_error(exc)
                else:
                    future.set_error(error if not isinstance(error, DuplicateSerialError)
                                     else StoreError("could not find an unused serial number"))

            flush = self.store.record_issued_later(record, committed)
            if flush is not None:
                if first:
                    future.flush = flush  # the server calls it once others had their turn
                else:
                    flush()  # a redraw, from within a commit: queued for the next one

        attempt()
        return future

    def _draft(
        self, csr: pkcs10.CertificationRequest, principal: Principal, label: str, operation: Operation,
        public_key: CertificatePublicKeyTypes | None, request_der: bytes | None,
    ) -> _Draft:
        """Everything of the certificate for *csr* but its serial number.

        Raises:
            _Refused: the profile refuses the request.
        """
        key = csr.public_key if public_key is None else public_key
        self._check_key(key)
        profile = self.settings.profile
        sans = list(csr.subject_alt_names)
        empty_subject = len(csr.subject) == 0
        if empty_subject and not sans:
            raise _Refused(400, "the CSR has neither a subject nor a subjectAltName")
        now = datetime.datetime.now(datetime.timezone.utc)
        # X.509 times have whole seconds: this is the notAfter the certificate holds.
        not_after = (now + datetime.timedelta(days=profile.validity_days)).replace(microsecond=0)
        # Never beyond the issuer's own notAfter: such a certificate would stop
        # validating with its chain before it "expires" (RFC 5280 6.1.3).
        not_after = min(not_after, self.issuer_certificate.not_valid_after_utc)
        builder = (
            self._base_builder
            .add_extension(_end_entity_key_usage(key), critical=True)
            .subject_name(csr.subject)
            .public_key(key)
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(self._aki, critical=False)
        )
        if profile.extended_key_usages:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(list(profile.extended_key_usages)), critical=False)
        if sans:
            # RFC 5280 4.2.1.6: with an empty subject the SAN is critical.
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=empty_subject)
        for ext in csr.extensions:
            if ext.oid in profile.copy_extensions and ext.oid not in _NEVER_COPIED:
                builder = builder.add_extension(
                    x509.UnrecognizedExtension(x509.ObjectIdentifier(ext.oid), ext.value_der),
                    critical=ext.critical,
                )
        return _Draft(self, builder, csr, sans, not_after, principal, label, operation,
                      csr.der if request_der is None else request_der)

    def _gate(
        self, csr: pkcs10.CertificationRequest, principal: Principal, label: str, operation: Operation,
    ) -> ServerResponse | x509.Certificate | int | None:
        """Manual approval: a response to send now (202 / 403), the
        certificate already issued for this request, the id of an approved
        request to issue now, or None when approval is off."""
        if not self.settings.manual_approval:
            return None
        fp = self.request_fingerprint(operation, label, principal.name, csr)
        for _ in range(3):
            record = self.store.find_pending(fp)
            if record is None or (record.state is PendingState.ISSUED
                                  and operation is Operation.SERVERKEYGEN):
                record = self.store.add_pending(
                    fingerprint=fp, label=label, operation=operation.value,
                    requester=principal.name, subject=csr.subject.rfc4514_string(), csr_der=csr.der,
                )
                _log.info("enrollment %d pending approval (%s)", record.id, principal.name)
                return self._retry_later(record)
            if record.state is PendingState.PENDING:
                return self._retry_later(record)
            if record.state is PendingState.REJECTED:
                return ErrorResponse(403, "enrollment request rejected by the CA operator")
            if record.state is PendingState.APPROVED:
                return record.id
            assert record.serial is not None
            issued = self.store.get_issued(record.serial)
            if issued is None or issued.revoked:
                return ErrorResponse(403, "the certificate issued for this request was revoked")
            return issued.certificate
        raise StoreError("pending request changed state repeatedly")

    def _retry_later(self, record: PendingRecord) -> RetryLater:
        return RetryLater(self.settings.retry_after,
                          f"enrollment request {record.id} is waiting for approval")

    def _enroll(
        self, csr: pkcs10.CertificationRequest, principal: Principal, label: str,
        operation: Operation, *, approval: bool = True,
    ) -> ServerResponse | x509.Certificate:
        """Gate and issue; returns a response to send or the certificate."""
        try:
            self._check_label(label)
        except LookupError:
            return ErrorResponse(404, "unknown CA label")
        gate = self._gate(csr, principal, label, operation) if approval else None
        if isinstance(gate, (ServerResponse, x509.Certificate)):
            return gate
        try:
            return self._issue(csr, principal, label, operation, pending_id=gate)
        except StateError:
            # A concurrent retry issued it first: answer from the record.
            again = self._gate(csr, principal, label, operation)
            if isinstance(again, (ServerResponse, x509.Certificate)):
                return again
            raise
        except _Refused as exc:
            return ErrorResponse(exc.status, exc.reason)

    def enroll(self, request: SimpleEnrollRequest, principal: Principal) -> ServerResponse:
        """/simpleenroll (RFC 7030 4.2.1), with manual approval if configured."""
        result = self._enroll(request.csr, principal, request.label, Operation.SIMPLEENROLL)
        return CertificateResponse(result) if isinstance(result, x509.Certificate) else result

    def reenroll(self, request: SimpleReenrollRequest, principal: Principal) -> ServerResponse:
        """/simplereenroll (RFC 7030 4.2.2).

        The certificate being renewed must be one we issued and not revoked
        ("a revoked certificate can no longer re-enroll"); the EST layer has
        already checked that subject and SAN are unchanged. Renewal of an
        approved identity needs no new approval. An RA (3.7) relays other
        clients' requests and is not renewing its own certificate.
        """
        if not request.is_ra:
            cert = request.facts.client_certificate
            if cert is None or not request.facts.client_certificate_verified:
                return ErrorResponse(403, "re-enrollment needs the certificate being renewed (RFC 7030 4.2.2)")
            if self.known_certificate(cert) is None:
                return ErrorResponse(403, "the certificate being renewed is revoked or was not issued by this CA")
        result = self._enroll(request.csr, principal, request.label, Operation.SIMPLEREENROLL,
                              approval=request.is_ra)
        return CertificateResponse(result) if isinstance(result, x509.Certificate) else result

    # -- serverkeygen ------------------------------------------------------

    def _generate_like(self, csr: pkcs10.CertificationRequest) -> PrivateKey:
        """A new key of the CSR key's kind (RFC 7030 4.4.1: the CSR's key
        itself is ignored), else of the profile's default kind."""
        requested = csr.public_key
        if isinstance(requested, rsa.RSAPublicKey):
            bits = min(max(requested.key_size, self.settings.profile.min_rsa_bits, 2048), 4096)
            return rsa.generate_private_key(65537, bits)
        if isinstance(requested, ec.EllipticCurvePublicKey) and requested.curve.name in _CURVES:
            return ec.generate_private_key(_CURVES[requested.curve.name]())
        if isinstance(requested, ed25519.Ed25519PublicKey):
            return ed25519.Ed25519PrivateKey.generate()
        if isinstance(requested, ed448.Ed448PublicKey):
            return ed448.Ed448PrivateKey.generate()
        return _new_key(self.settings.profile.serverkeygen_key_type)

    def _key_recipient(self, request: ServerKeygenRequest) -> serverkey.Recipient | ErrorResponse | None:
        csr = request.csr
        if csr.decrypt_key_identifier is not None:
            kek = self.settings.keks.get(csr.decrypt_key_identifier)
            if kek is None:
                return ErrorResponse(400, "unknown DecryptKeyIdentifier (RFC 7030 4.4.1.1)")
            return serverkey.KEKRecipient(csr.decrypt_key_identifier, kek)
        if csr.asymmetric_decrypt_key_identifier is not None:
            return self._asymmetric_recipient(request, csr.asymmetric_decrypt_key_identifier)
        return None

    @staticmethod
    def _asymmetric_recipient(
        request: ServerKeygenRequest, identifier: bytes,
    ) -> serverkey.Recipient | ErrorResponse:
        """4.4.1.2: the identifier names a key the client holds; the one we
        can vouch for is its verified TLS client certificate's: RSA gets key
        transport (ktri), EC key agreement (kari), 4.4.2."""
        cert = request.facts.client_certificate
        ski = None
        if cert is not None and request.facts.client_certificate_verified:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                ski = None
        if cert is None or ski != identifier:
            return ErrorResponse(
                400, "AsymmetricDecryptKeyIdentifier must name the key of the verified TLS client "
                     "certificate (RFC 7030 4.4.1.2)")
        try:
            usage: x509.KeyUsage | None = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None  # unrestricted
        public = cert.public_key()
        # 4.4.1.2: "the key MUST either explicitly support keyTransport or
        # keyAgreement or its use MUST be unrestricted."
        if isinstance(public, rsa.RSAPublicKey) and (usage is None or usage.key_encipherment):
            return serverkey.KeyTransRecipient(public, subject_key_identifier=ski)
        if isinstance(public, ec.EllipticCurvePublicKey) and (usage is None or usage.key_agreement):
            # 4.4.2: keyEncryptionAlgorithm "is set to one of the key wrap
            # algorithms that the client included in the SMIMECapabilities".
            wrap = next((_KEY_WRAPS[oid] for oid in request.csr.smime_capabilities
                         if oid in _KEY_WRAPS), None)
            try:
                return serverkey.KeyAgreeRecipient(public, subject_key_identifier=ski, key_wrap=wrap)
            except LocalProtocolError:
                pass  # a curve we do not agree keys on: refused below
        return ErrorResponse(
            400, "the TLS client certificate's key cannot receive an encrypted key: it must be RSA "
                 "with keyEncipherment or EC (P-256/384/521) with keyAgreement (RFC 7030 4.4.1.2)")

    def serverkeygen(self, request: ServerKeygenRequest, principal: Principal) -> ServerResponse:
        """/serverkeygen (RFC 7030 4.4): a new key of the CSR key's type,
        unencrypted PKCS#8, or encrypted to the KEK the CSR names."""
        recipient = self._key_recipient(request)
        if isinstance(recipient, ErrorResponse):
            return recipient
        try:
            self._check_label(request.label)
        except LookupError:
            return ErrorResponse(404, "unknown CA label")
        gate = self._gate(request.csr, principal, request.label, Operation.SERVERKEYGEN)
        if isinstance(gate, ServerResponse):
            return gate
        if isinstance(gate, x509.Certificate):  # pragma: no cover - _gate starts a new request
            return ErrorResponse(409, "the key for this request was already delivered")
        key = self._generate_like(request.csr)
        try:
            cert = self._issue(request.csr, principal, request.label, Operation.SERVERKEYGEN,
                               public_key=key.public_key(), pending_id=gate)
        except _Refused as exc:
            return ErrorResponse(exc.status, exc.reason)
        if recipient is None:
            return ServerKeygenResponse(cert, private_key=key)
        encrypted = serverkey.encrypt_key_package(
            key, signer_key=self._issuer_key, signer_cert=self.issuer_certificate, recipient=recipient)
        return ServerKeygenResponse(cert, encrypted_key=encrypted)

    # -- fullcmc -----------------------------------------------------------

    def fullcmc(self, request: FullCMCRequest, principal: Principal) -> ServerResponse:
        """/fullcmc (RFC 7030 4.3) for a Full PKI Request holding one PKCS#10.

        Answers are Full PKI Responses signed by the issuing CA, echoing
        transactionId and answering senderNonce with recipientNonce (RFC
        5272 6.6). Failures carry a CMC body with a 4xx/5xx status: "When
        rejecting a request, the server MUST specify either an HTTP 4xx
        error or an HTTP 5xx error. A CMC response ... MUST be included"
        (4.3.2).
        """
        req = request.request
        common: dict[str, Any] = dict(
            signer_key=self._issuer_key, signer_cert=self.issuer_certificate,
            transaction_id=req.transaction_id, recipient_nonce=req.sender_nonce,
            sender_nonce=secrets.token_bytes(16),
        )
        body_ids: tuple[int, ...] = tuple(r.body_part_id for r in req.requests) or (0,)

        def failed(info: cmc.CMCFailInfo, text: str, status: int = 400) -> FullCMCResponse:
            der = cmc.build_full_pki_response_failed(
                info, body_part_ids=body_ids, status_string=text[:200], **common)
            return FullCMCResponse(der, status=status)

        try:
            if req.unknown_controls:
                # RFC 5272 3.2.1.2.1: a server "MUST fail the processing of
                # an entire PKIData if any included control is not recognized".
                return failed(cmc.CMCFailInfo.BAD_REQUEST, "unrecognized CMC control")
            if req.other_requests or len(req.requests) != 1:
                return failed(cmc.CMCFailInfo.BAD_REQUEST, "exactly one PKCS#10 request is supported")
            tagged = req.requests[0]
            try:
                csr = pkcs10.decode_csr(tagged.csr_der)
            except BadSignature:
                return failed(cmc.CMCFailInfo.POP_FAILED, "the PKCS#10 signature does not verify")
            except DecodeError as exc:
                return failed(cmc.CMCFailInfo.BAD_REQUEST, f"bad PKCS#10 request: {exc}")
            pop = auth.check_pop(
                self.settings.pop_policy, challenge_password=csr.challenge_password,
                identity_linking=csr.est_identity_linking,
                channel_binding=request.facts.channel_binding, is_ra=request.is_ra,
            )
            if not pop.ok:
                # RFC 7030 3.5: "the CMCFailInfo MUST be set to popFailed".
                return failed(cmc.CMCFailInfo.POP_FAILED, pop.reason)
            try:
                self._check_label(request.label)
            except LookupError:
                return failed(cmc.CMCFailInfo.BAD_REQUEST, "unknown CA label", 404)
            gate = self._gate(csr, principal, request.label, Operation.FULLCMC)
            if isinstance(gate, ErrorResponse):
                return failed(cmc.CMCFailInfo.BAD_REQUEST, gate.reason, gate.status)
            if isinstance(gate, ServerResponse):
                return gate
            if isinstance(gate, x509.Certificate):
                cert = gate
            else:
                try:
                    cert = self._issue(csr, principal, request.label, Operation.FULLCMC,
                                       request_der=request.der, pending_id=gate)
                except _Refused as exc:
                    return failed(exc.fail_info, exc.reason, exc.status)
            der = cmc.build_full_pki_response_success(
                (cert,) + self.ca_certificates, body_part_ids=(tagged.body_part_id,), **common)
            return FullCMCResponse(der)
        except StoreError:
            _log.exception("certificate store failure on fullcmc")
            return failed(cmc.CMCFailInfo.TRY_LATER, "certificate store unavailable", 503)


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

