"""A record store on PostgreSQL, for several EST front-ends sharing one CA
(``estproto serve --store postgresql://...``). Needs the ``postgresql``
extra: psycopg 3 and its connection pool.

The same guarantees as :class:`~estproto.ca.sqlite_store.SQLiteStore`:

* A write returns once PostgreSQL has committed it (with the server's
  ``synchronous_commit`` on, its default: the WAL is flushed). Concurrent
  writes of one process share a transaction (:mod:`.group_commit`); those
  of different front-ends share WAL flushes on the server (its own group
  commit). A commit whose outcome is unknown (the connection dropped during
  COMMIT) is reported as a failure: the certificate is not handed out,
  though its record may exist.
* Serial numbers are unique across every front-end: ``issued.serial`` is
  ``UNIQUE``, so a collision is :class:`DuplicateSerialError` whoever made it.
* Decisions are conditional updates (``... WHERE state='pending'``), so two
  operators or front-ends deciding at once cannot both win; every read goes
  to the database, so an approval or revocation made through one front-end
  is seen by the next request on any other.

Connections come from a :class:`psycopg_pool.ConnectionPool` (autocommit,
UTC session time zone, a statement timeout). A connection the server closed
(a restart) fails the one statement that finds it: a read is then retried on
a fresh connection, a write whose transaction had not started too; anything
else becomes :class:`StoreError`. The conninfo (which may hold a password)
never appears in an error or a log line: only host, port and database do.

Schema: created and migrated by estproto (``schema_version`` table, history
in :data:`MIGRATIONS`), under a transaction-scoped advisory lock so that
front-ends starting together migrate once. Give the store a database (or a
schema, with ``options=-csearch_path=...``) of its own.
"""

from __future__ import annotations

import datetime
import logging
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
    _now,
)

try:
    import psycopg
    import psycopg.conninfo
    import psycopg.errors
    import psycopg.pq
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "the PostgreSQL store needs psycopg 3 and psycopg-pool: pip install 'estproto[postgresql]'"
    ) from exc

__all__ = ["PostgreSQLStore", "SCHEMA_VERSION", "MIGRATIONS", "describe_location"]

_log = logging.getLogger("estproto.store")

#: The schema version this code writes. Version history (PostgreSQL's own,
#: independent of the SQLite file's numbers):
#: 1: issued, pending, users, audit; indexes for listings and the CRL.
SCHEMA_VERSION: Final = 1

#: Statements taking the schema from version N-1 to N (index N-1).
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE issued (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            serial TEXT NOT NULL UNIQUE,
            der BYTEA NOT NULL,
            subject TEXT NOT NULL,
            san TEXT NOT NULL,
            requester TEXT NOT NULL,
            request_der BYTEA,
            label TEXT NOT NULL,
            operation TEXT NOT NULL,
            issued_at TIMESTAMPTZ NOT NULL,
            not_after TIMESTAMPTZ NOT NULL,
            revoked_at TIMESTAMPTZ,
            revocation_reason TEXT)""",
        "CREATE INDEX issued_requester ON issued (requester)",
        "CREATE INDEX issued_revoked ON issued (revoked_at) WHERE revoked_at IS NOT NULL",
        """CREATE TABLE pending (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            label TEXT NOT NULL,
            operation TEXT NOT NULL,
            requester TEXT NOT NULL,
            subject TEXT NOT NULL,
            csr_der BYTEA NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('pending', 'approved', 'rejected', 'issued')),
            created_at TIMESTAMPTZ NOT NULL,
            decided_at TIMESTAMPTZ,
            decided_by TEXT,
            serial TEXT,
            note TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX pending_fingerprint ON pending (fingerprint)",
        "CREATE INDEX pending_state ON pending (state)",
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            realm TEXT NOT NULL,
            ha1_sha256 TEXT NOT NULL,
            ha1_md5 TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE audit (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at TIMESTAMPTZ NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL)""",
    ),
)

assert len(MIGRATIONS) == SCHEMA_VERSION

_OUR_TABLES: Final = ("issued", "pending", "users", "audit")

#: pg_advisory_xact_lock key serialising migrations ("estproto" in ASCII, truncated).
_MIGRATION_LOCK: Final = 0x657374_70726F74

#: Defaults: pool size, seconds to connect, seconds a statement may run,
#: seconds to wait for a free pooled connection.
POOL_SIZE: Final = 8
CONNECT_TIMEOUT: Final = 5.0
STATEMENT_TIMEOUT: Final = 10.0
POOL_TIMEOUT: Final = 10.0
MAX_BATCH: Final = 256


def describe_location(conninfo: str) -> str:
    """``host:port/dbname`` of *conninfo*: what messages may show (never a
    password or other options)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "postgresql (unparsable conninfo)"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    db = params.get("dbname") or params.get("user") or ""
    return f"postgresql://{host}:{port}/{db}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error):
        diag = getattr(exc, "diag", None)
        primary = diag.message_primary if diag is not None else None
        text = primary or str(exc).strip() or type(exc).__name__
        state = exc.sqlstate
        return f"{text}" + (f" [{state}]" if state else "")
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return "no database connection available (is the server down or overloaded?)"
    return str(exc) or type(exc).__name__


def _utc(value: datetime.datetime | None) -> datetime.datetime | None:
    return None if value is None else value.astimezone(datetime.timezone.utc)


class _PostgresDialect:
    """How :func:`commit_batch` drives psycopg."""

    begin = "BEGIN"

    @staticmethod
    def in_transaction(conn: psycopg.Connection[Any]) -> bool:
        status = conn.info.transaction_status
        return status in (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)

    @staticmethod
    def job_error(exc: Exception) -> BaseException:
        if isinstance(exc, psycopg.errors.UniqueViolation) and (
                getattr(exc.diag, "constraint_name", None) == "issued_serial_key"):
            return DuplicateSerialError("a certificate with this serial number is already recorded")
        if isinstance(exc, psycopg.Error):
            error = StoreError(f"certificate store write refused: {_describe(exc)}")
            error.__cause__ = exc
            return error
        return exc

    @staticmethod
    def batch_error(exc: Exception) -> BaseException:
        error = StoreError(f"certificate store write failed: {_describe(exc)}")
        error.__cause__ = exc
        return error


class _Stale(Exception):
    """A pooled connection the server had closed: nothing was done on it."""


class PostgreSQLStore(Store):
    """:class:`Store` on a PostgreSQL database.

    Args:
        conninfo: a libpq connection string or ``postgresql://`` URL. Keep
            the password out of it: libpq reads ``PGPASSWORD`` or a
            ``~/.pgpass`` file.
        pool_size: most connections this store opens.
        connect_timeout, statement_timeout, pool_timeout: seconds (see the
            module constants).
        group_commit, commit_window, max_batch: as for SQLiteStore.
        caller_commit_limit: seconds; while commits take less than this on
            average, :meth:`record_issued_later` commits on the caller's
            thread. 0 (the default): always on the committer thread, so a
            server's event loop never waits on the network.

    Raises:
        SchemaVersionError: the database has a newer schema, or tables of
            ours without a version.
        StoreError: the database cannot be reached, or refuses.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        pool_size: int = POOL_SIZE,
        connect_timeout: float = CONNECT_TIMEOUT,
        statement_timeout: float = STATEMENT_TIMEOUT,
        pool_timeout: float = POOL_TIMEOUT,
        group_commit: bool = True,
        commit_window: float = 0.0,
        max_batch: int = MAX_BATCH,
        caller_commit_limit: float = 0.0,
    ) -> None:
        try:
            psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"invalid PostgreSQL connection string: {_describe(exc)}") from None
        self.location = describe_location(conninfo)
        self._caller_commit_limit = caller_commit_limit
        self._committer = GroupCommitter(
            self._commit, StoreError, max_batch=max_batch if group_commit else 1,
            commit_window=commit_window, thread_name="estproto-pg-committer")
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(connect_timeout)),
            "options": f"-c timezone=UTC -c statement_timeout={int(statement_timeout * 1000)}",
            # A server that vanished without a FIN is noticed, not waited on forever.
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        }
        self._pool = psycopg_pool.ConnectionPool(
            conninfo, min_size=1, max_size=max(1, pool_size), kwargs=kwargs, open=False,
            timeout=pool_timeout, name="estproto-store", reconnect_timeout=pool_timeout)
        try:
            # Connect once by hand first: the pool would retry in the
            # background and say only "timeout"; this says why.
            with psycopg.connect(conninfo, **kwargs) as conn:
                self._migrate(conn)
            self._pool.open(wait=True, timeout=connect_timeout)
        except SchemaVersionError:
            self._pool.close()
            raise
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self._pool.close()
            raise StoreError(
                f"cannot open the certificate store {self.location}: {_describe(exc)}") from None

    # Commit statistics (see GroupCommitter).
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

    # -- schema ------------------------------------------------------------

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            present = {
                str(row[0]) for row in conn.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() AND table_name = ANY(%s)",
                    (["schema_version", *_OUR_TABLES],))
            }
            if "schema_version" in present:
                row = conn.execute("SELECT version FROM schema_version").fetchone()
                if row is None:
                    raise SchemaVersionError(f"{self.location}: schema_version table is empty")
                version = int(row[0])
            elif present:
                raise SchemaVersionError(
                    f"{self.location} has tables named like estproto's ({', '.join(sorted(present))}) "
                    "but no schema_version: not an estproto store")
            else:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                conn.execute("INSERT INTO schema_version VALUES (0)")
                version = 0
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.location} has schema version {version}, newer than this estproto "
                    f"understands ({SCHEMA_VERSION}): upgrade estproto")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target - 1]:
                    conn.execute(statement.encode())
                conn.execute("UPDATE schema_version SET version = %s", (target,))
                _log.info("certificate store %s migrated to schema version %d", self.location, target)

    # -- reads and the committer -------------------------------------------

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        if self._committer.closed:
            raise StoreError("the store is closed")
        for attempt in (1, 2):
            try:
                with self._pool.connection() as conn:
                    return list(conn.execute(sql.encode(), params).fetchall())
            except psycopg.OperationalError as exc:
                if attempt == 1 and self._stale(exc):
                    continue
                raise StoreError(f"certificate store read failed: {_describe(exc)}") from None
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                raise StoreError(f"certificate store read failed: {_describe(exc)}") from None
        raise AssertionError("unreachable")

    def _stale(self, exc: psycopg.OperationalError) -> bool:
        """After a connection failed: drop every pooled connection the
        server closed (a restart closes them all), so a retry gets a live
        one. True if a retry makes sense."""
        _log.warning("certificate store %s: connection lost (%s); reconnecting",
                     self.location, _describe(exc))
        try:
            self._pool.check()
        except Exception:  # the pool reconnects in the background anyway
            pass
        return True

    def _commit(self, batch: list[Job]) -> int:
        # A lone single-statement job (an issued certificate's INSERT, most
        # batches at low load) runs in autocommit: one round trip instead of
        # BEGIN, INSERT, COMMIT.
        alone = batch[0] if len(batch) == 1 and batch[0].one_statement else None
        for attempt in (1, 2):
            try:
                with self._pool.connection() as conn:
                    try:
                        if alone is not None:
                            return self._run_alone(conn, alone)
                        conn.execute(b"BEGIN")
                    except psycopg.OperationalError as exc:
                        # The first use of a connection the server closed
                        # (a restart). Retrying is safe: nothing had begun,
                        # or a lone INSERT that did commit fails the retry
                        # as a duplicate, and the issuer draws a new serial
                        # (the first record stays, for a certificate nobody
                        # received).
                        if attempt == 1 and self._stale(exc):
                            raise _Stale from exc
                        raise
                    return commit_batch(conn, batch, _PostgresDialect, begun=True)
            except _Stale:
                continue
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                error = _PostgresDialect.batch_error(exc)
                for job in batch:
                    if not job.finished:
                        job.fail(error)
                return 0
        raise AssertionError("unreachable")

    @staticmethod
    def _run_alone(conn: psycopg.Connection[Any], job: Job) -> int:
        """Run one single-statement job in autocommit; connection failures
        propagate (the caller retries or fails it)."""
        try:
            job.result = job.fn(conn)
        except psycopg.OperationalError:
            raise
        except Exception as exc:
            job.fail(_PostgresDialect.job_error(exc))
            return 0
        job.finish()
        return 1

    def close(self) -> None:
        if self._committer.close():
            self._pool.close()

    def __enter__(self) -> PostgreSQLStore:
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
        return IssuedRecord(
            serial=str(row[0]), der=bytes(row[1]), subject=str(row[2]),
            san=str(row[3]), requester=str(row[4]),
            request_der=None if row[5] is None else bytes(row[5]),
            label=str(row[6]), operation=str(row[7]), issued_at=row[8].astimezone(datetime.timezone.utc),
            not_after=row[9].astimezone(datetime.timezone.utc), revoked_at=_utc(row[10]),
            revocation_reason=None if row[11] is None else str(row[11]),
        )

    def record_issued(self, record: IssuedRecord, *, pending_id: int | None = None) -> None:
        self._committer.submit(self._issued_job(record, pending_id), one_statement=pending_id is None)

    def record_issued_later(
        self, record: IssuedRecord, done: Callable[[BaseException | None], None],
    ) -> Callable[[], None] | None:
        job = Job(self._issued_job(record, None), done, one_statement=True)
        caller_commits = self._caller_commit_limit > 0 and self.commit_seconds < self._caller_commit_limit
        return self._committer.submit_later(job, caller_commits=caller_commits)

    def _issued_job(self, record: IssuedRecord, pending_id: int | None) -> Callable[[psycopg.Connection[Any]], None]:
        values = (
            record.serial, record.der, record.subject, record.san, record.requester,
            record.request_der, record.label, record.operation, record.issued_at,
            record.not_after, record.revoked_at, record.revocation_reason,
        )
        insert = (f"INSERT INTO issued ({self._ISSUED_COLUMNS}) "
                  "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)").encode()

        def job(conn: psycopg.Connection[Any]) -> None:
            conn.execute(insert, values)
            if pending_id is not None:
                cur = conn.execute(
                    b"UPDATE pending SET state='issued', serial=%s WHERE id=%s AND state='approved'",
                    (record.serial, pending_id),
                )
                if cur.rowcount != 1:
                    raise StateError(f"pending request {pending_id} is no longer approved")

        return job

    def get_issued(self, serial: str) -> IssuedRecord | None:
        rows = self._read(f"SELECT {self._ISSUED_COLUMNS} FROM issued WHERE serial=%s", (serial,))
        return self._issued(rows[0]) if rows else None

    def list_issued(self, *, limit: int | None = None, offset: int = 0) -> list[IssuedRecord]:
        rows = self._read(
            f"SELECT {self._ISSUED_COLUMNS} FROM issued ORDER BY id LIMIT %s OFFSET %s",
            (limit, offset),
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
        at = _now()

        def job(conn: psycopg.Connection[Any]) -> None:
            cur = conn.execute(
                b"UPDATE issued SET revoked_at=%s, revocation_reason=%s "
                b"WHERE serial=%s AND revoked_at IS NULL",
                (at, reason, serial),
            )
            if cur.rowcount == 0:
                if conn.execute(b"SELECT 1 FROM issued WHERE serial=%s", (serial,)).fetchone() is None:
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
        return PendingRecord(
            id=int(row[0]), fingerprint=str(row[1]), label=str(row[2]),
            operation=str(row[3]), requester=str(row[4]), subject=str(row[5]),
            csr_der=bytes(row[6]), state=PendingState(row[7]),
            created_at=row[8].astimezone(datetime.timezone.utc),
            decided_at=_utc(row[9]), decided_by=None if row[10] is None else str(row[10]),
            serial=None if row[11] is None else str(row[11]), note=str(row[12]),
        )

    def add_pending(
        self, *, fingerprint: str, label: str, operation: str, requester: str, subject: str,
        csr_der: bytes,
    ) -> PendingRecord:
        created = _now()

        def job(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(
                b"INSERT INTO pending (fingerprint, label, operation, requester, subject, "
                b"csr_der, state, created_at) VALUES (%s,%s,%s,%s,%s,%s,'pending',%s) RETURNING id",
                (fingerprint, label, operation, requester, subject, csr_der, created),
            ).fetchone()
            assert row is not None
            return int(row[0])

        pending_id = self._committer.submit(job)
        record = self.get_pending(pending_id)
        assert record is not None
        return record

    def find_pending(self, fingerprint: str) -> PendingRecord | None:
        rows = self._read(
            f"SELECT {self._PENDING_COLUMNS} FROM pending WHERE fingerprint=%s "
            "ORDER BY id DESC LIMIT 1",
            (fingerprint,),
        )
        return self._pending(rows[0]) if rows else None

    def get_pending(self, pending_id: int) -> PendingRecord | None:
        rows = self._read(f"SELECT {self._PENDING_COLUMNS} FROM pending WHERE id=%s", (pending_id,))
        return self._pending(rows[0]) if rows else None

    def list_pending(self, state: PendingState | None = PendingState.PENDING) -> list[PendingRecord]:
        if state is None:
            rows = self._read(f"SELECT {self._PENDING_COLUMNS} FROM pending ORDER BY id")
        else:
            rows = self._read(
                f"SELECT {self._PENDING_COLUMNS} FROM pending WHERE state=%s ORDER BY id",
                (state.value,),
            )
        return [self._pending(r) for r in rows]

    def decide_pending(
        self, pending_id: int, state: PendingState, actor: str, note: str = ""
    ) -> PendingRecord:
        if state not in (PendingState.APPROVED, PendingState.REJECTED):
            raise ValueError("a decision is APPROVED or REJECTED")
        at = _now()

        def job(conn: psycopg.Connection[Any]) -> None:
            # Conditional: of two front-ends deciding at once, one wins.
            cur = conn.execute(
                b"UPDATE pending SET state=%s, decided_at=%s, decided_by=%s, note=%s "
                b"WHERE id=%s AND state='pending'",
                (state.value, at, actor, note, pending_id),
            )
            if cur.rowcount != 1:
                row = conn.execute(b"SELECT state FROM pending WHERE id=%s", (pending_id,)).fetchone()
                if row is None:
                    raise NotFoundError(f"no pending request has id {pending_id}")
                raise StateError(f"pending request {pending_id} is already {row[0]}")
            _audit(conn, actor, state.value, f"pending={pending_id}")

        self._committer.submit(job)
        record = self.get_pending(pending_id)
        assert record is not None
        return record

    # -- users -------------------------------------------------------------

    def put_user(self, user: UserRecord, actor: str) -> None:
        def job(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                b"INSERT INTO users (name, password_hash, realm, ha1_sha256, ha1_md5, created_at) "
                b"VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (name) DO UPDATE SET "
                b"password_hash=EXCLUDED.password_hash, realm=EXCLUDED.realm, "
                b"ha1_sha256=EXCLUDED.ha1_sha256, ha1_md5=EXCLUDED.ha1_md5, "
                b"created_at=EXCLUDED.created_at",
                (user.name, user.password_hash, user.realm, user.ha1_sha256, user.ha1_md5,
                 user.created_at),
            )
            _audit(conn, actor, "put-user", f"user={user.name}")

        self._committer.submit(job)

    def get_user(self, name: str) -> UserRecord | None:
        rows = self._read(
            "SELECT name, password_hash, realm, ha1_sha256, ha1_md5, created_at FROM users "
            "WHERE name=%s",
            (name,),
        )
        if not rows:
            return None
        r = rows[0]
        return UserRecord(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]),
                          r[5].astimezone(datetime.timezone.utc))

    def delete_user(self, name: str, actor: str) -> bool:
        def job(conn: psycopg.Connection[Any]) -> bool:
            cur = conn.execute(b"DELETE FROM users WHERE name=%s", (name,))
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
            "SELECT id, at, actor, action, detail FROM audit ORDER BY id DESC LIMIT %s", (limit,)
        )
        return [AuditRecord(int(r[0]), r[1].astimezone(datetime.timezone.utc), str(r[2]),
                            str(r[3]), str(r[4])) for r in reversed(rows)]


def _audit(conn: psycopg.Connection[Any], actor: str, action: str, detail: str) -> None:
    conn.execute(
        b"INSERT INTO audit (at, actor, action, detail) VALUES (%s,%s,%s,%s)",
        (_now(), actor, action, detail),
    )
