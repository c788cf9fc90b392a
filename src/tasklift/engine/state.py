"""Pure decisions of the engine: what an outcome does to a job, and when a work is done."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasklift.records import Outcome
from tasklift.states import JobState, WorkState

if TYPE_CHECKING:
    from tasklift.db.queries import WorkCounts

__all__ = ["Decision", "decide", "needed_successes", "state_of", "work_state"]


@dataclass(frozen=True)
class Decision:
    """The next state of a job after an outcome, and whether it runs again."""

    state: JobState
    retry: bool


def decide(outcome: Outcome, attempts: int, retries: int) -> Decision:
    """Decide what ``outcome`` of attempt number ``attempts`` does to its job.

    A success finishes the job. A failure is retried while ``attempts <= retries`` and the
    failure is retryable; otherwise the job fails.
    """
    if outcome.ok:
        return Decision(JobState.FINISHED, retry=False)
    if outcome.skipped:
        return Decision(JobState.SKIPPED, retry=False)
    if outcome.retryable and attempts <= retries:
        return Decision(JobState.PENDING, retry=True)
    return Decision(JobState.FAILED, retry=False)


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


def state_of(counts: WorkCounts, min_success: float) -> WorkState:
    """:func:`work_state` from a work's stored counters (as the counter updates return them)."""
    return work_state(
        counts.n_jobs,
        counts.n_finished,
        counts.n_failed,
        counts.n_cancelled,
        min_success,
        counts.n_skipped,
    )
