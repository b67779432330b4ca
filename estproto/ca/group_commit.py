"""Group commit: many writers, one transaction per batch, shared by the
SQLite and PostgreSQL stores.

Durability rule: "A certificate is returned to a client only after its
record is committed." A durable commit (an fsync, locally or on a database
server) costs about as much as the rest of an enrollment, so writes go
through a *group committer* (the leader/follower scheme of LevelDB's write
queue): callers append a small job to a queue and block until a commit
covering it has completed. A caller that finds no commit under way becomes
the committer itself: it takes every job waiting (up to ``max_batch``;
optionally it lingers ``commit_window`` seconds for more), runs each inside
its own SAVEPOINT (so one job's constraint violation, e.g. a duplicate
serial, fails that job alone; a batch of one job needs none), commits once,
wakes the callers of that batch, and hands the committer role to the oldest
caller still waiting, if any. Under load the batch grows by itself: the
jobs that arrive while one commit runs share the next one. There is no
writer thread for blocking callers: the thread that has to wait for the
commit anyway does the work, which saves two thread wake-ups per commit.

Callers that must not block (a server's event loop) queue a job with a
completion callback instead (:meth:`GroupCommitter.submit_later`): either
the caller commits it itself at its next *flush* (when commits are fast),
or a committer thread does.

If a commit fails, every job of that batch fails: a certificate is never
handed out without its record.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Protocol, TypeVar

__all__ = ["Job", "GroupCommitter", "Dialect", "commit_batch"]

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)
T = TypeVar("T")

_log = logging.getLogger("estproto.store")


class Job:
    """One write for the group committer, and its caller's wake-up: a
    blocked caller's lock, or the callback of a caller that did not wait."""

    __slots__ = ("fn", "finished", "_lock", "result", "error", "callback", "one_statement")

    def __init__(
        self, fn: Callable[[Any], object],
        callback: Callable[[BaseException | None], None] | None = None,
        *, one_statement: bool = False,
    ) -> None:
        self.fn = fn
        #: *fn* runs exactly one statement: a store may run it alone without
        #: BEGIN and COMMIT (in autocommit it is its own transaction).
        self.one_statement = one_statement
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

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.finish()

    def promote(self) -> None:
        """Wake the caller, unfinished: it is now the committer."""
        self._lock.release()

    def wait(self) -> None:
        """Block until :meth:`finish` or :meth:`promote`."""
        self._lock.acquire()


class GroupCommitter:
    """The queue, the leader hand-off and the committer thread.

    Args:
        commit: commits one batch (every job in it is finished when it
            returns, each with its result or error) and returns how many of
            them were committed; 0 if no commit was made.
        make_error: makes the store's error for a message ("the store is
            closed", "write interrupted").
        max_batch: most jobs per commit.
        commit_window: seconds a committer lingers for a fuller batch.
        thread_name: the committer thread's name.
    """

    def __init__(
        self, commit: Callable[[list[Job]], int], make_error: Callable[[str], BaseException], *,
        max_batch: int, commit_window: float, thread_name: str,
    ) -> None:
        if max_batch < 1 or commit_window < 0:
            raise ValueError("max_batch must be >= 1 and commit_window >= 0")
        self._commit = commit
        self._make_error = make_error
        self._max_batch = max_batch
        self._window = commit_window
        self._thread_name = thread_name
        #: Moving average of a commit's wall time, seconds.
        self.commit_seconds = 0.0
        #: Commits made and jobs they covered (jobs / commits = mean batch).
        self.commits = 0
        self.jobs = 0
        self.closed = False
        # Jobs not yet taken by a committer, oldest first, and whether a
        # committer is active; both guarded by _mutex. _changed signals a
        # committer lingering for a full batch, and close() waiting for the
        # last one.
        self._mutex = threading.Lock()
        self._changed = threading.Condition(self._mutex)
        self._waiting: list[Job] = []
        self._committing = False
        # Commits for callers that do not wait run on this thread, started
        # at the first such job.
        self._thread: threading.Thread | None = None
        self._go = threading.Semaphore(0)
        # Jobs submit_later left for its caller's flush.
        self._deferred: list[Job] = []

    def submit(self, fn: Callable[[Any], T], *, one_statement: bool = False) -> T:
        """Run *fn(connection)* in a transaction; return its result once it
        is committed, or raise the error its job got. *one_statement*: see
        :attr:`Job.one_statement`."""
        job = Job(fn, one_statement=one_statement)
        with self._mutex:
            if self.closed:
                raise self._make_error("the store is closed")
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

    def submit_later(self, job: Job, *, caller_commits: bool) -> Callable[[], None] | None:
        """Queue a callback *job* without waiting for it.

        Returns:
            With *caller_commits*, the *flush* function the caller calls
            soon on its own thread: it commits every job deferred so far
            (unless a commit is under way, which then takes them).
            Otherwise None: the committer thread commits it.
        """
        if caller_commits:
            with self._mutex:
                if self.closed:
                    raise self._make_error("the store is closed")
                self._deferred.append(job)
            return self.flush
        self._submit_jobs([job], lead_here=False)
        return None

    def flush(self) -> None:
        """Commit the jobs :meth:`submit_later` left to its callers."""
        with self._mutex:
            jobs, self._deferred = self._deferred, []
        if jobs:
            self._submit_jobs(jobs, lead_here=True)

    def _submit_jobs(self, jobs: list[Job], *, lead_here: bool) -> None:
        lead = refused = False
        with self._mutex:
            if self.closed:
                refused = True
            else:
                self._waiting.extend(jobs)
                lead = not self._committing
                self._committing = True
                if self._window and len(self._waiting) >= self._max_batch:
                    self._changed.notify_all()
                if lead and not lead_here:
                    self._hand_to_thread()
        if refused:
            error = self._make_error("the store is closed")
            for job in jobs:
                job.fail(error)
        elif lead and lead_here:
            self._lead()

    def _hand_to_thread(self) -> None:
        """Make the committer thread lead the next batch (``_mutex`` held)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._commit_forever, name=self._thread_name, daemon=True)
            self._thread.start()
        self._go.release()

    def _commit_forever(self) -> None:
        while True:
            self._go.acquire()
            with self._mutex:
                if not self._committing:
                    return  # close(): nothing left to lead
            self._lead()

    def _lead(self) -> None:
        """Commit one batch (the oldest waiting jobs, ours first among
        them), then pass the committer role on or give it up."""
        batch: list[Job] = []
        try:
            with self._mutex:
                if self._window:
                    self._changed.wait_for(
                        lambda: len(self._waiting) >= self._max_batch, timeout=self._window)
                batch = self._waiting[:self._max_batch]
                del self._waiting[:self._max_batch]
            started = time.perf_counter()
            committed = self._commit(batch)
            if committed:
                self.commits += 1
                self.jobs += committed
                self.commit_seconds += (time.perf_counter() - started - self.commit_seconds) * 0.2
        finally:
            for job in batch:  # only after an exception escaping commit
                if not job.finished:
                    job.fail(self._make_error("certificate store write interrupted"))
            with self._mutex:
                if self._waiting:
                    if self._waiting[0].callback is None:
                        self._waiting[0].promote()
                    else:
                        self._hand_to_thread()  # nobody waits on that one
                else:
                    self._committing = False
                    self._changed.notify_all()

    def close(self) -> bool:
        """Commit what is queued, stop the thread; later submissions fail.
        Returns False if it was closed already."""
        self.flush()  # a caller that never flushed loses nothing
        with self._mutex:
            if self.closed:
                return False
            self.closed = True
            self._changed.wait_for(lambda: not self._committing)
            thread = self._thread
            if thread is not None:
                self._go.release()  # finds nothing to lead: ends
        if thread is not None:
            thread.join()
        return True


class Dialect(Protocol[C_contra]):
    """What :func:`commit_batch` needs to know about a database driver."""

    #: The statement that starts a write transaction.
    begin: str

    def in_transaction(self, conn: C_contra) -> bool:
        """Whether *conn* is still inside the transaction (a failed
        statement did not end it)."""

    def job_error(self, exc: Exception) -> BaseException:
        """What the caller of a job that raised *exc* gets."""

    def batch_error(self, exc: Exception) -> BaseException:
        """What every caller gets when the transaction itself failed."""


def commit_batch(conn: C, batch: list[Job], dialect: Dialect[C], *, begun: bool = False) -> int:
    """Run *batch* in one transaction on *conn* and commit it; finish every
    job. Returns how many jobs were committed.

    *begun*: the caller already started the transaction (it checked the
    connection was alive with it)."""
    # A batch of one needs no SAVEPOINT: if its job fails, rolling back
    # the whole transaction undoes exactly that job. Many batches are
    # single jobs, and each statement is a round trip to the database.
    single = len(batch) == 1
    done: list[Job] = []
    execute: Callable[[str], object] = conn.execute  # type: ignore[attr-defined]  # both drivers' Connection.execute
    try:
        if not begun:
            execute(dialect.begin)
        for job in batch:
            if not single:
                execute("SAVEPOINT job")
            try:
                job.result = job.fn(conn)
            except Exception as exc:
                if not dialect.in_transaction(conn):
                    raise
                # This job alone fails; the batch goes on.
                if single:
                    execute("ROLLBACK")
                else:
                    execute("ROLLBACK TO SAVEPOINT job")
                    execute("RELEASE SAVEPOINT job")
                job.fail(dialect.job_error(exc))
                continue
            if not single:
                execute("RELEASE SAVEPOINT job")
            done.append(job)
        if done or not single:
            execute("COMMIT")
    except Exception as exc:
        # The transaction is lost (disk full, I/O error, connection gone):
        # nobody in this batch may believe their write happened.
        try:
            if dialect.in_transaction(conn):
                execute("ROLLBACK")
        except Exception:
            pass
        error = dialect.batch_error(exc)
        for job in batch:
            if not job.finished:
                job.fail(error)
        return 0
    for job in done:
        job.finish()
    return len(done)
