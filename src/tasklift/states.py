"""Job, work and workflow states, the terminal sets, the one table of allowed job moves
(:data:`ALLOWED`, enforced where job state is written: ``tasklift.db.jobs.transition``), and
the rule that makes a work's state from its job counters (:func:`work_state`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum

__all__ = [
    "ALLOWED",
    "JOB_TERMINAL",
    "SOURCES",
    "WORKFLOW_TERMINAL",
    "WORK_TERMINAL",
    "IllegalTransition",
    "JobState",
    "WorkState",
    "WorkflowState",
    "check_transition",
    "needed_successes",
    "work_state",
]


class JobState(StrEnum):
    """Where one job is in its life."""

    PENDING = "pending"
    """Stored, not yet handed to a backend."""
    QUEUED = "queued"
    """Handed to a backend, not yet running."""
    RUNNING = "running"
    """A job runner is executing it."""
    FINISHED = "finished"
    """Ran and returned a result (falsy results included)."""
    FAILED = "failed"
    """Raised, timed out or was lost more often than its retries allow."""
    CANCELLED = "cancelled"
    """Cancelled by a user or because its workflow ended."""
    UPSTREAM_FAILED = "upstream_failed"
    """Not run: a job it takes its input from failed (data-flow chains)."""
    SKIPPED = "skipped"
    """Not run: its ``when=`` condition was false (data-flow chains)."""
    LOST = "lost"
    """Reported by a backend only: the infrastructure lost it. The monitor turns it into a
    retry (back to ``pending``) or into ``failed`` with the reason; it is never terminal."""


JOB_TERMINAL: frozenset[JobState] = frozenset(
    {
        JobState.FINISHED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.UPSTREAM_FAILED,
        JobState.SKIPPED,
    }
)

_ACTIVE = {JobState.PENDING, JobState.QUEUED, JobState.RUNNING, JobState.LOST}

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset(
        {
            JobState.QUEUED,
            JobState.RUNNING,
            JobState.FINISHED,  # memo reuse of an earlier identical job
            JobState.CANCELLED,
            JobState.FAILED,
            JobState.UPSTREAM_FAILED,
            JobState.SKIPPED,
        }
    ),
    JobState.QUEUED: frozenset(
        {
            JobState.RUNNING,
            JobState.FINISHED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.LOST,
            JobState.PENDING,  # requeued for a retry
            # the job's ``when=`` was false: its runner reports it skipped, whether or not the
            # start was recorded first (starts are recorded in batches)
            JobState.SKIPPED,
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.FINISHED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.LOST,
            JobState.PENDING,
            JobState.SKIPPED,  # the job's ``when=`` was false (as from queued)
        }
    ),
    JobState.LOST: frozenset({JobState.PENDING, JobState.FAILED, JobState.CANCELLED}),
    # retry of failed jobs, and release of a retried upstream's downstream jobs
    JobState.FAILED: frozenset({JobState.PENDING}),
    JobState.UPSTREAM_FAILED: frozenset({JobState.PENDING}),
    JobState.CANCELLED: frozenset(),
    JobState.FINISHED: frozenset(),
    JobState.SKIPPED: frozenset(),
}


SOURCES: dict[JobState, frozenset[JobState]] = {
    finish: frozenset(start for start, targets in ALLOWED.items() if finish in targets)
    for finish in JobState
}
"""The states a job may move to each state from (:data:`ALLOWED` read backwards)."""


class IllegalTransition(ValueError):
    """A job state move that :data:`ALLOWED` forbids; ``moves`` lists ``(job id or None,
    from state or None, to state)``: ``None`` for a job that does not exist."""

    def __init__(self, moves: Iterable[tuple[int | None, str | None, str]]) -> None:
        self.moves = list(moves)
        super().__init__(self.moves)

    def __str__(self) -> str:
        shown = [
            ("" if job is None else f"job {job} ")
            + (f"from {start} to {finish}" if start else f"to {finish}: no such job")
            for job, start, finish in self.moves[:10]
        ]
        more = f" and {len(self.moves) - 10} more" if len(self.moves) > 10 else ""
        return "job state cannot move " + "; ".join(shown) + more


def check_transition(start: JobState, finish: JobState) -> None:
    """Raise :class:`IllegalTransition` (a ``ValueError``) unless a job may move from
    ``start`` to ``finish``."""
    if finish not in ALLOWED[start]:
        raise IllegalTransition([(None, start.value, finish.value)])


class WorkState(StrEnum):
    """Where one work (one ``@work`` call, N jobs) is."""

    RUNNING = "running"
    """Some jobs are not terminal yet."""
    FINISHED = "finished"
    """Every job is terminal and enough succeeded (``min_success``)."""
    FAILED = "failed"
    """Every job is terminal and too few succeeded."""
    CANCELLED = "cancelled"
    """Cancelled before all jobs ended."""


WORK_TERMINAL: frozenset[WorkState] = frozenset(
    {WorkState.FINISHED, WorkState.FAILED, WorkState.CANCELLED}
)


class WorkflowState(StrEnum):
    """Where one workflow run is."""

    RUNNING = "running"
    """The workflow function is running."""
    FINISHED = "finished"
    """The workflow function returned; its return value is stored."""
    FAILED = "failed"
    """The workflow function raised, or its process died (the error says which)."""
    CANCELLED = "cancelled"
    """Cancelled by a user, or its embedded submitting process was killed (its open jobs were
    cancelled; the error says which)."""


WORKFLOW_TERMINAL: frozenset[WorkflowState] = frozenset(
    {WorkflowState.FINISHED, WorkflowState.FAILED, WorkflowState.CANCELLED}
)


def needed_successes(n_jobs: int, min_success: float) -> int:
    """How many jobs of ``n_jobs`` must finish for the work to succeed."""
    return min(n_jobs, math.ceil(min_success * n_jobs - 1e-9))


def work_state(
    n_jobs: int,
    n_finished: int,
    n_failed: int,
    n_cancelled: int,
    min_success: float,
    n_skipped: int = 0,
) -> WorkState:
    """Return the work's state from its counters (``RUNNING`` until every job is terminal).

    Skipped jobs (a false ``when=``) were meant not to run: they leave the denominator of
    ``min_success``. Jobs that never ran because an input failed count as failed.
    """
    if n_finished + n_failed + n_cancelled + n_skipped < n_jobs:
        return WorkState.RUNNING
    if n_finished >= needed_successes(n_jobs - n_skipped, min_success):
        return WorkState.FINISHED
    if n_cancelled and n_failed == 0:
        return WorkState.CANCELLED
    return WorkState.FAILED
