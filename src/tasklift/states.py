"""Job, work and workflow states, the terminal sets, and the one table of allowed moves."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ALLOWED",
    "JOB_TERMINAL",
    "WORKFLOW_TERMINAL",
    "WORK_TERMINAL",
    "JobState",
    "WorkState",
    "WorkflowState",
    "check_transition",
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
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.FINISHED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.LOST,
            JobState.PENDING,
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


def check_transition(start: JobState, finish: JobState) -> None:
    """Raise ``ValueError`` unless a job may move from ``start`` to ``finish``."""
    if finish not in ALLOWED[start]:
        raise ValueError(f"job state cannot move from {start.value} to {finish.value}")


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
