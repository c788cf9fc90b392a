"""The commands that change works, run on the engine's loop thread: a new work stored and
queued, a work cancelled or its failed jobs retried, outcomes recorded (or held while the
database is away), jobs requeued, starts recorded ``running`` in batches, chunks of a large
work noted as stored.

Each command is one step in the loop's order, so a work's store, its listener's subscription
and its first dispatch happen before any of its outcomes is recorded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Engine as DBEngine
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tasklift.bus.base import work_destination
from tasklift.db import dataflow, tables
from tasklift.db.jobs import cancel_open_jobs, mark_running, reopen_failed_jobs, requeue_jobs
from tasklift.db.session import SerialWriter
from tasklift.db.works import set_work_status
from tasklift.engine.announce import Announcer
from tasklift.engine.backend_pool import BackendPool
from tasklift.engine.dispatch import Dispatcher
from tasklift.engine.live import LiveWork, Memory, WorkRecord
from tasklift.engine.loop import EngineLoop
from tasklift.engine.outcomes import HeldOutcomes, OutcomeRecorder, Publish
from tasklift.engine.recovery import Recovery
from tasklift.engine.store import (
    STORE_CHUNK,
    ChunkedStore,
    StoredWork,
    StoreRest,
    WorkStore,
    WorkToStore,
)
from tasklift.errors import BackendError, NotFoundError
from tasklift.records import JobSpec, Outcome, ResultRecord, WorkSpec
from tasklift.states import WORK_TERMINAL, JobState, WorkState, work_state
from tasklift.submission import Submission

__all__ = ["IN_MEMORY_JOBS", "RUNNING_BATCH_DELAY", "WorkControl"]

logger = logging.getLogger(__name__)

IN_MEMORY_JOBS = 20_000
"""Works up to this size keep their pending jobs in memory; larger ones page from the DB."""
RUNNING_BATCH_DELAY = 0.2
"""Seconds starts are gathered before one statement records them ``running`` (a job that ends
sooner goes straight from ``queued`` to its end)."""
STORE_TRIES = 5


@dataclass(eq=False, repr=False, kw_only=True)
class WorkControl:
    """Work life-cycle commands (loop thread, unless a method says otherwise)."""

    memory: Memory
    db: DBEngine
    store: WorkStore
    chunks: ChunkedStore
    backends: BackendPool
    announcer: Announcer
    dispatch: Callable[[], None]
    """Dispatch; a database failure leaves the jobs queued for the retry thread."""
    recovery: Recovery
    dispatcher: Dispatcher
    loop: EngineLoop
    writer: SerialWriter
    engine_id: str
    _running_flush: threading.Timer | None = field(default=None, init=False)

    # ------------------------------------------------------------------ a new work
    def submit(
        self, submission: Submission, on_stored: Callable[[WorkRecord], None] | None
    ) -> tuple[WorkSpec, WorkRecord]:
        """Store a work with its jobs and queue them (caller's thread).

        With ``require_running`` the store transaction first checks that the workflow is
        still running (:class:`SubmissionError` if it ended: nothing is stored).

        Up to ``IN_MEMORY_JOBS`` jobs are stored in one transaction, those the backend has
        room for already claimed. A larger work is stored in chunks: this returns once the
        first ``STORE_CHUNK`` jobs are stored and running, a thread of its own stores the rest
        (``Engine.wait_stored``; ``Engine.store_error`` tells why it stopped short, if it did).

        ``refs`` (one list per job) make jobs wait for upstream jobs and take their results
        as inputs (data-flow); such a job is dispatched as soon as its own inputs are ready.

        Finished jobs of earlier works with the same ``memo_key`` and key are reused (their
        result copied, nothing runs) when ``reuse`` is true. ``on_stored`` runs on the loop
        thread before any job of the work is dispatched (e.g. to subscribe to its results).
        """
        sub, jobs = submission, submission.jobs
        n_jobs = len(jobs)
        streamed = not sub.refs and n_jobs > IN_MEMORY_JOBS
        claim = 0
        if not sub.refs and not streamed:  # the jobs the backend has room for are stored claimed
            claim = min(n_jobs, self._room(replace(sub.spec, workflow_id=sub.workflow_id)))
        # a list: the jobs are read several times below (a lazy sequence computes each time)
        first = list(jobs[:STORE_CHUNK] if streamed else jobs[:])
        work = WorkToStore(
            sub.workflow_id, sub.spec, sub.memo_key, sub.options.to_json(), sub.min_success,
            first, n_jobs, sub.reuse, sub.refs, claim, sub.require_running,
        )  # fmt: skip
        spec, record, done = self.loop.call(self._store_and_queue, work, on_stored, streamed)
        if done is not None:  # the rest is stored by a thread of its own
            self.chunks.start(StoreRest(record.work_id, sub, jobs, len(first)), done)
        return spec, record

    def _room(self, spec: WorkSpec) -> int:
        """How many jobs of a new work its backend takes at once (0 when closed)."""
        if self.memory.closed:
            return 0
        return self.backends.get(spec.backend).free_slots(spec)

    def _store_and_queue(
        self,
        work: WorkToStore,
        on_stored: Callable[[WorkRecord], None] | None,
        streamed: bool,
    ) -> tuple[WorkSpec, WorkRecord, threading.Event | None]:
        # a data-flow work's upstream works are marked first: an upstream job that ends later
        # then releases it in the DB and in memory, never in the DB only (it would wait forever)
        if work.refs:
            self.memory.upstream_works.update(r.work_id for refs in work.refs for r in refs)
        for attempt in range(STORE_TRIES):
            try:
                stored = self.store.store(work)
                break
            except IntegrityError:  # another engine took the same sequence number: read again
                if attempt == STORE_TRIES - 1:
                    raise
        spec = replace(work.spec, work_id=stored.work_id, workflow_id=work.workflow_id)
        live = _live_work(spec, work, stored, streamed)
        if stored.reused:
            logger.info(
                "work %s: reused %d of %d finished jobs", spec.name, len(stored.reused), work.n_jobs
            )
        record = WorkRecord(work_id=stored.work_id, n_jobs=work.n_jobs, n_reused=len(stored.reused))
        if on_stored is not None:
            on_stored(record)  # e.g. subscribe before any job can finish
        done = threading.Event() if streamed else None
        if stored.status not in WORK_TERMINAL:
            live.store_done = done
            self.memory.works[stored.work_id] = live
            self.dispatch()
        if stored.ended:
            self.announcer.announce(work_destination(stored.work_id), stored.ended)
        return spec, record, done

    def chunk_stored(self, work_id: int, stored: int | None, records: list[ResultRecord]) -> None:
        """A chunk of a large work is stored: its memo hits ended; dispatch may page it in."""
        live = self.memory.works.get(work_id)
        if live is not None:
            live.stored = stored
            live.finished += len(records)
            if live.finished + live.failed + live.cancelled >= live.n_jobs:
                self.memory.works.pop(work_id, None)
            self.dispatch()
        if records:
            self.announcer.announce(work_destination(work_id), records)

    # ------------------------------------------------------------------ a user's commands
    def cancel(self, work_id: int, message: str) -> int:
        """Cancel a work's queued and running jobs; return how many were cancelled."""
        memory = self.memory
        live = memory.works.pop(work_id, None)
        handles = [a.handle for a in memory.attempts.take_work(work_id) if a.handle is not None]
        cascaded: list[tuple[int, ResultRecord]] = []
        with self.db.begin() as conn:
            cancelled = cancel_open_jobs(conn, work_id, message)
            if cancelled and work_id in memory.upstream_works:
                cascaded, _ = dataflow.cascade(
                    conn, {r.job_id: (JobState.CANCELLED.value, message) for r in cancelled}
                )
            row = conn.execute(
                select(
                    tables.works.c.n_jobs,
                    tables.works.c.n_finished,
                    tables.works.c.n_failed,
                    tables.works.c.n_cancelled,
                ).where(tables.works.c.id == work_id)
            ).first()
            if row is None:
                raise NotFoundError(f"work {work_id} does not exist")
            state = work_state(
                row[0], row[1], row[2], row[3], 1.0 if live is None else live.min_success
            )
            if cancelled:
                state = WorkState.CANCELLED if state != WorkState.FINISHED else state
            set_work_status(conn, work_id, state.value, finished=True)
        if handles and live is not None:
            try:
                self.backends.get(live.spec.backend).cancel(handles)
            except BackendError:
                logger.exception("backend could not cancel jobs of work %d", work_id)
        self.announcer.announce(work_destination(work_id), cancelled)
        for other, record in cascaded:
            self.announcer.announce(work_destination(other), [record])
        return len(cancelled)

    def retry_failed(self, work_id: int) -> int:
        """Run a work's failed jobs again (fresh attempts); return how many."""
        works = self.memory.works
        with self.db.begin() as conn:
            reopened = reopen_failed_jobs(conn, work_id)
            downstream = dataflow.reopen_downstream(conn, [r[0] for r in reopened])
        for other in downstream:  # their jobs wait for the retried ones, then run
            if other not in works:
                works[other] = self.recovery.live_from_row(self._work_row(other, strict=True))
        row = self._work_row(work_id)
        if row is None:
            raise NotFoundError(f"work {work_id} does not exist")
        if not reopened:
            return 0
        live = works.get(work_id)
        if live is None:
            live = works[work_id] = self.recovery.live_from_row(row)
        else:
            live.failed -= len(reopened)
        for job_id, idx, payload in reopened:
            live.retries.append(JobSpec(job_id, 1, payload))
            live.idx_of[job_id] = idx
        logger.info("work %s: retrying %d failed jobs", live.spec.name, len(reopened))
        self.dispatch()
        return len(reopened)

    def _work_row(self, work_id: int, strict: bool = False) -> dict[str, Any] | None:
        with self.db.connect() as conn:
            result = conn.execute(
                select(tables.works).where(tables.works.c.id == work_id)
            ).mappings()
            row = result.one() if strict else result.first()
        return None if row is None else dict(row)

    # ------------------------------------------------------------------ the backends' reports
    def record(
        self,
        recorder: OutcomeRecorder,
        held: HeldOutcomes,
        outcomes: list[Outcome],
        hold: bool,
    ) -> None:
        """Record outcomes, dispatch the room they freed, announce the ended jobs."""
        try:
            publish = recorder.record(outcomes)
        except SQLAlchemyError as exc:
            if not hold:
                raise
            n_held = held.hold(outcomes)
            logger.error(
                "the database failed while recording %d outcomes; holding %d in memory "
                "until it answers again: %s",
                len(outcomes),
                n_held,
                exc,
            )
            return
        self.dispatch()
        self.announce_all(publish)

    def retry_held(
        self, recorder: OutcomeRecorder, held: HeldOutcomes, outcomes: list[Outcome]
    ) -> bool:
        """Record outcomes held while the database failed, then dispatch what a failed dispatch
        left queued; True when both went through."""
        if outcomes:
            try:
                self.announce_all(recorder.record(outcomes))
            except SQLAlchemyError as exc:
                held.hold(outcomes)
                logger.error("recording %d held outcomes failed again: %s", len(outcomes), exc)
                return False
        if len(held):
            return False
        try:
            self.dispatcher.dispatch()
        except SQLAlchemyError as exc:
            logger.error("dispatch failed again: %s", exc)
            return False
        return True

    def announce_all(self, publish: Publish) -> None:
        """Announce recorded ends, by destination."""
        for destination, messages in publish.items():
            self.announcer.announce(destination, messages)

    def requeue(self, jobs: list[tuple[int, int]]) -> None:
        """Put jobs a backend gave back into the queue, without charging an attempt."""
        rows = []
        for job_id, number in jobs:
            attempt = self.memory.attempts.take(job_id, number)
            if attempt is None:
                continue
            live = self.memory.works.get(attempt.work_id)
            if live is None:
                continue
            live.retries.appendleft(JobSpec(job_id, number, attempt.payload))
            rows.append((job_id, number - 1))
        if rows:
            try:
                with self.writer.begin() as conn:
                    requeue_jobs(conn, rows)
            except SQLAlchemyError as exc:  # bookkeeping: the jobs are queued in memory
                logger.error(
                    "engine %s: could not note %d requeued jobs in the database: %s",
                    self.engine_id,
                    len(rows),
                    exc,
                )
        self.dispatch()

    def note_started(self, jobs: list[tuple[int, int]]) -> None:
        """Runners started these attempts: recorded ``running`` in one statement soon."""
        for job_id, number in jobs:
            self.memory.attempts.note_started(job_id, number)
        if self._running_flush is None:
            self._running_flush = threading.Timer(
                RUNNING_BATCH_DELAY, self.loop.post, args=(self._flush_started,)
            )
            self._running_flush.daemon = True
            self._running_flush.start()

    def _flush_started(self) -> None:
        self._running_flush = None
        starts = self.memory.attempts.starts_to_record()
        if not starts:
            return
        try:
            with self.writer.begin() as conn:
                mark_running(conn, starts)
        except SQLAlchemyError as exc:  # bookkeeping: the jobs run; their outcome still counts
            logger.error("could not record %d started jobs as running: %s", len(starts), exc)

    def dispatch_guarded(self) -> bool:
        """Dispatch; False when the database failed (the jobs stay queued)."""
        try:
            self.dispatcher.dispatch()
        except SQLAlchemyError as exc:
            logger.error("engine %s: dispatch failed on the database: %s", self.engine_id, exc)
            return False
        return True


def _live_work(spec: WorkSpec, work: WorkToStore, stored: StoredWork, streamed: bool) -> LiveWork:
    """The in-memory state of a newly stored work."""
    live = LiveWork(
        spec=spec, n_jobs=work.n_jobs, min_success=work.min_success, finished=len(stored.reused)
    )
    live.has_refs = bool(work.refs)
    live.claimed = stored.claimed
    live.stored = len(work.jobs) if streamed else None
    skip = {r[0] for r in stored.reused} | stored.not_ready
    if work.n_jobs <= IN_MEMORY_JOBS:
        for idx, (job_id, (_, payload)) in enumerate(zip(stored.job_ids, work.jobs, strict=True)):
            if job_id not in skip:
                live.pending.append(JobSpec(job_id, 1, payload))
                live.idx_of[job_id] = idx
    else:
        live.page_after = -1
    return live
