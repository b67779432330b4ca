"""The embedded CA's default record store: one SQLite file (standard
library :mod:`sqlite3`), WAL mode, ``synchronous=FULL``.

A commit is durable (the WAL is fsync'ed) but costs ~134 us here, as much as
the rest of an enrollment, so writes go through the group committer of
:mod:`.group_commit`: concurrent writes share one commit.

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

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Final, Sequence

from .group_commit import GroupCommitter, Job, commit_batch
from .store import (
    AuditRecord,
    DuplicateSerialError,
    IssuedRecord,
    NotFoundError,
    PendingRecord,
    PendingState,
    SchemaVersionError,
    StateError,
    Store,
    StoreError,
    UserRecord,
    _dt,
    _now,
    _ts,
)

__all__ = ["SQLiteStore", "SCHEMA_VERSION", "MAX_BATCH", "CALLER_COMMIT_LIMIT", "BUSY_TIMEOUT"]

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



class _SQLiteDialect:
    """How :func:`commit_batch` drives :mod:`sqlite3`."""

    begin = "BEGIN IMMEDIATE"

    @staticmethod
    def in_transaction(conn: sqlite3.Connection) -> bool:
        return conn.in_transaction

    @staticmethod
    def job_error(exc: Exception) -> BaseException:
        if isinstance(exc, StoreError):
            return exc
        if not isinstance(exc, sqlite3.Error):
            return exc
        if isinstance(exc, sqlite3.IntegrityError) and "issued.serial" in str(exc):
            return DuplicateSerialError("a certificate with this serial number is already recorded")
        error = StoreError(f"certificate store write refused: {_describe(exc)}")
        error.__cause__ = exc
        return error

    @staticmethod
    def batch_error(exc: Exception) -> BaseException:
        error = StoreError(f"certificate store write failed: {_describe(exc)}")
        error.__cause__ = exc
        return error


class SQLiteStore(Store):
    """:class:`Store` on one SQLite file (WAL, ``synchronous=FULL``).

    Args:
        path: the database file; its directory must exist and be writable
            (SQLite creates ``-wal`` and ``-shm`` files beside it).
        group_commit: batch concurrent writes into shared commits (see
            :mod:`.group_commit`). False commits each write on its own (for
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
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._max_pages = max_pages
        self._caller_commit_limit = caller_commit_limit
        self._committer = GroupCommitter(
            self._commit, StoreError, max_batch=max_batch if group_commit else 1,
            commit_window=commit_window, thread_name="estproto-store-committer")
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._local = threading.local()
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

    # Commit statistics (see GroupCommitter); commit_seconds is settable so
    # tests can pretend the disk is slow.
    @property
    def commits(self) -> int:
        return self._committer.commits

    @property
    def jobs(self) -> int:
        return self._committer.jobs

    @property
    def commit_seconds(self) -> float:
        return self._committer.commit_seconds

    @commit_seconds.setter
    def commit_seconds(self, value: float) -> None:
        self._committer.commit_seconds = value

    # -- connections -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )

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
        if self._committer.closed:
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

    def _commit(self, batch: list[Job]) -> int:
        # One write connection serves every committer, one at a time.
        return commit_batch(self._writer, batch, _SQLiteDialect)

    def close(self) -> None:
        if not self._committer.close():
            return
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
        self._committer.submit(self._issued_job(record, pending_id))

    def record_issued_later(
        self, record: IssuedRecord, done: Callable[[BaseException | None], None],
    ) -> Callable[[], None] | None:
        # _commit gives the job the error record_issued would raise.
        job = Job(self._issued_job(record, None), done)
        # Measured (benchmarks/bench_loopback.py): handing each job to the
        # committer thread and waking the event loop afterwards costs more
        # CPU than a fast local commit (~0.2 ms), so the caller commits, and
        # with one flush per turn of its loop the records of every
        # enrollment signed in that turn share one commit. A slow disk
        # pushes the average over the limit: then the loop is never
        # blocked, the committer thread takes them.
        caller_commits = self._caller_commit_limit > 0 and self.commit_seconds < self._caller_commit_limit
        return self._committer.submit_later(job, caller_commits=caller_commits)

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

        self._committer.submit(job)
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

        pending_id = self._committer.submit(job)
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

        self._committer.submit(job)
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

        self._committer.submit(job)

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

        return self._committer.submit(job)

    def list_users(self) -> list[str]:
        return [str(r[0]) for r in self._read("SELECT name FROM users ORDER BY name")]

    # -- audit -------------------------------------------------------------

    def audit(self, actor: str, action: str, detail: str) -> None:
        self._committer.submit(lambda conn: _audit(conn, actor, action, detail))

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

