"""Recording outcomes: what an attempt's end does to its job (finished, failed, retried), to its
work's counters and state, to a remote workflow it ran, and to the jobs that take its result as
input, in one transaction, before anything is announced. Runs on the engine's loop thread.

Outcomes the database refused (down, restarting) are held in memory by :class:`HeldOutcomes`
and recorded again once it answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tasklift.bus.base import work_destination
from tasklift.db import dataflow
from tasklift.db.jobs import ended_already, store_retries, store_terminal
from tasklift.db.session import SerialWriter
from tasklift.db.workflows import finish_workflow
from tasklift.db.works import bump_work_counters, set_work_status, state_of
from tasklift.engine.attempts import Attempt
from tasklift.engine.live import LiveWork, Memory
from tasklift.engine.state import decide
from tasklift.records import JobSpec, Outcome, ResultRecord
from tasklift.states import WORK_TERMINAL, IllegalTransition, JobState, WorkflowState, work_state

__all__ = ["HeldOutcomes", "OutcomeRecorder"]

logger = logging.getLogger(__name__)

Publish = dict[str, list[ResultRecord]]
"""Records to announce, by bus destination."""
ClaimAhead = Callable[[Any], list[tuple[LiveWork, set[int]]]]


def _counter(state: str) -> int:
    """Which of a work's counters (finished, failed, skipped) a job's end adds to."""
    return {JobState.FINISHED: 0, JobState.SKIPPED: 2}.get(JobState(state), 1)


@dataclass
class _Batch:
    """One call's outcomes, sorted out before the transaction."""

    terminal: list[dict[str, Any]] = field(default_factory=list)
    retry: list[dict[str, Any]] = field(default_factory=list)
    per_work: dict[int, list[int]] = field(default_factory=dict)  # finished, failed, skipped
    retried: list[tuple[LiveWork, JobSpec]] = field(default_factory=list)
    taken: list[Attempt] = field(default_factory=list)  # put back if the transaction fails


@dataclass(eq=False, repr=False)
class OutcomeRecorder:
    """Stores outcomes (DB commit first) and updates the engine's memory after the commit."""

    memory: Memory
    writer: SerialWriter
    claim_ahead: ClaimAhead
    latency_observer: Callable[[float], None] | None = field(default=None, init=False)
    """Sees seconds from a job's end to its result's commit (the service's metrics)."""

    def record(self, outcomes: list[Outcome]) -> Publish:
        """Record outcomes; return the records to announce.

        Outcomes of attempts that are not active (stale, duplicate, cancelled meanwhile) are
        ignored. When the transaction fails nothing changed: the attempts are active again.
        """
        batch = self._sort(outcomes)
        publish: Publish = {}
        if not batch.terminal and not batch.retry:
            return publish
        try:
            try:
                done_works = self._commit(batch, publish)
            except IllegalTransition as exc:  # nothing stored: drop the late ones, store the rest
                self._drop_ended(batch, exc)
                done_works = self._commit(batch, publish)
        except BaseException:
            self._undo(batch)
            raise
        self._after_commit(batch, publish, done_works)
        return publish

    def _sort(self, outcomes: list[Outcome]) -> _Batch:
        memory, batch = self.memory, _Batch()
        for outcome in outcomes:
            attempt = memory.attempts.current(outcome.job_id, outcome.attempt)
            if attempt is None:
                continue  # stale attempt, duplicate, or a job cancelled meanwhile
            live = memory.works.get(attempt.work_id)
            if live is None:
                continue
            memory.attempts.take(outcome.job_id, outcome.attempt)
            batch.taken.append(attempt)
            decision = decide(outcome, attempt.number, live.spec.retries)
            row = _row(outcome, decision.state, attempt)
            if decision.retry:
                batch.retry.append(row)
                batch.retried.append(
                    (live, JobSpec(outcome.job_id, attempt.number + 1, attempt.payload))
                )
                continue
            batch.terminal.append(row)
            counts = batch.per_work.setdefault(attempt.work_id, [0, 0, 0])
            counts[_counter(decision.state)] += 1
            row["_idx"] = live.idx_of.pop(outcome.job_id, -1)
            row["_work"] = attempt.work_id
        return batch

    def _drop_ended(self, batch: _Batch, refused: IllegalTransition) -> None:
        """Leave out the outcomes of jobs another process ended meanwhile (``tasklift cancel``
        on the same database): their stored end stands; they are neither counted nor announced."""
        with self.writer.begin() as conn:
            ended = ended_already(conn, batch.terminal)
        if not ended:
            raise refused
        logger.warning(
            "late outcomes of %d jobs that had ended already, dropped: %s", len(ended), refused
        )
        for row in batch.terminal:
            if row["_id"] in ended:
                counts = batch.per_work[row["_work"]]
                counts[_counter(row["_state"])] -= 1
        batch.terminal = [row for row in batch.terminal if row["_id"] not in ended]

    def _undo(self, batch: _Batch) -> None:
        """Nothing was stored: the jobs are active again, as before the call."""
        for attempt in batch.taken:
            self.memory.attempts.add(attempt)
        for row in batch.terminal:
            live = self.memory.works.get(row["_work"])
            if row["_idx"] >= 0 and live is not None:
                live.idx_of[row["_id"]] = row["_idx"]

    def _commit(self, batch: _Batch, publish: Publish) -> list[int]:
        """The transaction: counters, job rows, remote workflows, data-flow, claims.

        Changes no memory but ``publish``, the rows' ``_done_seq`` and the jobs data-flow
        releases until it has committed (a released job whose release was rolled back fails
        its claim and is dropped). Returns the works that ended.
        """
        done_works: list[int] = []
        with self.writer.begin() as conn:
            next_seq: dict[int, int] = {}
            for work_id, (finished, failed, skipped) in batch.per_work.items():
                live = self.memory.works[work_id]
                ended = self._bump(conn, live, finished, failed, skipped)
                next_seq[work_id] = ended[0]
                if ended[1]:
                    done_works.append(work_id)
            for row in batch.terminal:
                row["_done_seq"] = next_seq[row["_work"]]
                next_seq[row["_work"]] += 1
            store_terminal(conn, batch.terminal)
            store_retries(conn, batch.retry)
            self._finish_remote_workflows(conn, batch.terminal)
            upstream = self.memory.upstream_works
            flowing = [row for row in batch.terminal if row["_work"] in upstream]
            if flowing:
                for work_id, record in self._flow(conn, flowing):
                    publish.setdefault(work_destination(work_id), []).append(record)
            claims = self.claim_ahead(conn)
        for live, claimed in claims:
            live.claimed |= claimed
        return done_works

    def _bump(
        self, conn: Any, live: LiveWork, finished: int, failed: int, skipped: int
    ) -> tuple[int, bool]:
        """Add a work's ended jobs to its stored counters; return its first done_seq and
        whether the work ended."""
        n_finished, n_failed = live.finished + finished, live.failed + failed
        # the end state as this engine's counts see it, set by the same statement once the
        # stored counters say every job is terminal
        guess = work_state(
            live.n_jobs,
            n_finished,
            n_failed,
            live.cancelled,
            live.min_success,
            max(0, live.n_jobs - n_finished - n_failed - live.cancelled),
        )
        work_id = live.spec.work_id
        counts = bump_work_counters(
            conn, work_id, finished, failed, 0, skipped, done_status=guess.value
        )
        # the stored counters decide: other engines may have ended jobs of this work
        state = state_of(counts, live.min_success)
        if state in WORK_TERMINAL and state != guess:
            set_work_status(conn, work_id, state.value, finished=True)
        return counts.last_seq - finished - failed - skipped + 1, state in WORK_TERMINAL

    def _finish_remote_workflows(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            spec = self.memory.works[row["_work"]].spec
            if spec.kind != "workflow":
                continue
            # a remote workflow's function ended
            ok = row["_state"] == JobState.FINISHED.value
            error = row["_traceback"] or f"{row['_error_type']}: {row['_error_message']}"
            finish_workflow(
                conn,
                spec.workflow_id,
                (WorkflowState.FINISHED if ok else WorkflowState.FAILED).value,
                row["_result"] if ok else None,
                None if ok else error,
            )

    def _flow(self, conn: Any, rows: list[dict[str, Any]]) -> list[tuple[int, ResultRecord]]:
        """Release dependents of finished jobs; end dependents of failed or skipped ones."""
        works = self.memory.works
        finished = [r["_id"] for r in rows if r["_state"] == JobState.FINISHED.value]
        broken = {
            r["_id"]: (r["_state"], f"{r['_error_type']}: {r['_error_message']}")
            for r in rows
            if r["_state"] != JobState.FINISHED.value
        }
        if finished:
            for work_id, job_id, idx, payload in dataflow.release(conn, finished):
                live = works.get(work_id)
                if live is None:
                    continue  # an engine that knows the work picks it up (scan)
                live.pending.append(JobSpec(job_id, 1, payload))
                live.idx_of[job_id] = idx
        cascaded: list[tuple[int, ResultRecord]] = []
        if broken:
            cascaded, states = dataflow.cascade(conn, broken)
            for work_id, state in states.items():
                if state in WORK_TERMINAL:
                    works.pop(work_id, None)
        return cascaded

    def _after_commit(self, batch: _Batch, publish: Publish, done_works: list[int]) -> None:
        works = self.memory.works
        for work_id, (finished, failed, _) in batch.per_work.items():
            live = works[work_id]
            live.finished += finished
            live.failed += failed
        observe = self.latency_observer
        if observe is not None:
            now = time.time()
            for row in batch.terminal:
                if row["_finished_at"]:
                    observe(max(0.0, now - row["_finished_at"]))
        for row in batch.terminal:
            publish.setdefault(work_destination(row["_work"]), []).append(
                ResultRecord(
                    row["_id"],
                    row["_idx"],
                    row["_state"],
                    row["_result"],
                    row["_error_type"],
                    row["_error_message"],
                    row["_traceback"],
                    row["_attempts"],
                    row["_done_seq"],
                )
            )
        for live, job in batch.retried:
            live.retries.append(job)
            logger.info(
                "work %s: job %d failed, retrying (attempt %d)",
                live.spec.name,
                job.job_id,
                job.attempt,
            )
        for work_id in done_works:
            works.pop(work_id, None)


def _row(outcome: Outcome, state: JobState, attempt: Attempt) -> dict[str, Any]:
    """The parameters of one job's stored end (or retry)."""
    return {
        "_id": outcome.job_id,
        "_state": state.value,
        "_result": outcome.result,
        "_error_type": outcome.error_type,
        "_error_message": outcome.error_message,
        "_traceback": outcome.traceback,
        "_attempts": attempt.number,
        "_started_at": outcome.started_at,
        "_finished_at": outcome.finished_at,
        "_stdout": outcome.stdout,
        "_handle": attempt.handle,
    }


class HeldOutcomes:
    """Outcomes the database failed to take, kept in memory and recorded again from a thread
    every ``interval`` seconds until it answers (then the jobs a failed dispatch left queued
    are dispatched)."""

    def __init__(
        self,
        interval: float,
        stop: threading.Event,
        retry: Callable[[list[Outcome]], bool],
        engine_id: str,
    ) -> None:
        self._interval = interval
        self._stop = stop
        self._retry = retry
        """Records held outcomes (empty: dispatch again); True when it went through."""
        self._engine_id = engine_id
        self._held: list[Outcome] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the list and the thread; never held over I/O

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, outcomes: list[Outcome]) -> int:
        """Keep outcomes for a later try and make sure the retry thread runs; return how many
        are held now."""
        with self._lock:
            self._held.extend(outcomes)
            self._start()
            return len(self._held)

    def wake(self) -> None:
        """Make sure the retry thread runs (a dispatch failed on the database)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="tasklift-held-outcomes", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                held, self._held = self._held, []
            if not self._retry(held):
                continue
            if held:
                logger.warning(
                    "engine %s: the database answers again; %d held outcomes recorded",
                    self._engine_id,
                    len(held),
                )
            with self._lock:
                if self._held:
                    continue
                self._thread = None
                return
        with self._lock:
            self._thread = None
