"""Storing a work: its row and its jobs, memo reuse of earlier identical jobs, data-flow links,
and for a large work the rest of its jobs in chunks from a thread of its own while the first
chunk runs (SQLite: transactions that double in size; PostgreSQL: paced to stay a little ahead
of dispatch).

The store writes the database; what it means for the engine's memory is done by the engine's
loop (:mod:`tasklift.engine.loop`), which this module reaches only through the callbacks it is
given.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine as DBEngine

from tasklift.db import dataflow, hot, tables
from tasklift.db.jobs import insert_jobs, mark_reused
from tasklift.db.results import find_memo
from tasklift.db.session import SerialWriter
from tasklift.db.works import (
    add_reused,
    bump_work_counters,
    insert_work,
    set_storing_by,
    set_work_status,
    state_of,
)
from tasklift.errors import NotFoundError, SubmissionError
from tasklift.records import ResultRecord, WorkSpec
from tasklift.states import WORK_TERMINAL, JobState, WorkflowState, WorkState, work_state
from tasklift.submission import Submission

__all__ = [
    "STORE_AHEAD",
    "STORE_CHUNK",
    "STORE_CHUNK_MAX",
    "ChunkedStore",
    "StoredWork",
    "WorkStore",
]

logger = logging.getLogger(__name__)

STORE_CHUNK = 10_000
STORE_CHUNK_MAX = 80_000
"""A larger work is stored in chunks: a first transaction of ``STORE_CHUNK`` jobs, which start
running at once (a million-job work's first result comes in about a second, not after the whole
insert), then transactions twice as large each time up to ``STORE_CHUNK_MAX`` (each commit
rewrites every index page it touched: large chunks store a million jobs 2x faster on SQLite)."""
STORE_AHEAD = 2 * STORE_CHUNK
"""PostgreSQL: the store thread keeps at most this many stored jobs ahead of the ones dispatch
has taken (paged into memory), in chunks of ``STORE_CHUNK // 2``; before each chunk it waits,
polling every ``STORE_POLL`` s, until dispatch has come that close. Storing a job costs the
database about as much CPU as running a no-op one (five indexes on ``jobs``, one in random key
order): stored at once, a 200,000-job work's rows took a core of PostgreSQL's for its first
seconds and dispatch ran at 60 % of its rate meanwhile (issue 17 item 6,
``bench/queue_depth.py``); paced in small chunks, the same cost is spread evenly over the run
(large chunks would still be bursts). On SQLite the writer is one connection taken in turns
and large chunks are cheaper: the whole work is stored at once, in growing chunks, as before."""
STORE_POLL = 0.02


@dataclass(frozen=True)
class WorkToStore:
    """A work as the engine stores it: the submission's facts."""

    workflow_id: int
    spec: WorkSpec
    memo_key: str
    options: str
    min_success: float
    jobs: Sequence[tuple[str, bytes]]
    """The first jobs to store now (keys and payloads)."""
    n_jobs: int
    """Every job of the work (more than ``jobs`` when the rest is stored in chunks)."""
    reuse: bool
    refs: Sequence[Sequence[dataflow.Ref]] | None = None
    claim: int = 0
    """How many of the first jobs to store already claimed by this engine."""
    require_running: bool = False


@dataclass
class StoredWork:
    """What storing a work's first jobs gave."""

    work_id: int
    job_ids: list[int]
    reused: list[tuple[int, int, bytes]]
    """``(job_id, earlier job, result)`` of the jobs memo reuse ended."""
    status: WorkState
    not_ready: set[int] = field(default_factory=set)
    """Data-flow jobs whose inputs are not all there yet."""
    ended: list[ResultRecord] = field(default_factory=list)
    """Data-flow jobs ended at once (their upstream job had failed or was skipped)."""
    claimed: set[int] = field(default_factory=set)


@dataclass(eq=False, repr=False)
class WorkStore:
    """Writes works and their jobs."""

    db: DBEngine
    writer: SerialWriter
    engine_id: str
    submit_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    """Serialises the transactions that take a workflow's next work number."""

    def store(self, work: WorkToStore) -> StoredWork:
        """Store a work's row and its first jobs in one transaction."""
        with self.submit_lock, self.writer.begin() as conn:
            if work.require_running:
                _check_running(conn, work.workflow_id)
            jobs = work.jobs
            # earlier identical jobs first: they are never claimed
            memo = find_memo(conn, work.memo_key, [k for k, _ in jobs]) if work.reuse else {}
            hits = {i for i, (key, _) in enumerate(jobs) if key in memo} if memo else set()
            work_id = self._insert_work(conn, work)
            job_ids = insert_jobs(
                conn, work_id, jobs, claim=work.claim, skip=hits, engine_id=self.engine_id
            )
            stored = StoredWork(work_id, job_ids, [], WorkState.RUNNING)
            stored.claimed = _claimed_at_insert(job_ids, hits, work.claim)
            blocked: dict[int, tuple[str, str]] = {}
            if work.refs:
                waiting, blocked = dataflow.register(
                    conn, work.workflow_id, work_id, job_ids, work.refs
                )
                stored.not_ready = set(waiting) | set(blocked)
            if hits:
                stored.reused = _reuse(conn, work_id, job_ids, jobs, memo)
            if blocked:
                stored.ended = _end_blocked(conn, work_id, job_ids, blocked, stored.reused)
            n_failed = sum(1 for r in stored.ended if r.state != JobState.SKIPPED.value)
            stored.status = work_state(
                work.n_jobs,
                len(stored.reused),
                n_failed,
                0,
                work.min_success,
                len(stored.ended) - n_failed,
            )
            if stored.status in WORK_TERMINAL:
                set_work_status(conn, work_id, stored.status.value, finished=True)
        return stored

    def _insert_work(self, conn: object, work: WorkToStore) -> int:
        spec = work.spec
        return insert_work(  # takes the workflow's next sequence number
            conn,
            workflow_id=work.workflow_id,
            name=spec.name,
            function=spec.function,
            script=spec.script,
            archive_sha=spec.archive_sha,
            memo_key=work.memo_key,
            status=WorkState.RUNNING.value,
            options=work.options,
            n_jobs=work.n_jobs,
            when_predicate=spec.when,
            # the rest is stored by this engine's store thread (cleared with the last chunk)
            storing_by=self.engine_id if work.n_jobs > len(work.jobs) else None,
        )

    def store_chunk(
        self,
        work_id: int,
        chunk: Sequence[tuple[str, bytes]],
        begin: int,
        memo_key: str,
        reuse: bool,
        min_success: float,
        last: bool = False,
    ) -> list[ResultRecord]:
        """Store jobs ``begin..`` of a work in one transaction; return its memo hits, ended.
        The ``last`` chunk also clears the work's ``storing_by``: every job is stored."""
        with self.submit_lock, self.writer.begin() as conn:
            memo = find_memo(conn, memo_key, [k for k, _ in chunk]) if reuse else {}
            hits = {begin + i for i, (k, _) in enumerate(chunk) if k in memo}
            job_ids = insert_jobs(conn, work_id, chunk, first=begin, skip=hits)
            if last:
                set_storing_by(conn, work_id, None)
            if not hits:
                return []
            reused = [
                (job_id, *memo[chunk[i][0]])
                for i, job_id in enumerate(job_ids)
                if begin + i in hits
            ]
            idx_of = {job_id: begin + i for i, job_id in enumerate(job_ids)}
            counts = bump_work_counters(
                conn, work_id, len(reused), 0, 0, done_status=WorkState.FINISHED.value
            )
            seq = counts.last_seq - len(reused) + 1
            mark_reused(conn, reused, first_seq=seq)
            add_reused(conn, work_id, len(reused))
            state = state_of(counts, min_success)
            if state in WORK_TERMINAL and state != WorkState.FINISHED:
                set_work_status(conn, work_id, state.value, finished=True)
        finished = JobState.FINISHED.value
        return [
            ResultRecord(job_id, idx_of[job_id], finished, result, done_seq=seq + i)
            for i, (job_id, _, result) in enumerate(reused)
        ]

    def release(self, work_id: int) -> None:
        """Nobody stores this work any more (stored, failed or cancelled)."""
        try:
            with self.submit_lock, self.writer.begin() as conn:
                set_storing_by(conn, work_id, None)
        except Exception:  # the work has ended anyway; a restarted engine ends it again
            logger.exception("work %d: clearing its storing engine failed", work_id)


def _check_running(conn: object, workflow_id: int) -> None:
    rows = hot.execute(conn, "SELECT status FROM workflows WHERE id = ?", (workflow_id,))
    if not rows:
        raise NotFoundError(f"workflow {workflow_id} not found")
    status = rows[0][0]
    if status != WorkflowState.RUNNING.value:
        raise SubmissionError(f"workflow {workflow_id} is {status}: no new works")


def _claimed_at_insert(job_ids: list[int], hits: set[int], claim: int) -> set[int]:
    """The first ``claim`` jobs that memo reuse did not end were inserted claimed."""
    claimed: set[int] = set()
    if claim:
        for idx, job_id in enumerate(job_ids):
            if len(claimed) == claim:
                break
            if idx not in hits:
                claimed.add(job_id)
    return claimed


def _reuse(
    conn: object,
    work_id: int,
    job_ids: list[int],
    jobs: Sequence[tuple[str, bytes]],
    memo: dict[str, tuple[int, bytes]],
) -> list[tuple[int, int, bytes]]:
    """End the jobs an earlier identical job answers (its result copied)."""
    reused = []
    for job_id, (key, _) in zip(job_ids, jobs, strict=True):
        hit = memo.get(key)
        if hit is not None:
            reused.append((job_id, hit[0], hit[1]))
    mark_reused(conn, reused)
    if reused:
        bump_work_counters(conn, work_id, len(reused), 0, 0)  # done_seq 1..n
        conn.execute(  # type: ignore[attr-defined]
            tables.works.update().where(tables.works.c.id == work_id).values(n_reused=len(reused))
        )
    return reused


def _end_blocked(
    conn: object,
    work_id: int,
    job_ids: list[int],
    blocked: dict[int, tuple[str, str]],
    reused: list[tuple[int, int, bytes]],
) -> list[ResultRecord]:
    """End the data-flow jobs whose upstream job already failed or was skipped."""
    reused_ids = {r[0] for r in reused}
    idx_of = {job_id: i for i, job_id in enumerate(job_ids)}
    doomed = [
        (job_id, idx_of[job_id], 0, state, message)
        for job_id, (state, message) in blocked.items()
        if job_id not in reused_ids
    ]
    if not doomed:
        return []
    ended, _ = dataflow.end_jobs(conn, work_id, doomed)
    return ended


@dataclass(frozen=True)
class StoreRest:
    """What is left to store of a large work once its first chunk is stored."""

    work_id: int
    submission: Submission
    jobs: Sequence[tuple[str, bytes]]
    start: int
    """Index of the first job not stored yet."""


@dataclass
class ChunkedStore:
    """Stores the rest of a large work from a thread of its own, while its first jobs run.

    Memo hits end at once (published like results). A failure (e.g. two jobs with the same
    arguments further down) cancels the work with its reason.
    """

    store: WorkStore
    stop: threading.Event
    paced: bool
    is_live: Callable[[int], bool]
    """The work still runs (not cancelled, not ended)."""
    page_position: Callable[[int], int | None]
    """The index after which dispatch pages a work in next (``None``: gone or not paging)."""
    chunk_stored: Callable[[int, int | None, list[ResultRecord]], None]
    """``(work_id, jobs stored so far (None: all), memo hits of the chunk)``."""
    stopped_short: Callable[[int, str], None]
    """The work was cancelled while being stored: why its store stopped."""
    failed: Callable[[int, str], None]
    """The store of a work failed (the engine cancels it with this reason)."""
    closing: Callable[[], bool]

    def start(self, rest: StoreRest, done: threading.Event) -> None:
        """Store ``rest.jobs[rest.start:]`` from a thread; ``done`` is set when it ends."""
        threading.Thread(
            target=self._run, args=(rest, done), name=f"tasklift-store-{rest.work_id}", daemon=True
        ).start()

    def _run(self, rest: StoreRest, done: threading.Event) -> None:
        try:
            self._chunks(rest)
        except Exception as exc:  # the waiting caller gets it from store_error()
            logger.exception("work %d: storing its jobs failed", rest.work_id)
            self.failed(rest.work_id, f"storing the work's jobs failed: {exc}")
        finally:
            if not self.closing():  # stored, failed or cancelled: nobody stores it any more
                # (an engine that closed mid-store keeps its claim: restarted, it ends the work)
                self.store.release(rest.work_id)
            done.set()

    def _chunks(self, rest: StoreRest) -> None:
        work_id, jobs, sub = rest.work_id, rest.jobs, rest.submission
        n_jobs = len(jobs)
        begin, size = rest.start, STORE_CHUNK
        while begin < n_jobs:
            size = max(1, STORE_CHUNK // 2) if self.paced else min(2 * size, STORE_CHUNK_MAX)
            end = min(n_jobs, begin + size)
            if self.paced:
                self._wait_for_dispatch(work_id, begin, STORE_AHEAD - (end - begin))
            if self.closing():
                return
            if not self.is_live(work_id):  # cancelled: the rest of its jobs never exist
                self.stopped_short(work_id, f"cancelled with {begin} of its {n_jobs} jobs stored")
                return
            chunk = jobs[begin:end]  # a lazy sequence computes keys and payloads here
            records = self.store.store_chunk(
                work_id, chunk, begin, sub.memo_key, sub.reuse, sub.min_success, end == n_jobs
            )
            self.chunk_stored(work_id, None if end == n_jobs else end, records)
            begin = end

    def _wait_for_dispatch(self, work_id: int, stored: int, ahead: int) -> None:
        """Wait until at most ``ahead`` of a work's first ``stored`` jobs are still to be taken
        by dispatch (paged into memory), or the work ended or the engine closes."""
        while not self.stop.is_set():
            position = self.page_position(work_id)
            if position is None or self.closing() or stored - (position + 1) <= ahead:
                return
            self.stop.wait(STORE_POLL)
