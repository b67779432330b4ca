"""Handlers on the event loop (issue 11): ResponseFuture, InlineHandler,
the store's record_issued_later and the embedded CA's fast path.

The guarantees kept while the thread hand-off goes: a certificate is answered
only after its record is committed; nothing is authorized from the cache
that the password check did not pass; a future finished late does not hold
up other connections; a future that fails becomes a 500, and the server goes
on. The adapters run for real (trio and asyncio, TLS over loopback).
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from estproto import ServerConfig, auth
from estproto._events import (
    CACertsRequest,
    CACertsResponse,
    CertificateResponse,
    ConnectionFacts,
    ErrorResponse,
    ServerRequest,
    ServerResponse,
    SimpleEnrollRequest,
)
from estproto._response_future import InlineHandler, ResponseFuture
from estproto.ca import CASettings, EmbeddedCA
from estproto.ca.sqlite_store import SQLiteStore
from estproto.ca.store import DuplicateSerialError, IssuedRecord, StoreError
from estproto.codecs import pkcs10
from server_thread import ServerThread
from test_security import basic, csr_body, holds_certificate, https, name

USER, PASSWORD = "inline-user", "inline-password"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
FACTS = ConnectionFacts(peer="127.0.0.1:1")


def record(serial: str) -> IssuedRecord:
    return IssuedRecord(
        serial=serial, der=os.urandom(300), subject="CN=x", san="", requester="user:a",
        request_der=b"req", label="", operation="simpleenroll", issued_at=NOW,
        not_after=NOW + datetime.timedelta(days=1),
    )


class Done:
    """A record_issued_later callback that remembers how and where it ran."""

    def __init__(self) -> None:
        self.calls: list[tuple[BaseException | None, str]] = []
        self.event = threading.Event()

    def __call__(self, error: BaseException | None) -> None:
        self.calls.append((error, threading.current_thread().name))
        self.event.set()


# -- ResponseFuture ---------------------------------------------------------------


def test_a_future_finishes_once_and_calls_back_once() -> None:
    future = ResponseFuture()
    seen: list[str] = []
    future.on_done(lambda: seen.append("early"))
    with pytest.raises(RuntimeError):
        future.result()
    future.set_response(ErrorResponse(503, "x"))
    future.on_done(lambda: seen.append("late"))
    assert seen == ["early", "late"] and future.done
    assert isinstance(future.result(), ErrorResponse)
    with pytest.raises(RuntimeError):
        future.set_error(ValueError("again"))
    failed = ResponseFuture()
    failed.set_error(KeyError("boom"))
    with pytest.raises(KeyError):
        failed.result()


# -- the store ------------------------------------------------------------------------


def test_a_fast_store_leaves_the_commit_to_the_callers_flush(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "s.db") as store:
        dones = [Done() for _ in range(5)]
        flushes = [store.record_issued_later(record(f"a{i}"), d) for i, d in enumerate(dones)]
        assert all(f is not None for f in flushes)
        assert not any(d.calls for d in dones)  # nothing is durable yet: nobody answered
        commits = store.commits
        flushes[0]()  # type: ignore[misc]
        # One commit for the five, on this thread, before flush returned.
        assert store.commits == commits + 1
        assert all(d.calls == [(None, threading.current_thread().name)] for d in dones)
        assert store.get_issued("a4") is not None
        flushes[1]()  # type: ignore[misc]  # nothing left: no commit
        assert store.commits == commits + 1
        again = Done()
        flush = store.record_issued_later(record("a1"), again)
        assert flush is not None
        flush()
        assert isinstance(again.calls[0][0], DuplicateSerialError)
        unflushed = Done()
        store.record_issued_later(record("a9"), unflushed)
    # close() commits what a caller never flushed.
    assert unflushed.calls and unflushed.calls[0][0] is None
    with SQLiteStore(tmp_path / "s.db") as reopened:
        assert reopened.get_issued("a9") is not None


def test_slow_commits_go_to_the_committer_thread(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "s.db") as store:
        store.commit_seconds = 1.0  # as if the disk were slow
        done = Done()
        assert store.record_issued_later(record("b1"), done) is None
        assert done.event.wait(10)
        error, thread = done.calls[0]
        assert error is None and thread == "estproto-store-committer"
        assert store.get_issued("b1") is not None
        dup = Done()
        store.record_issued_later(record("b1"), dup)
        assert dup.event.wait(10) and isinstance(dup.calls[0][0], DuplicateSerialError)


def test_the_committer_batches_and_records_everything_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path, caller_commit_limit=0)
    dones: list[Done] = []
    lock = threading.Lock()

    def submit(worker: int) -> None:
        for i in range(25):
            done = Done()
            with lock:
                dones.append(done)
            store.record_issued_later(record(f"{worker:02x}{i:02x}"), done)

    threads = [threading.Thread(target=submit, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A blocking writer meanwhile shares the committer.
    store.record_issued(record("ff00"))
    store.close()  # waits for every queued job
    assert len(dones) == 200
    assert all(len(d.calls) == 1 and d.calls[0][0] is None for d in dones)
    assert store.jobs == 201 and store.commits <= 201
    with SQLiteStore(path) as reopened:
        assert reopened.count_issued() == 201
    late = Done()
    store.record_issued_later(record("late"), late)
    assert late.event.wait(10) and isinstance(late.calls[0][0], StoreError)


# -- the embedded CA's fast path -----------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCA]:
    directory = tmp_path_factory.mktemp("inline") / "ca"
    with EmbeddedCA.init(directory, hostnames=("127.0.0.1",)) as c:
        c.add_user(USER, PASSWORD)
        yield c


def _enroll(cn: str, password: str = PASSWORD, facts: ConnectionFacts = FACTS) -> SimpleEnrollRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = pkcs10.decode_csr(pkcs10.build_csr(key, name(cn)))
    return SimpleEnrollRequest(label="", credentials=auth.BasicCredentials(USER, password), facts=facts, csr=csr)


def _serial_recorded(ca: EmbeddedCA, response: ServerResponse) -> bool:
    assert isinstance(response, CertificateResponse), response
    return ca.store.get_issued(format(response.certificate.serial_number, "x")) is not None


def test_only_recently_checked_passwords_take_the_fast_path(ca: EmbeddedCA) -> None:
    first = _enroll("fast-0")
    # Never checked: the blocking path (scrypt) decides.
    assert ca.answer_inline(first) is None
    assert isinstance(ca.handler()(first), CertificateResponse)
    future = ca.answer_inline(_enroll("fast-1"))
    other = ca.answer_inline(_enroll("fast-1b"))
    assert isinstance(future, ResponseFuture) and isinstance(other, ResponseFuture)
    assert not future.done and future.flush is not None  # not before its commit
    commits = ca.store.commits
    future.flush()
    # One commit covered both enrollments signed before the flush.
    assert future.done and other.done and ca.store.commits == commits + 1
    assert _serial_recorded(ca, future.result()) and _serial_recorded(ca, other.result())
    # A wrong password is not in the cache, whoever the user is.
    assert ca.answer_inline(_enroll("fast-2", password="wrong")) is None
    # A client certificate is looked up in the store: not on the loop.
    cert = future.result().certificate  # type: ignore[attr-defined]
    with_cert = _enroll("fast-3", facts=ConnectionFacts(client_certificate=cert, client_certificate_verified=True))
    assert ca.answer_inline(with_cert) is None
    assert ca.answer_inline(CACertsRequest(label="", credentials=None, facts=FACTS)) is None


def test_the_fast_path_answers_after_the_committer_and_redraws_a_taken_serial(
        ca: EmbeddedCA, monkeypatch: pytest.MonkeyPatch) -> None:
    warm = _enroll("redraw-0")
    issued = ca.handler()(warm)
    assert isinstance(issued, CertificateResponse)
    taken = issued.certificate.serial_number
    draws = iter([taken, taken])
    real = x509.random_serial_number
    monkeypatch.setattr(x509, "random_serial_number", lambda: next(draws, None) or real())
    monkeypatch.setattr(ca.store, "commit_seconds", 1.0)  # the committer thread's path
    future = ca.answer_inline(_enroll("redraw-1"))
    assert isinstance(future, ResponseFuture)
    deadline = time.monotonic() + 10
    while not future.done and time.monotonic() < deadline:
        time.sleep(0.01)
    response = future.result()
    assert isinstance(response, CertificateResponse) and response.certificate.serial_number != taken
    assert _serial_recorded(ca, response)


def test_manual_approval_is_never_on_the_fast_path(tmp_path: Path) -> None:
    with EmbeddedCA.init(tmp_path / "ca", hostnames=("127.0.0.1",),
                         settings=CASettings(manual_approval=True)) as ca:
        ca.add_user(USER, PASSWORD)
        request = _enroll("manual")
        ca.handler()(request)  # 202, and the password is now cached
        assert ca.answer_inline(_enroll("manual-2")) is None


# -- through the adapters ---------------------------------------------------------


class SlowThenFailing:
    """/cacerts at once; an enrollment answered by another thread 0.5 s
    later; a second enrollment's future fails."""

    def __init__(self, ca: EmbeddedCA) -> None:
        self.ca = ca
        self.enrollments = 0

    def __call__(self, request: ServerRequest) -> ServerResponse | ResponseFuture:
        if isinstance(request, CACertsRequest):
            return CACertsResponse(self.ca.cacerts(""))
        self.enrollments += 1
        future = ResponseFuture()
        if self.enrollments == 1:
            threading.Timer(0.5, future.set_response, [ErrorResponse(503, "answered by the timer")]).start()
        else:
            threading.Timer(0.05, future.set_error, [RuntimeError("the backend broke")]).start()
        return future


@pytest.mark.parametrize("kind", ["trio", "asyncio"])
def test_a_late_future_holds_up_nobody_and_a_failed_one_is_a_500(ca: EmbeddedCA, kind: str) -> None:
    config = ServerConfig(tls=ca.server_tls_context(), est=ca.est_settings())
    handler = InlineHandler(SlowThenFailing(ca))
    key = ec.generate_private_key(ec.SECP256R1())
    with ServerThread(kind, handler, config) as srv:
        results: dict[str, Any] = {}

        def slow() -> None:
            started = time.monotonic()
            results["slow"] = https(ca, srv.port, "POST", "/.well-known/est/simpleenroll",
                                    body=csr_body(key), headers=basic(PASSWORD, USER))
            results["slow_took"] = time.monotonic() - started

        waiting = threading.Thread(target=slow)
        waiting.start()
        time.sleep(0.1)
        started = time.monotonic()
        status, _, body = https(ca, srv.port, "GET", "/.well-known/est/cacerts")
        quick = time.monotonic() - started
        waiting.join(20)
        assert status == 200 and holds_certificate(body)
        assert quick < 0.4, f"/cacerts waited {quick:.2f} s behind the pending future"
        status, _, body = results["slow"]
        assert status == 503 and b"answered by the timer" in body and results["slow_took"] >= 0.45
        status, _, body = https(ca, srv.port, "POST", "/.well-known/est/simpleenroll",
                                body=csr_body(key), headers=basic(PASSWORD, USER))
        assert status == 500
        status, _, _ = https(ca, srv.port, "GET", "/.well-known/est/cacerts")
        assert status == 200  # still serving


@pytest.mark.parametrize("kind", ["trio", "asyncio"])
def test_the_inline_handler_enrolls_over_tls(ca: EmbeddedCA, kind: str) -> None:
    config = ServerConfig(tls=ca.server_tls_context(), est=ca.est_settings())
    key = ec.generate_private_key(ec.SECP256R1())
    with ServerThread(kind, ca.inline_handler(), config) as srv:
        for cn in ("tls-a", "tls-b"):  # the second one from the cache
            status, _, body = https(ca, srv.port, "POST", "/.well-known/est/simpleenroll",
                                    body=csr_body(key, cn), headers=basic(PASSWORD, USER))
            assert status == 200 and holds_certificate(body)
        status, _, _ = https(ca, srv.port, "POST", "/.well-known/est/simpleenroll",
                             body=csr_body(key, "tls-c"), headers=basic("wrong", USER))
        assert status == 401
