"""The embedded CA: the default :class:`~estproto.ca.CABackend` (RFC 7030 4.1-4.5).

:class:`EmbeddedCA` is the composition of parts with one job each, every
one in its own module:

* :mod:`.data_dir`: the data directory (creating, extending, loading);
* :mod:`.store`: the record store (issued certificates, pending requests,
  users, audit);
* :mod:`.signer`: who signs for the issuing CA;
* :mod:`.policy`: what an issued certificate holds (the :class:`Profile`);
* :mod:`.users`: HTTP users and the Basic / Digest checks;
* :mod:`.approvals`: manual approval (RFC 7030 4.2.3);
* :mod:`.revocation`: revoking, and which certificates still count;
* :mod:`.keygen`: the key /serverkeygen makes and whom it is encrypted to.

What stays here is the :class:`CABackend` itself: authorization (RFC 7030
3.2.3, 3.3.2) by a TLS client certificate that verified against our CA
*and* is in our store unrevoked, or by HTTP Basic / Digest; and issuing.
Serial numbers are random 159-bit integers (``x509.random_serial_number``);
the store's UNIQUE constraint is the final word, and a collision is retried
with a new serial. A certificate is returned only after the store committed
its record.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from .. import auth
from .._errors import BadSignature, DecodeError
from .._est_server import ESTServerSettings
from .._events import (
    CertificateResponse,
    ErrorResponse,
    FullCMCRequest,
    FullCMCResponse,
    ServerKeygenRequest,
    ServerKeygenResponse,
    ServerRequest,
    ServerResponse,
    SimpleEnrollRequest,
    SimpleReenrollRequest,
)
from .._paths import Operation
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
from . import data_dir as _directory
from .approvals import Approvals, request_fingerprint
from .crl import CRL_LIFETIME, CRLPublisher, build_crl, check_crl_url, distribution_point
from .backend import CABackend, Principal
from .data_dir import CA_FILES
from .errors import CAError, Refused
from .keygen import generate_like, key_recipient
from .keys import KeyType, PrivateKey, SigningKey
from .pkcs11_token import Pkcs11Settings, open_key
from .policy import Draft, IssuingPolicy, Profile
from .revocation import Revocation
from .signer import KeySigner, Signer
from .store import (
    DuplicateSerialError,
    IssuedRecord,
    PendingRecord,
    PendingState,
    StateError,
    Store,
    StoreError,
)
from .store_location import check_location, open_store
from .users import AUTH_SCHEMES, DEFAULT_AUTH_SCHEMES, UserDirectory

if TYPE_CHECKING:
    from .backend import Handler

__all__ = ["EmbeddedCA", "CASettings", "Profile", "CAError", "KeyType", "CA_FILES", "AUTH_SCHEMES",
           "DEFAULT_AUTH_SCHEMES"]

_log = logging.getLogger("estproto.ca")

#: Attempts at a fresh serial number after a collision (2**-159 each).
_SERIAL_ATTEMPTS = 5

_OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
_OID_SHA256_RSA = "1.2.840.113549.1.1.11"
_DER_SECP256R1 = bytes.fromhex("06082a8648ce3d030107")
_DER_INT_2048 = bytes.fromhex("02020800")


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
        crl_url: an ``http://`` URL where the CRL is published; issued
            certificates then carry it as their cRLDistributionPoints
            (RFC 5280 4.2.1.13). None: no CRL is announced.
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
    crl_url: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", frozenset(self.labels))
        if self.crl_url is not None:
            check_crl_url(self.crl_url)
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


@dataclass(frozen=True)
class _Issuance:
    """A certificate ready to sign but for its serial number (drawn anew
    on each :meth:`sign`, should the store find it taken), and what its
    record says about the request."""

    signer: Signer
    draft: Draft
    csr: pkcs10.CertificationRequest
    principal: Principal
    label: str
    operation: Operation
    request_der: bytes

    def sign(self) -> tuple[x509.Certificate, IssuedRecord]:
        cert = self.signer.sign_certificate(
            self.draft.builder.serial_number(x509.random_serial_number()))
        record = IssuedRecord.for_certificate(
            cert, subject=self.csr.subject, sans=self.draft.sans, not_after=self.draft.not_after,
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
        root: tuple[x509.Certificate, SigningKey | None],
        issuer: tuple[x509.Certificate, SigningKey | None],
        server: tuple[x509.Certificate, PrivateKey],
        realm: str,
        digest_secret: bytes,
        settings: CASettings,
        signer: Signer | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.settings = settings
        self.realm = realm
        self.root_certificate = root[0]
        self.issuer_certificate = issuer[0]
        self.server_certificate, self._server_key = server
        if signer is not None and signer.certificate != self.issuer_certificate:
            raise CAError("the signer's certificate is not this CA's issuing certificate")
        # A signer made here from the issuing key is closed with the CA; a
        # signer passed in belongs to the caller.
        self._own_signer = signer is None
        if signer is None:
            if issuer[1] is None:
                raise CAError("the issuing CA needs a key or a signer")
            signer = KeySigner(issuer[0], issuer[1])
        #: Signs for the issuing CA (with the issuing key by default).
        self.signer: Signer = signer
        chain = [self.issuer_certificate] if self.issuer_certificate != self.root_certificate else []
        #: The CA certificates a client trusts (ca.pem, /cacerts): issuing CA first.
        self.ca_certificates: tuple[x509.Certificate, ...] = tuple(chain) + (self.root_certificate,)
        crldp = () if settings.crl_url is None else (distribution_point(settings.crl_url),)
        self.policy = IssuingPolicy(settings.profile, self.issuer_certificate, crldp)
        algorithms = [AUTH_SCHEMES[a] for a in settings.auth_schemes if a != "basic"]
        self.users = UserDirectory(
            store, realm, digest_secret, schemes=settings.challenge_schemes,
            digest_algorithms=[a for a in algorithms if a] or ["SHA-256"],
            basic_cache_seconds=settings.basic_cache_seconds,
        )
        self.approvals = Approvals(store, settings.retry_after)
        self.revocation = Revocation(store)

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
        store_location: str | None = None,
        pkcs11: Pkcs11Settings | None = None,
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
            store_location: where the records live (see
                :mod:`estproto.ca.store_location`), e.g. a ``postgresql://``
                URL; a new CA records it in config.json, so later opens
                find it. Default: the existing CA's, else DIR/estproto.db.
            pkcs11: make a new CA's keys in this PKCS#11 token ("p256" or
                "rsa"; see :mod:`estproto.ca.pkcs11_token`) instead of key
                files; config.json records where, and later opens use the
                token (its PIN from the environment or the PIN file).

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
        if store_location is not None:
            check_location(store_location)
        own_store = store is None
        if store is None:
            root_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            config = _directory.read_config(root_dir)
            location = store_location or (config or {}).get("store")
            store = open_store(location, root_dir / CA_FILES["store"],
                               group_commit=(settings or CASettings()).group_commit)
        try:
            _directory.create_or_update(root_dir, list(hostnames), key_type, intermediate, realm,
                                        store, store_location, pkcs11)
            return cls.open(root_dir, settings=settings, store=store)
        except BaseException:
            if own_store:
                store.close()
            raise

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        settings: CASettings | None = None,
        store: Store | None = None,
        signer: Signer | None = None,
        store_location: str | None = None,
    ) -> EmbeddedCA:
        """Load an initialised CA.

        Args:
            data_dir: a directory made by :meth:`init`.
            settings: run-time policy.
            store: a store to use instead of DIR/estproto.db.
            signer: signs for the issuing CA instead of the key file's key
                (its certificate must be the issuing CA's).
            store_location: open the store there instead of where
                config.json says (see :mod:`estproto.ca.store_location`).

        Raises:
            CAError: not initialised, or its files are unreadable, or the
                store location is unusable.
            StoreError: the store cannot be opened or written (read-only
                directory, disk full, newer schema).
        """
        d = Path(data_dir)
        settings = settings or CASettings()
        material = _directory.load(d)
        issuer: tuple[x509.Certificate, SigningKey | None] = material.issuer
        token_key = None
        if material.pkcs11 is not None and signer is None:
            token_key = open_key(material.pkcs11)
            issuer = (issuer[0], token_key)
        own_store = store is None
        try:
            if token_key is not None:
                _directory.check_key_matches(token_key, issuer[0])
            if store is None:
                store = open_store(store_location or material.store_location, d / CA_FILES["store"],
                                   group_commit=settings.group_commit)
            return cls(d, store=store, root=material.root, issuer=issuer,
                       server=material.server, realm=material.realm,
                       digest_secret=material.digest_secret, settings=settings, signer=signer)
        except BaseException:
            if own_store and store is not None:
                store.close()
            if token_key is not None:
                token_key.close()
            raise

    def close(self) -> None:
        """Close the store, and the signer unless it was passed in."""
        try:
            self.store.close()
        finally:
            if self._own_signer:
                self.signer.close()

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
        self.users.add(name, password, actor)

    def remove_user(self, name: str, *, actor: str = "operator") -> bool:
        """Delete an HTTP user; False if there was none."""
        return self.users.remove(name, actor)

    def list_users(self) -> list[str]:
        """User names."""
        return self.users.names()

    def list_issued(self, *, limit: int | None = None) -> list[IssuedRecord]:
        """Issued certificates, oldest first."""
        return self.store.list_issued(limit=limit)

    def list_pending(self, state: PendingState | None = PendingState.PENDING) -> list[PendingRecord]:
        """Deferred requests in *state* (None: all)."""
        return self.approvals.list(state)

    def approve(self, pending_id: int, *, actor: str = "operator") -> PendingRecord:
        """Approve a pending request; the client's next retry gets its certificate.

        Raises:
            NotFoundError, StateError: no such request, or already decided.
        """
        return self.approvals.approve(pending_id, actor)

    def reject(self, pending_id: int, note: str = "", *, actor: str = "operator") -> PendingRecord:
        """Reject a pending request; the client's retries get 403.

        Raises:
            NotFoundError, StateError: no such request, or already decided.
        """
        return self.approvals.reject(pending_id, actor, note)

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
        return self.revocation.revoke(serial, reason, actor)

    def crl(self, lifetime: datetime.timedelta = CRL_LIFETIME) -> x509.CertificateRevocationList:
        """A CRL of every revoked, unexpired certificate, signed now by the
        issuing CA (:func:`estproto.ca.crl.build_crl`).

        Raises:
            StoreError: the revocations could not be read.
        """
        return build_crl(self.signer, self.store.list_revoked(),
                         this_update=datetime.datetime.now(datetime.timezone.utc), lifetime=lifetime)

    def crl_publisher(self, lifetime: datetime.timedelta = CRL_LIFETIME) -> CRLPublisher:
        """The CRL a server publishes, re-signed after revocations and
        before it ages (:class:`~estproto.ca.crl.CRLPublisher`)."""
        return CRLPublisher(self.signer, self.store, lifetime=lifetime)

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
        key = self.issuer_certificate.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            entries += [RequiredOID(_OID_SHA256_RSA),
                        RequestedAttribute(ID_RSA_ENCRYPTION, (_DER_INT_2048,))]
        elif isinstance(key, ed25519.Ed25519PublicKey):
            entries += [RequiredOID(ID_ED25519), RequestedAttribute(ID_ED25519, ())]
        else:
            entries += [RequiredOID(_OID_ECDSA_SHA256),
                        RequestedAttribute(ID_EC_PUBLIC_KEY, (_DER_SECP256R1,))]
        return CsrAttributes(tuple(entries))

    # -- CABackend: authorization ------------------------------------------

    def known_certificate(self, cert: x509.Certificate) -> IssuedRecord | None:
        """The store's record of *cert* if we issued it and it is not
        revoked (compared by DER, not only by serial), else None."""
        return self.revocation.known_certificate(cert)

    def challenges(self) -> tuple[str, ...]:
        """The ``WWW-Authenticate`` values of a 401, in the configured order
        (:attr:`CASettings.auth_schemes`); empty when no password is taken."""
        return self.users.challenges()

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
            why = self.revocation.why_unknown(cert)
            _log.info("client certificate refused for %s from %s: %s (subject %s, serial %x)",
                      request.operation.value, facts.peer or "-", why,
                      cert.subject.rfc4514_string(), cert.serial_number)
            if isinstance(request, SimpleReenrollRequest) and not request.is_ra:
                # A password cannot help: the certificate itself is refused.
                return ErrorResponse(403, f"the certificate being renewed {why}")
        users = self.users
        creds = request.credentials
        if isinstance(creds, auth.BasicCredentials) and users.basic_offered:
            if users.check_basic(creds):
                return Principal(f"user:{creds.username}", "basic")
            _log.info("Basic authentication failed for user %r, %s from %s", creds.username,
                      request.operation.value, facts.peer or "-")
        elif isinstance(creds, auth.DigestCredentials) and users.digest_offered:
            result = users.check_digest(creds, request)
            if result is auth.DigestResult.OK:
                return Principal(f"user:{creds.username}", "digest")
            if result is auth.DigestResult.STALE:
                return users.refuse(stale=True)
            _log.info("Digest authentication failed for user %r, %s from %s", creds.username,
                      request.operation.value, facts.peer or "-")
        return users.refuse()

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
        if not self.signer.in_memory:
            return None  # a token's round trip must not stall the event loop
        creds = request.credentials
        if not isinstance(creds, auth.BasicCredentials):
            return None
        if self.settings.accept_certificates and request.facts.client_certificate is not None:
            return None  # authorize() prefers the certificate: a store read
        if not self.users.basic_recently_verified(creds):
            return None
        principal = Principal(f"user:{creds.username}", "basic")
        try:
            self._check_label(request.label)
        except LookupError:
            return ErrorResponse(404, "unknown CA label")
        try:
            return self._issue_later(request.csr, principal, request.label, Operation.SIMPLEENROLL)
        except Refused as exc:
            return ErrorResponse(exc.status, exc.reason)

    # -- issuing -----------------------------------------------------------

    #: See :func:`estproto.ca.approvals.request_fingerprint`.
    request_fingerprint = staticmethod(request_fingerprint)

    def _issuance(
        self, csr: pkcs10.CertificationRequest, principal: Principal, label: str, operation: Operation,
        public_key: CertificatePublicKeyTypes | None, request_der: bytes | None,
    ) -> _Issuance:
        """Raises Refused when the profile refuses the request."""
        return _Issuance(self.signer, self.policy.draft(csr, public_key), csr, principal, label,
                         operation, csr.der if request_der is None else request_der)

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
            Refused: the profile refuses the request.
            StoreError: not recorded (then it is not returned either).
        """
        issuance = self._issuance(csr, principal, label, operation, public_key, request_der)
        for _ in range(_SERIAL_ATTEMPTS):
            cert, record = issuance.sign()
            try:
                self.store.record_issued(record, pending_id=pending_id)
            except DuplicateSerialError:
                _log.warning("serial number collision on %s; drawing another", record.serial)
                continue
            issuance.log_issued(record)
            return cert
        raise StoreError("could not find an unused serial number")

    def _issue_later(
        self, csr: pkcs10.CertificationRequest, principal: Principal, label: str, operation: Operation,
    ) -> ResponseFuture:
        """:meth:`_issue` without blocking: signs now, and the future gets
        the CertificateResponse once the store's committer has made the
        record durable (or the StoreError saying it did not).

        Raises:
            Refused: the profile refuses the request.
            StoreError: the store is closed.
        """
        issuance = self._issuance(csr, principal, label, operation, None, None)
        future = ResponseFuture()
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            cert, record = issuance.sign()
            first = attempts == 1

            def committed(error: BaseException | None) -> None:  # on the committer
                if error is None:
                    issuance.log_issued(record)
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

    def _gate(
        self, csr: pkcs10.CertificationRequest, principal: Principal, label: str, operation: Operation,
    ) -> ServerResponse | x509.Certificate | int | None:
        """Manual approval (:meth:`Approvals.gate`), or None when it is off."""
        if not self.settings.manual_approval:
            return None
        return self.approvals.gate(csr, principal, label, operation)

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
        except Refused as exc:
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

    def serverkeygen(self, request: ServerKeygenRequest, principal: Principal) -> ServerResponse:
        """/serverkeygen (RFC 7030 4.4): a new key of the CSR key's type,
        unencrypted PKCS#8, or encrypted to the KEK the CSR names."""
        recipient = key_recipient(request, self.settings.keks)
        if isinstance(recipient, ErrorResponse):
            return recipient
        try:
            self._check_label(request.label)
        except LookupError:
            return ErrorResponse(404, "unknown CA label")
        gate = self._gate(request.csr, principal, request.label, Operation.SERVERKEYGEN)
        if isinstance(gate, ServerResponse):
            return gate
        if isinstance(gate, x509.Certificate):  # pragma: no cover - the gate starts a new request
            return ErrorResponse(409, "the key for this request was already delivered")
        key = generate_like(request.csr, self.settings.profile)
        try:
            cert = self._issue(request.csr, principal, request.label, Operation.SERVERKEYGEN,
                               public_key=key.public_key(), pending_id=gate)
        except Refused as exc:
            return ErrorResponse(exc.status, exc.reason)
        if recipient is None:
            return ServerKeygenResponse(cert, private_key=key)
        encrypted = serverkey.encrypt_key_package(
            key, signer_key=self.signer.key, signer_cert=self.issuer_certificate, recipient=recipient)
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
            signer_key=self.signer.key, signer_cert=self.issuer_certificate,
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
                except Refused as exc:
                    return failed(exc.fail_info, exc.reason, exc.status)
            der = cmc.build_full_pki_response_success(
                (cert,) + self.ca_certificates, body_part_ids=(tagged.body_part_id,), **common)
            return FullCMCResponse(der)
        except StoreError:
            _log.exception("certificate store failure on fullcmc")
            return failed(cmc.CMCFailInfo.TRY_LATER, "certificate store unavailable", 503)

