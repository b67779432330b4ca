"""Several front-ends, one database (issue 12 part 2): the PostgreSQL store
against a real PostgreSQL server the tests start themselves
(tests/postgres_server.py), from the store on its own up to two
``estproto serve`` processes enrolling concurrently, an approval seen by the
other front-end, the database restarted under load, and kill -9.

Each "machine" is its own copy of the CA's data directory (same CA key and
certificates), as a deployment behind a load balancer would have; both
point at one database.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from estproto import trio as est_trio
from estproto._tls import ClientTLSContext
from estproto.ca import EmbeddedCA
from estproto.ca.postgres_store import SCHEMA_VERSION, PostgreSQLStore
from estproto.ca.store import (
    DuplicateSerialError,
    IssuedRecord,
    PendingState,
    SchemaVersionError,
    StateError,
    StoreError,
)
from estproto.cli import ExitCode
from estproto.client import Credentials

from postgres_server import PostgresServer
from test_cli import PASSWORD, TIMEOUT, run, serving

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def record(serial: str) -> IssuedRecord:
    return IssuedRecord(
        serial=serial, der=os.urandom(200), subject="CN=x", san="", requester="user:a",
        request_der=b"req", label="", operation="simpleenroll", issued_at=NOW,
        not_after=NOW + datetime.timedelta(days=1),
    )


def sql(url: str, statement: str) -> list[Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement.encode())
        return list(cur.fetchall()) if cur.description else []


# -- the store on its own ------------------------------------------------------


def test_schema_is_versioned_and_created_once_by_concurrent_front_ends(postgres_url: str) -> None:
    errors: list[BaseException] = []
    stores: list[PostgreSQLStore] = []

    def open_one() -> None:
        try:
            stores.append(PostgreSQLStore(postgres_url))
        except BaseException as exc:  # noqa: BLE001 - judged below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert not errors and len(stores) == 4
    assert sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    sql(postgres_url, "UPDATE schema_version SET version = version + 1")
    with pytest.raises(SchemaVersionError, match="newer than this estproto"):
        PostgreSQLStore(postgres_url)


def test_a_database_with_foreign_tables_of_our_names_is_refused(postgres_url: str) -> None:
    sql(postgres_url, "CREATE TABLE issued (x int)")
    with pytest.raises(SchemaVersionError, match="not an estproto store"):
        PostgreSQLStore(postgres_url)


def test_unreachable_or_refusing_databases_are_store_errors_without_the_password(
        postgres_server: PostgresServer, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "wrong-" + postgres_server.password)
    with pytest.raises(StoreError, match="password authentication failed") as refused:
        PostgreSQLStore(postgres_url, connect_timeout=5)
    assert postgres_server.password not in str(refused.value)
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot open the certificate store postgresql://127.0.0.1"):
        PostgreSQLStore("postgresql://estproto@127.0.0.1:1/none", connect_timeout=2)
    assert time.monotonic() - started < 30
    with pytest.raises(StoreError, match="invalid PostgreSQL connection string"):
        PostgreSQLStore("host=127.0.0.1 bogus_option=1")


def test_serials_are_unique_across_front_ends_and_decisions_have_one_winner(postgres_url: str) -> None:
    with PostgreSQLStore(postgres_url) as a, PostgreSQLStore(postgres_url) as b:
        a.record_issued(record("abc1"))
        with pytest.raises(DuplicateSerialError):
            b.record_issued(record("abc1"))  # the database, not luck, says no
        assert b.get_issued("abc1") is not None  # a's write is visible to b at once
        pending = a.add_pending(fingerprint="fp", label="", operation="simpleenroll",
                                requester="user:a", subject="CN=x", csr_der=b"csr")
        outcomes: list[str] = []

        def decide(store: PostgreSQLStore, state: PendingState) -> None:
            try:
                store.decide_pending(pending.id, state, "op")
                outcomes.append(state.value)
            except StateError:
                outcomes.append("refused")

        threads = [threading.Thread(target=decide, args=(s, st)) for s, st in
                   ((a, PendingState.APPROVED), (b, PendingState.REJECTED))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(outcomes) == 2 and outcomes.count("refused") == 1, outcomes
        final = b.get_pending(pending.id)
        assert final is not None and final.state.value in outcomes


def test_the_store_survives_a_database_restart(postgres_server: PostgresServer, postgres_url: str) -> None:
    with PostgreSQLStore(postgres_url, pool_size=4) as store:
        for i in range(8):
            store.record_issued(record(f"a{i}"))
        postgres_server.restart()  # every pooled connection is now dead
        store.record_issued(record("b0"))  # a stale connection is replaced, not fatal
        assert store.get_issued("b0") is not None and store.count_issued() == 9
        postgres_server.stop()
        try:
            started = time.monotonic()
            with pytest.raises(StoreError):
                store.record_issued(record("c0"))
            with pytest.raises(StoreError):
                store.get_issued("a0")
            assert time.monotonic() - started < 40
        finally:
            postgres_server.start()
        store.record_issued(record("c1"))
        assert store.get_issued("c0") is None and store.get_issued("c1") is not None


# -- two front-ends on one database ---------------------------------------------


def two_machines(tmp_path: Path, url: str, *init_args: str) -> tuple[Path, Path]:
    """A CA initialised on the database, and a copy of its data directory
    for a second machine (same CA, same database)."""
    first = tmp_path / "machine-a"
    made = run("ca", "init", "--data-dir", str(first), "--hostname", "127.0.0.1", "--store", url,
               *init_args)
    assert made.returncode == 0, made.stderr
    second = tmp_path / "machine-b"
    shutil.copytree(first, second)
    assert run("ca", "add-user", "--data-dir", str(first), "dev", password=PASSWORD).returncode == 0
    return first, second


def stored_serials(url: str) -> list[str]:
    return [str(r[0]) for r in sql(url, "SELECT serial FROM issued ORDER BY id")]


def test_store_flag_refuses_passwords_and_unknown_schemes(tmp_path: Path) -> None:
    leaked = run("ca", "init", "--data-dir", str(tmp_path / "x"),
                 "--store", "postgresql://u:hunter2@127.0.0.1/db")
    assert leaked.returncode == ExitCode.USAGE and "PGPASSWORD" in leaked.stderr
    assert "hunter2" not in leaked.stderr and not (tmp_path / "x").exists()
    unknown = run("serve", "--data-dir", str(tmp_path / "x"), "--store", "mysql://h/db")
    assert unknown.returncode == ExitCode.USAGE and "unknown store location" in unknown.stderr


def test_two_front_ends_enroll_concurrently_into_one_database(tmp_path: Path, postgres_url: str) -> None:
    a, b = two_machines(tmp_path, postgres_url)
    config = (a / "config.json").read_text()
    assert postgres_url in config and "password" not in config
    assert not (a / "estproto.db").exists(), "the records went to SQLite, not PostgreSQL"
    with serving(a, "--framework", "trio") as front_a, serving(b, "--framework", "asyncio") as front_b:
        received, errors = enroll_concurrently([front_a.port, front_b.port] * 2, a / "ca.pem", 6,
                                               TIMEOUT * 2)
        assert not errors, errors
        # The user added through machine a authenticates on machine b too.
        assert len(received) == 24
        assert front_a.stop() == 0 and front_b.stop() == 0
    serials = [format(c.serial_number, "x") for c in received]
    stored = stored_serials(postgres_url)
    assert len(stored) == len(set(stored)), "a serial is recorded twice"
    assert set(serials) <= set(stored) and len(set(serials)) == 24
    listed = run("ca", "list", "--data-dir", str(b))  # the store from b's config.json
    assert listed.returncode == 0 and all(s in listed.stdout for s in serials), listed.stderr
    assert not (b / "estproto.db").exists()


def test_an_approval_is_seen_by_the_other_front_end(tmp_path: Path, postgres_url: str) -> None:
    a, b = two_machines(tmp_path, postgres_url)
    with serving(a, "--manual-approval", "--retry-after", "1", "--framework", "trio") as front_a, \
            serving(b, "--manual-approval", "--retry-after", "1", "--framework", "asyncio") as front_b:
        def enroll(front: Any, *key: str) -> list[str]:
            return ["enroll", front.url, "--cacert", str(a / "ca.pem"), "--user", "dev",
                    "--subject", "CN=waiting", *key, "--out", str(tmp_path / "got.pem"),
                    "--max-retries", "0"]

        first = run(*enroll(front_a, "--key-out", str(tmp_path / "w.key")), password=PASSWORD)
        assert first.returncode == ExitCode.PENDING, first.stderr
        listed = run("ca", "list", "--data-dir", str(b), "--pending")
        ids = re.findall(r"^(\d+)\tpending\t.*CN=waiting", listed.stdout, re.M)
        assert len(ids) == 1, listed.stdout + listed.stderr
        approved = run("ca", "approve", "--data-dir", str(b), ids[0])
        assert approved.returncode == 0, approved.stderr
        # The retry reaches the other front-end: it knows the approval at once.
        got = run(*enroll(front_b, "--key", str(tmp_path / "w.key")), password=PASSWORD)
        assert got.returncode == 0, got.stderr
        cert = x509.load_pem_x509_certificate((tmp_path / "got.pem").read_bytes())
        assert format(cert.serial_number, "x") in stored_serials(postgres_url)
        # Asked again through the first front-end: the certificate b issued
        # (RFC 7030 4.2.3 retry of the same request), not a second one.
        again = run(*enroll(front_a, "--key", str(tmp_path / "w.key")), password=PASSWORD)
        assert again.returncode == 0, again.stderr
        same = x509.load_pem_x509_certificate((tmp_path / "got.pem").read_bytes())
        assert same.serial_number == cert.serial_number
        assert len(stored_serials(postgres_url)) == 2  # the TLS certificate and this one
        assert front_a.stop() == 0 and front_b.stop() == 0


def enroll_loop(port: int, ca_pem: Path, stop: threading.Event, received: list[x509.Certificate],
                errors: list[BaseException], count: int | None = None, *, tolerate: bool = False) -> None:
    """Enroll fresh certificates until *stop* (or *count*). With *tolerate*,
    a failed enrollment is counted in *errors* and the loop reconnects."""
    tls = ClientTLSContext(trust_anchors=x509.load_pem_x509_certificates(ca_pem.read_bytes()))
    key = ec.generate_private_key(ec.SECP256R1())

    async def go() -> None:
        done = 0
        while not stop.is_set() and (count is None or done < count):
            try:
                async with est_trio.ESTClient(
                        "127.0.0.1", port, tls, request_timeout=20, connect_timeout=10,
                        credentials=Credentials("dev", PASSWORD, preemptive_basic=True)) as c:
                    while not stop.is_set() and (count is None or done < count):
                        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"load-{done}")])
                        received.append(await c.simpleenroll_linked(key, name))
                        done += 1
            except Exception as exc:
                if not tolerate:
                    raise
                errors.append(exc)
                await trio.sleep(0.05)

    try:
        trio.run(go)
    except BaseException as exc:  # noqa: BLE001 - recorded for the test to judge
        errors.append(exc)


def enroll_concurrently(ports: list[int], ca_pem: Path, count: int,
                        timeout: float) -> tuple[list[x509.Certificate], list[BaseException]]:
    """One :func:`enroll_loop` of *count* enrollments per entry of *ports*,
    all at once; the certificates received and the errors seen."""
    received: list[x509.Certificate] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    threads = [threading.Thread(target=enroll_loop, args=(port, ca_pem, stop, received, errors, count))
               for port in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    alive = sum(t.is_alive() for t in threads)
    if alive:
        stop.set()  # let them end; the test fails saying why
        raise AssertionError(f"{alive} enrollment thread(s) still running after {timeout} s")
    return received, errors


def test_database_restart_and_kill_9_under_load_lose_no_certificate(
        tmp_path: Path, postgres_server: PostgresServer, postgres_url: str) -> None:
    a, b = two_machines(tmp_path, postgres_url)
    received: list[x509.Certificate] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    with serving(a) as front_a, serving(b) as front_b:
        threads = [threading.Thread(target=enroll_loop, args=(front.port, a / "ca.pem", stop, received,
                                                              failures), kwargs={"tolerate": True})
                   for front in (front_a, front_b, front_a, front_b)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(received) >= 20, "no enrollments before the restart")
            postgres_server.restart()  # under load: in-flight enrollments fail or succeed
            after_restart = len(received)
            wait_for(lambda: len(received) >= after_restart + 20, "no enrollments after the restart")
            front_a.proc.send_signal(signal.SIGKILL)  # mid-load; b keeps serving
            front_a.proc.wait(10)
            after_kill = len(received)
            wait_for(lambda: len(received) >= after_kill + 10, "front-end b stopped after a was killed")
        finally:
            stop.set()
            for t in threads:
                t.join(TIMEOUT)
        assert front_b.stop() == 0
    serials = [format(c.serial_number, "x") for c in received]
    stored = stored_serials(postgres_url)
    assert len(stored) == len(set(stored))
    missing = set(serials) - set(stored)
    assert not missing, f"{len(missing)} of {len(serials)} received certificates are not recorded"
    # Failures are errors a client sees (a 503, a reset connection), never a hang.
    assert all(isinstance(f, Exception) for f in failures), failures
    print(f"received {len(serials)}, failed {len(failures)}: {sorted({type(f).__name__ for f in failures})}")


def wait_for(condition: Any, message: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def test_embedded_ca_on_postgresql_issues_and_revokes(tmp_path: Path, postgres_url: str) -> None:
    with EmbeddedCA.init(tmp_path / "ca", store_location=postgres_url) as ca:
        assert isinstance(ca.store, PostgreSQLStore)
        ca.add_user("u", "pw-123456")
        assert ca.store.get_user("u") is not None
    with EmbeddedCA.open(tmp_path / "ca") as again:  # config.json names the database
        assert isinstance(again.store, PostgreSQLStore) and again.store.list_users() == ["u"]
