"""The embedded CA's persistent store: issued certificates, pending requests,
users and an audit log (RFC 7030 4.2.1, 4.2.3; issue "embedded CA").

:class:`Store` is the interface the CA talks to, so a PostgreSQL store can
follow for deployments with several front-end machines; :class:`SQLiteStore`
is the implementation shipped, on the standard library's :mod:`sqlite3`.

Durability rule: "A certificate is returned to a client only after its
record is committed." SQLite in WAL mode with ``synchronous=FULL`` makes a
commit durable (the WAL is fsync'ed) but costs ~134 us here, as much as the
rest of an enrollment. So writes go through a *group committer* (the
leader/follower scheme of LevelDB's write queue): callers (the server's
worker threads) append a small job to a queue and block until a commit
covering it has completed. A caller that finds no commit under way becomes
the committer itself: it takes every job waiting (up to ``max_batch``;
optionally it lingers ``commit_window`` seconds for more), runs each inside
its own SAVEPOINT (so one job's constraint violation, e.g. a duplicate
serial, fails that job alone; a batch of one job needs none), commits once,
wakes the callers of that batch, and hands the committer role to the oldest
caller still waiting, if any. Under load the batch grows by itself: the
jobs that arrive while one fsync runs share the next one. There is no
writer thread: the thread that has to wait for the commit anyway does the
work, which saves two thread wake-ups per commit (a writer's and the
caller's): with the embedded CA behind the trio or asyncio server, 10-15%
of the server CPU per enrollment. One write connection serves every committer, one at a time. If the
commit fails, every caller of that batch gets :class:`StoreError`: a
certificate is never handed out without its record.

Readers use their own connections (one per thread, ``query_only``), which
WAL lets run beside the writer. Several processes (``serve --workers N``)
may open the same file: each has one writer, writes take ``BEGIN IMMEDIATE``
and wait up to ``busy_timeout`` for each other.

Faults: any :class:`sqlite3.Error` becomes a :class:`StoreError` saying what
failed (disk full, read-only directory, locked database ...). Opening a store
whose directory or file cannot be written fails at once with a clear
message, not at the first enrollment.

Schema: a ``schema_version`` table holds the version. Opening a store
written by a newer estproto raises :class:`SchemaVersionError`; an older one
is migrated in place, inside one transaction.
"""

from __future__ import annotations

import abc
import concurrent.futures
import datetime
import enum
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Final, Sequence, TypeVar

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
    "SQLiteStore",
    "SCHEMA_VERSION",
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

#: Default longest batch a commit covers. Bounds the latency of the last job
#: of a batch and the size of one transaction; 256 enrollments is ~40 ms of
#: signing on this machine's two cores, far above what a batch reaches.
MAX_BATCH: Final = 256

#: Default ``caller_commit_limit``: a commit slower than this on average
#: (a slow or remote disk) is never made on the caller's thread.
CALLER_COMMIT_LIMIT: Final = 0.002

#: Seconds a writer waits for a lock held by another process's writer
#: (``serve --workers N``) before the job fails with "database is locked".
BUSY_TIMEOUT: Final = 10.0


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


# ---------------------------------------------------------------------------
# SQLite

#: The schema version this code writes. Version history:
#: 1: issued, pending, users, audit tables.
#: 2: indexes for listings (issued by requester, pending by state).
#: 3: partial index of revoked certificates (the CRL reads only those).
SCHEMA_VERSION: Final = 3

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # to version 1
    (
        """CREATE TABLE issued (
            id INTEGER PRIMARY KEY,
            serial TEXT NOT NULL UNIQUE,
            der BLOB NOT NULL,
            subject TEXT NOT NULL,
            san TEXT NOT NULL,
            requester TEXT NOT NULL,
            request_der BLOB,
            label TEXT NOT NULL,
            operation TEXT NOT NULL,
            issued_at TEXT NOT NULL,
            not_after TEXT NOT NULL,
            revoked_at TEXT,
            revocation_reason TEXT)""",
        """CREATE TABLE pending (
            id INTEGER PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            label TEXT NOT NULL,
            operation TEXT NOT NULL,
            requester TEXT NOT NULL,
            subject TEXT NOT NULL,
            csr_der BLOB NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('pending', 'approved', 'rejected', 'issued')),
            created_at TEXT NOT NULL,
            decided_at TEXT,
            decided_by TEXT,
            serial TEXT,
            note TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX pending_fingerprint ON pending (fingerprint)",
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            realm TEXT NOT NULL,
            ha1_sha256 TEXT NOT NULL,
            ha1_md5 TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL)""",
    ),
    # to version 2
    (
        "CREATE INDEX issued_requester ON issued (requester)",
        "CREATE INDEX pending_state ON pending (state)",
    ),
    # to version 3
    (
        "CREATE INDEX issued_revoked ON issued (revoked_at) WHERE revoked_at IS NOT NULL",
    ),
)

assert len(_MIGRATIONS) == SCHEMA_VERSION


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    text = str(exc) or type(exc).__name__
    hint = ""
    lowered = text.lower()
    if "readonly" in lowered or "unable to open" in lowered:
        hint = " (is the data directory read-only or missing?)"
    elif "disk is full" in lowered or "database or disk is full" in lowered:
        hint = " (disk full or size limit reached)"
    elif "locked" in lowered or "busy" in lowered:
        hint = " (another process holds the write lock)"
    return f"{text}{hint}" + (f" [{name}]" if name else "")


class _Job:
    """One write for the group committer, and its caller's wake-up: a
    blocked caller's lock, or the callback of a caller that did not wait."""

    __slots__ = ("fn", "finished", "_lock", "result", "error", "callback")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], object],
        callback: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self.fn = fn
        self.finished = False
        self.callback = callback
        # Held until the job is finished. A bare lock, not a threading.Event:
        # waking the caller costs one release instead of a Condition's
        # notify with its own extra lock, on every write.
        self._lock = threading.Lock()
        if callback is None:
            self._lock.acquire()
        self.result: object = None
        self.error: BaseException | None = None

    def finish(self) -> None:
        """Mark the job finished and wake its caller (called exactly once)."""
        self.finished = True
        if self.callback is None:
            self._lock.release()
            return
        try:
            self.callback(self.error)
        except Exception:  # a caller's bug must not stop the committer
            _log.exception("store completion callback failed")

    def promote(self) -> None:
        """Wake the caller, unfinished: it is now the committer."""
        self._lock.release()

    def wait(self) -> None:
        """Block until :meth:`finish` or :meth:`promote`."""
        self._lock.acquire()


class SQLiteStore(Store):
    """:class:`Store` on one SQLite file (WAL, ``synchronous=FULL``).

    Args:
        path: the database file; its directory must exist and be writable
            (SQLite creates ``-wal`` and ``-shm`` files beside it).
        group_commit: batch concurrent writes into shared commits (see the
            module docstring). False commits each write on its own (for
            comparison; the durability guarantee is the same).
        commit_window: seconds the committer lingers after the first job of a
            batch for more to arrive. 0 (the default) adds no latency: a
            batch is whatever queued while the previous commit ran, which
            is what makes batches grow under load.
        max_batch: most jobs per commit.
        caller_commit_limit: seconds; while commits take less than this
            (a moving average), :meth:`record_issued_later` commits on the
            caller's own thread when no commit is under way, instead of
            handing the job to the committer thread (see there). 0: always
            the committer thread.
        max_pages: cap the database size in pages (``PRAGMA max_page_count``):
            a quota, and a way to exercise the disk-full path.
        busy_timeout: seconds to wait for another process's write lock.

    Raises:
        SchemaVersionError: the file has a newer schema than this code.
        StoreError: the file cannot be opened or written (a read-only
            directory, a full disk, not a database).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        group_commit: bool = True,
        commit_window: float = 0.0,
        max_batch: int = MAX_BATCH,
        caller_commit_limit: float = CALLER_COMMIT_LIMIT,
        max_pages: int | None = None,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        if max_batch < 1 or commit_window < 0:
            raise ValueError("max_batch must be >= 1 and commit_window >= 0")
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._max_pages = max_pages
        self._window = commit_window
        self._max_batch = max_batch if group_commit else 1
        self._caller_commit_limit = caller_commit_limit
        #: Moving average of a commit's wall time, seconds.
        self.commit_seconds = 0.0
        self._closed = False
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        # The group committer's state (see the module docstring): jobs not
        # yet taken by a committer, oldest first, and whether a committer is
        # active; both guarded by _mutex. _changed signals a committer
        # lingering for a full batch, and close() waiting for the last one.
        self._mutex = threading.Lock()
        self._changed = threading.Condition(self._mutex)
        self._waiting: list[_Job] = []
        self._committing = False
        # Commits for callers that do not wait (record_issued_later) run on
        # this thread, started at the first such job.
        self._committer: threading.Thread | None = None
        self._committer_go = threading.Semaphore(0)
        # Jobs record_issued_later left for its caller's flush.
        self._deferred: list[_Job] = []
        #: Commits made and jobs they covered (jobs / commits = mean batch).
        self.commits = 0
        self.jobs = 0
        if not self.path.exists():
            # The store holds password hashes: owner-only from the start
            # (SQLite gives the -wal and -shm files the same mode).
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot create the certificate store {self.path}: {exc}") from exc
        self._writer = self._open_writer()

    # -- connections -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot put {self.path} in WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            if self._max_pages is not None:
                conn.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
            # A write transaction right away: a read-only file or directory
            # fails here, at open, with a clear message.
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._migrate(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"cannot open the certificate store {self.path}: {_describe(exc)}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "schema_version" in tables:
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                raise SchemaVersionError(f"{self.path}: schema_version table is empty")
            version = int(row[0])
        elif tables:
            raise SchemaVersionError(
                f"{self.path} is an SQLite database but not an estproto store "
                f"(tables: {', '.join(sorted(tables))})"
            )
        else:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version VALUES (0)")
            version = 0
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has schema version {version}, newer than this estproto "
                f"understands ({SCHEMA_VERSION}): upgrade estproto, or restore a backup"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = ?", (target,))

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect()
                conn.execute("PRAGMA query_only=1")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the certificate store: {_describe(exc)}") from exc
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            return list(self._reader().execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"certificate store read failed: {_describe(exc)}") from exc

    # -- the group committer -----------------------------------------------

    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run *fn* in a transaction; return once it is committed.

        Raises:
            StoreError: the job or its commit failed (no effect).
        """
        job = _Job(fn)
        with self._mutex:
            if self._closed:
                raise StoreError("the store is closed")
            self._waiting.append(job)
            lead = not self._committing
            self._committing = True
            if self._window and len(self._waiting) >= self._max_batch:
                self._changed.notify_all()  # a lingering committer has a full batch
        if not lead:
            job.wait()
            lead = not job.finished  # promoted: commit the next batch ourselves
        if lead:
            self._lead()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]  # the leader stored fn's return value

    def _submit_jobs(self, jobs: list[_Job], *, lead_here: bool = False) -> None:
        """Queue callback jobs and return without waiting for them. If no
        commit is under way, lead one now on this thread (*lead_here*) or
        hand the lead to the committer thread."""
        lead = refused = False
        with self._mutex:
            if self._closed:
                refused = True
            else:
                self._waiting.extend(jobs)
                lead = not self._committing
                self._committing = True
                if self._window and len(self._waiting) >= self._max_batch:
                    self._changed.notify_all()
                if lead and not lead_here:
                    self._hand_to_committer()
        if refused:
            error = StoreError("the store is closed")
            for job in jobs:
                job.error = error
                job.finish()
        elif lead and lead_here:
            self._lead()

    def _hand_to_committer(self) -> None:
        """Make the committer thread lead the next batch (``_mutex`` held)."""
        if self._committer is None:
            self._committer = threading.Thread(
                target=self._commit_forever, name="estproto-store-committer", daemon=True)
            self._committer.start()
        self._committer_go.release()

    def _commit_forever(self) -> None:
        while True:
            self._committer_go.acquire()
            with self._mutex:
                if not self._committing:
                    return  # close(): nothing left to lead
            self._lead()

    def _lead(self) -> None:
        """Commit one batch (the oldest waiting jobs, ours first among
        them), then pass the committer role on or give it up."""
        batch: list[_Job] = []
        try:
            with self._mutex:
                if self._window:
                    self._changed.wait_for(
                        lambda: len(self._waiting) >= self._max_batch, timeout=self._window)
                batch = self._waiting[:self._max_batch]
                del self._waiting[:self._max_batch]
            self._commit(self._writer, batch)
        finally:
            for job in batch:  # only after an exception escaping _commit
                if not job.finished:
                    job.error = StoreError("certificate store write interrupted")
                    job.finish()
            with self._mutex:
                if self._waiting:
                    if self._waiting[0].callback is None:
                        self._waiting[0].promote()
                    else:
                        self._hand_to_committer()  # nobody waits on that one
                else:
                    self._committing = False
                    self._changed.notify_all()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        # A batch of one needs no SAVEPOINT: if its job fails, rolling back
        # the whole transaction undoes exactly that job. Many batches are
        # single jobs, and each statement is a GIL release and reacquire.
        single = len(batch) == 1
        done: list[_Job] = []
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                if not single:
                    conn.execute("SAVEPOINT job")
                try:
                    job.result = job.fn(conn)
                except Exception as exc:
                    if not conn.in_transaction:
                        raise
                    # This job alone fails; the batch goes on.
                    if single:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    if isinstance(exc, (sqlite3.Error, StoreError)):
                        job.error = self._translate(exc)
                    else:
                        job.error = exc
                    job.finish()
                    continue
                if not single:
                    conn.execute("RELEASE job")
                done.append(job)
            if done or not single:
                conn.execute("COMMIT")
                self.commits += 1
                self.jobs += len(done)
                self.commit_seconds += (time.perf_counter() - started - self.commit_seconds) * 0.2
        except Exception as exc:
            # The transaction is lost (disk full, I/O error ...): nobody in
            # this batch may believe their write happened.
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            error = StoreError(f"certificate store write failed: {_describe(exc)}")
            error.__cause__ = exc
            for job in batch:
                if not job.finished:
                    job.error = error
                    job.finish()
            return
        for job in done:
            job.finish()

    @staticmethod
    def _translate(exc: BaseException) -> BaseException:
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, sqlite3.IntegrityError) and "issued.serial" in str(exc):
            return DuplicateSerialError("a certificate with this serial number is already recorded")
        error = StoreError(f"certificate store write refused: {_describe(exc)}")
        error.__cause__ = exc
        return error

    def close(self) -> None:
        self._flush_deferred()  # a caller that never flushed loses nothing
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            # Jobs already queued are committed; then the write connection is free.
            self._changed.wait_for(lambda: not self._committing)
            committer = self._committer
            if committer is not None:
                self._committer_go.release()  # finds nothing to lead: ends
        if committer is not None:
            committer.join()
        self._writer.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- issued ------------------------------------------------------------

    _ISSUED_COLUMNS = (
        "serial, der, subject, san, requester, request_der, label, operation, issued_at, "
        "not_after, revoked_at, revocation_reason"
    )

    @staticmethod
    def _issued(row: Any) -> IssuedRecord:
        issued_at = _dt(row[8])
        not_after = _dt(row[9])
        assert issued_at is not None and not_after is not None
        return IssuedRecord(
            serial=str(row[0]), der=bytes(row[1]), subject=str(row[2]),
            san=str(row[3]), requester=str(row[4]),
            request_der=None if row[5] is None else bytes(row[5]),
            label=str(row[6]), operation=str(row[7]), issued_at=issued_at, not_after=not_after,
            revoked_at=_dt(row[10]),
            revocation_reason=None if row[11] is None else str(row[11]),
        )

    def record_issued(self, record: IssuedRecord, *, pending_id: int | None = None) -> None:
        self._submit(self._issued_job(record, pending_id))

    def record_issued_later(
        self, record: IssuedRecord, done: Callable[[BaseException | None], None],
    ) -> Callable[[], None] | None:
        # _commit gives the job the error record_issued would raise.
        job = _Job(self._issued_job(record, None), done)
        if self._caller_commit_limit > 0 and self.commit_seconds < self._caller_commit_limit:
            # Measured (benchmarks/bench_loopback.py): handing each job to
            # the committer thread and waking the event loop afterwards
            # costs more CPU than a fast local commit (~0.2 ms), so the
            # caller commits, and with one flush per turn of its loop the
            # records of every enrollment signed in that turn share one
            # commit. A slow disk pushes the average over the limit: then
            # the loop is never blocked, the committer thread takes them.
            with self._mutex:
                if self._closed:
                    raise StoreError("the store is closed")
                self._deferred.append(job)
            return self._flush_deferred
        self._submit_jobs([job])
        return None

    def _flush_deferred(self) -> None:
        """Commit the jobs :meth:`record_issued_later` left to its callers,
        on this thread, unless a commit is under way (it then takes them)."""
        with self._mutex:
            jobs, self._deferred = self._deferred, []
        if jobs:
            self._submit_jobs(jobs, lead_here=True)

    def _issued_job(self, record: IssuedRecord, pending_id: int | None) -> Callable[[sqlite3.Connection], None]:
        values = (
            record.serial, record.der, record.subject, record.san, record.requester,
            record.request_der, record.label, record.operation, _ts(record.issued_at),
            _ts(record.not_after), _ts(record.revoked_at), record.revocation_reason,
        )

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO issued ({self._ISSUED_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                values,
            )
            if pending_id is not None:
                cur = conn.execute(
                    "UPDATE pending SET state='issued', serial=? WHERE id=? AND state='approved'",
                    (record.serial, pending_id),
                )
                if cur.rowcount != 1:
                    raise StateError(f"pending request {pending_id} is no longer approved")

        return job

    def get_issued(self, serial: str) -> IssuedRecord | None:
        rows = self._read(f"SELECT {self._ISSUED_COLUMNS} FROM issued WHERE serial=?", (serial,))
        return self._issued(rows[0]) if rows else None

    def list_issued(self, *, limit: int | None = None, offset: int = 0) -> list[IssuedRecord]:
        rows = self._read(
            f"SELECT {self._ISSUED_COLUMNS} FROM issued ORDER BY id LIMIT ? OFFSET ?",
            (-1 if limit is None else limit, offset),
        )
        return [self._issued(r) for r in rows]

    def count_issued(self) -> int:
        return int(self._read("SELECT count(*) FROM issued")[0][0])

    def list_revoked(self) -> list[IssuedRecord]:
        rows = self._read(
            f"SELECT {self._ISSUED_COLUMNS} FROM issued WHERE revoked_at IS NOT NULL "
            "ORDER BY revoked_at, serial"
        )
        return [self._issued(r) for r in rows]

    def revoke(self, serial: str, reason: str, actor: str) -> IssuedRecord:
        at = _ts(_now())

        def job(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE issued SET revoked_at=?, revocation_reason=? "
                "WHERE serial=? AND revoked_at IS NULL",
                (at, reason, serial),
            )
            if cur.rowcount == 0:
                if conn.execute("SELECT 1 FROM issued WHERE serial=?", (serial,)).fetchone() is None:
                    raise NotFoundError(f"no issued certificate has serial {serial}")
                return
            _audit(conn, actor, "revoke", f"serial={serial} reason={reason}")

        self._submit(job)
        record = self.get_issued(serial)
        assert record is not None
        return record

    # -- pending -----------------------------------------------------------

    _PENDING_COLUMNS = (
        "id, fingerprint, label, operation, requester, subject, csr_der, state, created_at, "
        "decided_at, decided_by, serial, note"
    )

    @staticmethod
    def _pending(row: Any) -> PendingRecord:
        created = _dt(row[8])
        assert created is not None
        return PendingRecord(
            id=int(row[0]), fingerprint=str(row[1]), label=str(row[2]),
            operation=str(row[3]), requester=str(row[4]), subject=str(row[5]),
            csr_der=bytes(row[6]), state=PendingState(row[7]), created_at=created,
            decided_at=_dt(row[9]), decided_by=None if row[10] is None else str(row[10]),
            serial=None if row[11] is None else str(row[11]), note=str(row[12]),
        )

    def add_pending(
        self, *, fingerprint: str, label: str, operation: str, requester: str, subject: str,
        csr_der: bytes,
    ) -> PendingRecord:
        created = _ts(_now())

        def job(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO pending (fingerprint, label, operation, requester, subject, "
                "csr_der, state, created_at) VALUES (?,?,?,?,?,?,'pending',?)",
                (fingerprint, label, operation, requester, subject, csr_der, created),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        pending_id = self._submit(job)
        record = self.get_pending(pending_id)
        assert record is not None
        return record

    def find_pending(self, fingerprint: str) -> PendingRecord | None:
        rows = self._read(
            f"SELECT {self._PENDING_COLUMNS} FROM pending WHERE fingerprint=? "
            "ORDER BY id DESC LIMIT 1",
            (fingerprint,),
        )
        return self._pending(rows[0]) if rows else None

    def get_pending(self, pending_id: int) -> PendingRecord | None:
        rows = self._read(f"SELECT {self._PENDING_COLUMNS} FROM pending WHERE id=?", (pending_id,))
        return self._pending(rows[0]) if rows else None

    def list_pending(self, state: PendingState | None = PendingState.PENDING) -> list[PendingRecord]:
        if state is None:
            rows = self._read(f"SELECT {self._PENDING_COLUMNS} FROM pending ORDER BY id")
        else:
            rows = self._read(
                f"SELECT {self._PENDING_COLUMNS} FROM pending WHERE state=? ORDER BY id",
                (state.value,),
            )
        return [self._pending(r) for r in rows]

    def decide_pending(
        self, pending_id: int, state: PendingState, actor: str, note: str = ""
    ) -> PendingRecord:
        if state not in (PendingState.APPROVED, PendingState.REJECTED):
            raise ValueError("a decision is APPROVED or REJECTED")
        at = _ts(_now())

        def job(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT state FROM pending WHERE id=?", (pending_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no pending request has id {pending_id}")
            if row[0] != PendingState.PENDING.value:
                raise StateError(f"pending request {pending_id} is already {row[0]}")
            conn.execute(
                "UPDATE pending SET state=?, decided_at=?, decided_by=?, note=? WHERE id=?",
                (state.value, at, actor, note, pending_id),
            )
            _audit(conn, actor, state.value, f"pending={pending_id}")

        self._submit(job)
        record = self.get_pending(pending_id)
        assert record is not None
        return record

    # -- users -------------------------------------------------------------

    def put_user(self, user: UserRecord, actor: str) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO users (name, password_hash, realm, ha1_sha256, ha1_md5, "
                "created_at) VALUES (?,?,?,?,?,?)",
                (user.name, user.password_hash, user.realm, user.ha1_sha256, user.ha1_md5,
                 _ts(user.created_at)),
            )
            _audit(conn, actor, "put-user", f"user={user.name}")

        self._submit(job)

    def get_user(self, name: str) -> UserRecord | None:
        rows = self._read(
            "SELECT name, password_hash, realm, ha1_sha256, ha1_md5, created_at FROM users "
            "WHERE name=?",
            (name,),
        )
        if not rows:
            return None
        r = rows[0]
        created = _dt(r[5])
        assert created is not None
        return UserRecord(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), created)

    def delete_user(self, name: str, actor: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM users WHERE name=?", (name,))
            if cur.rowcount:
                _audit(conn, actor, "delete-user", f"user={name}")
            return cur.rowcount > 0

        return self._submit(job)

    def list_users(self) -> list[str]:
        return [str(r[0]) for r in self._read("SELECT name FROM users ORDER BY name")]

    # -- audit -------------------------------------------------------------

    def audit(self, actor: str, action: str, detail: str) -> None:
        self._submit(lambda conn: _audit(conn, actor, action, detail))

    def list_audit(self, limit: int = 100) -> list[AuditRecord]:
        rows = self._read(
            "SELECT id, at, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        out = []
        for r in reversed(rows):
            at = _dt(r[1])
            assert at is not None
            out.append(AuditRecord(int(r[0]), at, str(r[2]), str(r[3]), str(r[4])))
        return out


def _audit(conn: sqlite3.Connection, actor: str, action: str, detail: str) -> None:
    conn.execute(
        "INSERT INTO audit (at, actor, action, detail) VALUES (?,?,?,?)",
        (_ts(_now()), actor, action, detail),
    )
