"""The engine's pure decision: what an attempt's outcome does to its job (finished, skipped,
retried or failed). A work's state from its counters is :func:`tasklift.states.work_state`."""

from __future__ import annotations

from dataclasses import dataclass

from tasklift.records import Outcome
from tasklift.states import JobState

__all__ = ["Decision", "decide"]


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
