"""The embedded CA's record store: the interface and the records.

:class:`Store` is what the CA needs from persistence: issued certificates,
pending requests (RFC 7030 4.2.3), users (RFC 7030 4.2.1 HTTP
authentication) and an audit log. Two implementations ship:
:class:`estproto.ca.sqlite_store.SQLiteStore` (the embedded default, one
file) and :class:`estproto.ca.postgres_store.PostgreSQLStore` (several
front-ends on one database). Both make every write durable before the write
returns, batching concurrent writes (:mod:`.group_commit`).
"""

from __future__ import annotations

import abc
import concurrent.futures
import datetime
import enum
import logging
import threading
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "StoreError",
    "SchemaVersionError",
    "DuplicateSerialError",
    "NotFoundError",
    "StateError",
    "PendingState",
    "IssuedRecord",
    "PendingRecord",
    "UserRecord",
    "AuditRecord",
    "Store",
]

T = TypeVar("T")

_log = logging.getLogger("estproto.store")
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _default_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for :meth:`Store.record_issued_later`'s default."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="estproto-store")
        return _pool


class StoreError(Exception):
    """The store could not do what was asked (I/O error, disk full,
    read-only directory, locked database, corrupted file). The operation
    had no effect."""


class SchemaVersionError(StoreError):
    """The database was written by a newer estproto (or is not ours)."""


class DuplicateSerialError(StoreError):
    """A certificate with this serial number is already recorded."""


class NotFoundError(StoreError, LookupError):
    """No record with that key (serial, pending id, user)."""


class StateError(StoreError):
    """The record is not in a state that allows the change (e.g. approving a
    rejected request)."""


class PendingState(enum.Enum):
    """Life of a deferred enrollment (RFC 7030 4.2.3)."""

    #: Waiting for an operator; the client is told 202 + Retry-After.
    PENDING = "pending"
    #: Approved; the client's next retry gets the certificate.
    APPROVED = "approved"
    #: Rejected; retries are refused.
    REJECTED = "rejected"
    #: A certificate was issued for it (``serial``).
    ISSUED = "issued"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _ts(when: datetime.datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return when.astimezone(datetime.timezone.utc).isoformat(timespec="microseconds")


def _dt(text: str | None) -> datetime.datetime | None:
    return None if text is None else datetime.datetime.fromisoformat(text)


@dataclass(frozen=True)
class IssuedRecord:
    """One issued certificate.

    Attributes:
        serial: the serial number as lowercase hex without leading zeros.
        der: the certificate DER.
        subject: RFC 4514 text of the subject, for listings.
        san: the subjectAltName names as text ("" when none).
        requester: who asked, e.g. ``"user:alice"`` or ``"cert:1f..."``.
        request_der: the PKCS#10 (or CMC request) DER it was issued for.
        label: the CA label of the request ("" when none).
        operation: the EST operation ("simpleenroll", "init" ...).
        issued_at, not_after: validity facts, aware UTC datetimes.
        revoked_at, revocation_reason: set once revoked.
    """

    serial: str
    der: bytes
    subject: str
    san: str
    requester: str
    request_der: bytes | None
    label: str
    operation: str
    issued_at: datetime.datetime
    not_after: datetime.datetime
    revoked_at: datetime.datetime | None = None
    revocation_reason: str | None = None

    @classmethod
    def for_certificate(
        cls, cert: x509.Certificate, *, requester: str, request_der: bytes | None, label: str,
        operation: str, subject: x509.Name | None = None,
        sans: Sequence[x509.GeneralName] | None = None, not_after: datetime.datetime | None = None,
    ) -> IssuedRecord:
        """The record of *cert*. An issuer passes the subject, SANs and
        notAfter it built the certificate with: parsing them back out of
        the new certificate would cost as much as the rest of the record."""
        if sans is None:
            try:
                sans = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
            except x509.ExtensionNotFound:
                sans = []
        return cls(
            serial=format(cert.serial_number, "x"),
            der=cert.public_bytes(serialization.Encoding.DER),
            subject=(cert.subject if subject is None else subject).rfc4514_string(),
            san=", ".join(f"{type(n).__name__[:-4] or 'Name'}:{getattr(n, 'value', n)}" for n in sans),
            requester=requester,
            request_der=request_der,
            label=label,
            operation=operation,
            issued_at=_now(),
            not_after=cert.not_valid_after_utc if not_after is None else not_after,
        )

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate as a ``cryptography`` object."""
        return x509.load_der_x509_certificate(self.der)

    @property
    def revoked(self) -> bool:
        """True once revoked."""
        return self.revoked_at is not None


@dataclass(frozen=True)
class PendingRecord:
    """A deferred enrollment (RFC 7030 4.2.3) awaiting or past a decision.

    Attributes:
        id: the store's identifier, shown to operators.
        fingerprint: what recognises the client's retry of the same request
            (see :meth:`estproto.ca.EmbeddedCA.request_fingerprint`).
        label, operation, requester, subject: as for :class:`IssuedRecord`.
        csr_der: the PKCS#10 DER as first received.
        state: see :class:`PendingState`.
        created_at, decided_at: when received and when decided.
        decided_by: the operator's name, if recorded.
        serial: the certificate issued for it, once ISSUED.
        note: the operator's note (e.g. why rejected).
    """

    id: int
    fingerprint: str
    label: str
    operation: str
    requester: str
    subject: str
    csr_der: bytes
    state: PendingState
    created_at: datetime.datetime
    decided_at: datetime.datetime | None = None
    decided_by: str | None = None
    serial: str | None = None
    note: str = ""


@dataclass(frozen=True)
class UserRecord:
    """An HTTP user: never the plaintext password.

    Attributes:
        name: the user-id.
        password_hash: :func:`estproto.auth.hash_password` output (Basic).
        realm: the Digest realm the HA1 values were computed for.
        ha1_sha256, ha1_md5: Digest HA1 values (RFC 7616 3.4.2) so Digest
            works without the plaintext.
        created_at: when stored.
    """

    name: str
    password_hash: str
    realm: str
    ha1_sha256: str
    ha1_md5: str
    created_at: datetime.datetime


@dataclass(frozen=True)
class AuditRecord:
    """One audit log line: who did what. Never holds secrets."""

    id: int
    at: datetime.datetime
    actor: str
    action: str
    detail: str


class Store(abc.ABC):
    """What the embedded CA needs from persistence.

    Every write method returns only once its effect is durable, and raises
    :class:`StoreError` (having had no effect) otherwise. Methods are safe
    to call from many threads.
    """

    # -- issued certificates
    @abc.abstractmethod
    def record_issued(self, record: IssuedRecord, *, pending_id: int | None = None) -> None:
        """Record an issued certificate durably.

        Args:
            record: the certificate and its facts.
            pending_id: also move this APPROVED pending request to ISSUED
                with this serial, in the same transaction.

        Raises:
            DuplicateSerialError: the serial is taken (issue a new one).
            StateError: *pending_id* is not APPROVED any more.
            StoreError: the record could not be committed.
        """

    def record_issued_later(
        self, record: IssuedRecord, done: Callable[[BaseException | None], None],
    ) -> Callable[[], None] | None:
        """:meth:`record_issued` for callers that must not wait (a server's
        event loop): ``done(None)`` is called once the record is durable, or
        ``done(error)`` with the exception :meth:`record_issued` would raise.

        Returns:
            None when another thread commits it (``done`` runs there), or a
            *flush* function: the caller calls it soon, on its own thread,
            and it commits every record queued that way so far in one
            transaction (``done`` runs within it). A caller that cannot call
            it must not hold the record's answer back: the store commits
            queued records at the latest when it closes.

        This default runs :meth:`record_issued` in a small thread pool; a
        store with a committer of its own does better.

        Raises:
            StoreError: the store is closed (nothing was recorded).
        """
        def job() -> None:
            try:
                self.record_issued(record)
            except BaseException as exc:
                done(exc)
            else:
                done(None)

        _default_pool().submit(job)
        return None

    @abc.abstractmethod
    def get_issued(self, serial: str) -> IssuedRecord | None:
        """The record of *serial* (hex), or None."""

    @abc.abstractmethod
    def list_issued(self, *, limit: int | None = None, offset: int = 0) -> list[IssuedRecord]:
        """Issued certificates, oldest first."""

    @abc.abstractmethod
    def count_issued(self) -> int:
        """How many certificates are recorded."""

    def list_revoked(self) -> list[IssuedRecord]:
        """Revoked certificates, in the order they were revoked (what a CRL
        lists). This default reads every record; a store with an index does
        better."""
        revoked = [r for r in self.list_issued() if r.revoked]
        return sorted(revoked, key=lambda r: (r.revoked_at, r.serial))

    @abc.abstractmethod
    def revoke(self, serial: str, reason: str, actor: str) -> IssuedRecord:
        """Mark *serial* revoked (idempotent: a second call keeps the first date).

        Raises:
            NotFoundError: no such certificate.
        """

    # -- pending requests
    @abc.abstractmethod
    def add_pending(
        self, *, fingerprint: str, label: str, operation: str, requester: str, subject: str,
        csr_der: bytes,
    ) -> PendingRecord:
        """Record a new PENDING request and return it."""

    @abc.abstractmethod
    def find_pending(self, fingerprint: str) -> PendingRecord | None:
        """The most recent request with this fingerprint, or None."""

    @abc.abstractmethod
    def get_pending(self, pending_id: int) -> PendingRecord | None:
        """The request with this id, or None."""

    @abc.abstractmethod
    def list_pending(self, state: PendingState | None = PendingState.PENDING) -> list[PendingRecord]:
        """Requests in *state* (None: all), oldest first."""

    @abc.abstractmethod
    def decide_pending(
        self, pending_id: int, state: PendingState, actor: str, note: str = ""
    ) -> PendingRecord:
        """Move a PENDING request to APPROVED or REJECTED.

        Raises:
            NotFoundError: no such request.
            StateError: it is not PENDING (already decided).
        """

    # -- users
    @abc.abstractmethod
    def put_user(self, user: UserRecord, actor: str) -> None:
        """Create or replace a user."""

    @abc.abstractmethod
    def get_user(self, name: str) -> UserRecord | None:
        """The user named *name*, or None."""

    @abc.abstractmethod
    def delete_user(self, name: str, actor: str) -> bool:
        """Delete a user; False if there was none."""

    @abc.abstractmethod
    def list_users(self) -> list[str]:
        """User names, sorted."""

    # -- audit
    @abc.abstractmethod
    def audit(self, actor: str, action: str, detail: str) -> None:
        """Append an audit line (no secrets in *detail*)."""

    @abc.abstractmethod
    def list_audit(self, limit: int = 100) -> list[AuditRecord]:
        """The last *limit* audit lines, oldest first."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and threads; later calls raise StoreError."""


