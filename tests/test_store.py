"""Tests of estproto.ca.store: schema versioning, group commit, faults."""

from __future__ import annotations

import datetime
import os
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest

from conftest import require_tool

from estproto.ca import sqlite_store as store_mod
from estproto.ca.sqlite_store import SCHEMA_VERSION, SQLiteStore
from estproto.ca.store import (
    DuplicateSerialError,
    IssuedRecord,
    NotFoundError,
    PendingState,
    SchemaVersionError,
    StateError,
    Store,
    StoreError,
    UserRecord,
)

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def record(serial: str, size: int = 300) -> IssuedRecord:
    return IssuedRecord(
        serial=serial, der=os.urandom(size), subject="CN=x", san="", requester="user:a",
        request_der=b"req", label="", operation="simpleenroll", issued_at=NOW,
        not_after=NOW + datetime.timedelta(days=1),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each behaviour below holds for both stores."""
    if request.param == "sqlite":
        s: Store = SQLiteStore(tmp_path / "s.db")
    else:
        from estproto.ca.postgres_store import PostgreSQLStore

        s = PostgreSQLStore(request.getfixturevalue("postgres_url"))
    yield s
    s.close()


def version_of(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])
    finally:
        conn.close()


def test_new_store_has_current_schema_wal_and_owner_only_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SQLiteStore(path):
        pass
    assert version_of(path) == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SQLiteStore(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match="newer than this estproto"):
        SQLiteStore(path)
    assert version_of(path) == SCHEMA_VERSION + 1  # untouched


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE something (x)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match="not an estproto store"):
        SQLiteStore(path)


def test_older_schema_is_migrated_keeping_data(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    for statement in store_mod._MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO issued (serial, der, subject, san, requester, label, operation, issued_at, "
        "not_after) VALUES ('abc', x'00', 'CN=old', '', 'u', '', 'init', ?, ?)",
        (NOW.isoformat(), NOW.isoformat()),
    )
    conn.close()
    with SQLiteStore(path) as s:
        old = s.get_issued("abc")
        assert old is not None and old.subject == "CN=old"
    assert version_of(path) == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert {"issued_requester", "pending_state"} <= indexes


def test_record_and_read_back(store: Store) -> None:
    rec = record("1f")
    store.record_issued(rec)
    got = store.get_issued("1f")
    assert got == rec
    assert store.count_issued() == 1
    assert store.get_issued("2f") is None


def test_duplicate_serial_fails_alone(store: Store) -> None:
    store.record_issued(record("aa"))
    with pytest.raises(DuplicateSerialError):
        store.record_issued(record("aa"))
    store.record_issued(record("bb"))  # the store goes on
    assert store.count_issued() == 2


def test_concurrent_writers_share_commits(store: Store) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                store.record_issued(record(f"{t:02x}{i:04x}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert store.count_issued() == 400
    assert store.jobs == 400
    # Group commit: fewer commits than writes (8 writers queue behind fsyncs).
    assert store.commits < 400


def test_without_group_commit_each_write_commits(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "s.db", group_commit=False) as s:
        for i in range(5):
            s.record_issued(record(f"{i:x}"))
        assert s.commits == 5


def test_disk_full_is_a_store_error_and_nothing_half_written(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SQLiteStore(path):
        pass
    conn = sqlite3.connect(path)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    with SQLiteStore(path, max_pages=pages + 2) as s:
        stored = 0
        with pytest.raises(StoreError, match="full"):
            for i in range(100):
                s.record_issued(record(f"{i:x}", size=3000))
                stored += 1
        assert s.count_issued() == stored  # every acknowledged write is there
        assert s.get_issued(f"{stored:x}") is None
        # Reads still work, and a small write that fits still can.
        s.list_issued()


class read_only:
    """Make a directory and its files read-only, even for root.

    root ignores file modes, so as root the immutable attribute is used
    (``chattr +i``); otherwise plain modes.
    """

    def __init__(self, directory: Path) -> None:
        self.paths = [directory, *directory.iterdir()]
        self.root = os.geteuid() == 0

    def __enter__(self) -> None:
        if self.root:
            chattr = require_tool("chattr")
            subprocess.run([chattr, "+i", *map(str, self.paths)], check=True)
        else:
            for p in self.paths:
                p.chmod(0o555 if p.is_dir() else 0o444)

    def __exit__(self, *exc: object) -> None:
        if self.root:
            subprocess.run(["chattr", "-i", *map(str, self.paths)], check=True)
        else:
            for p in self.paths:
                p.chmod(0o755 if p.is_dir() else 0o644)


def test_read_only_directory_is_a_clear_store_error(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    with SQLiteStore(d / "s.db") as s:
        s.record_issued(record("01"))
    with read_only(d):
        with pytest.raises(StoreError, match="read-only"):
            SQLiteStore(d / "s.db")


def test_closed_store_raises(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "s.db")
    s.close()
    with pytest.raises(StoreError):
        s.record_issued(record("01"))
    with pytest.raises(StoreError):
        s.get_issued("01")


def test_pending_life_cycle(store: Store) -> None:
    p = store.add_pending(fingerprint="fp", label="", operation="simpleenroll",
                          requester="user:a", subject="CN=x", csr_der=b"csr")
    assert p.state is PendingState.PENDING
    assert store.find_pending("fp") == p
    assert store.list_pending() == [p]
    approved = store.decide_pending(p.id, PendingState.APPROVED, "op")
    assert approved.state is PendingState.APPROVED and approved.decided_by == "op"
    with pytest.raises(StateError):
        store.decide_pending(p.id, PendingState.REJECTED, "op")
    with pytest.raises(NotFoundError):
        store.decide_pending(999, PendingState.APPROVED, "op")
    store.record_issued(record("c0"), pending_id=p.id)
    done = store.get_pending(p.id)
    assert done is not None and done.state is PendingState.ISSUED and done.serial == "c0"
    # A second issue for the same pending request is refused atomically.
    with pytest.raises(StateError):
        store.record_issued(record("c1"), pending_id=p.id)
    assert store.get_issued("c1") is None
    assert store.list_pending() == []
    actions = [a.action for a in store.list_audit()]
    assert "approved" in actions


def test_users_and_revocation(store: Store) -> None:
    user = UserRecord("alice", "scrypt$x", "estproto", "a" * 64, "b" * 32, NOW)
    store.put_user(user, "op")
    assert store.get_user("alice") == user
    assert store.list_users() == ["alice"]
    assert store.delete_user("alice", "op") and not store.delete_user("alice", "op")
    store.record_issued(record("0d"))
    revoked = store.revoke("0d", "keyCompromise", "op")
    assert revoked.revoked and revoked.revocation_reason == "keyCompromise"
    first = revoked.revoked_at
    assert store.revoke("0d", "superseded", "op").revoked_at == first  # idempotent
    with pytest.raises(NotFoundError):
        store.revoke("ee", "unspecified", "op")
    assert any(a.action == "revoke" and "0d" in a.detail for a in store.list_audit())
