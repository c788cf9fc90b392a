"""The backend interface: turn batches of jobs of one work into running job runners.

Call sequence::

    backend.start(sink)                 # once; sink receives outcomes and lost jobs
    handles = backend.submit(work, jobs)   # a batch of JobSpecs of one work -> one handle each
    backend.poll(handles)              # {handle: JobState} for the monitor
    backend.cancel(handles)            # stop queued and running jobs
    backend.close()

Results never travel back through ``submit``: job runners report them to the sink (the local
backend's pipe reader, or the service API for remote runners), which writes the DB first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Protocol

from tasklift.records import JobSpec, Outcome, WorkSpec
from tasklift.states import JobState

__all__ = ["Backend", "OutcomeSink"]


class OutcomeSink(Protocol):
    """Where a backend reports what happened to jobs (the engine)."""

    def record_outcomes(self, outcomes: list[Outcome]) -> None:
        """Store outcomes of finished attempts (successes and failures)."""
        ...

    def requeue(self, jobs: list[tuple[int, int]]) -> None:
        """Put ``(job_id, attempt)`` back in the queue without charging an attempt."""
        ...

    def capacity_changed(self) -> None:
        """Tell the engine the backend can take more jobs."""
        ...

    def jobs_started(self, jobs: list[tuple[int, int]]) -> None:
        """``(job_id, attempt)`` pairs a job runner has started (recorded ``running`` in
        batches; a job that ends before the next batch goes straight to its end state)."""
        ...


class Backend(ABC):
    """Runs jobs somewhere and reports their states."""

    name: ClassVar[str] = "backend"
    handles_outlive_engine: ClassVar[bool] = True
    """Handles name jobs that survive an engine restart (stored at dispatch)."""
    runs_remotely: ClassVar[bool] = False
    """Job runners live outside the engine's process and report over the job API: the engine
    fills every ``JobSpec.token`` and sets ``WorkSpec.service_url`` to the job API's URL, and
    its monitor polls the handles (lost jobs), heartbeats and timeouts."""

    def start(self, sink: OutcomeSink) -> None:  # noqa: B027 - optional hook
        """Start the backend; outcomes and lost jobs go to ``sink``."""

    @abstractmethod
    def submit(self, work: WorkSpec, jobs: Sequence[JobSpec]) -> list[str]:
        """Start ``jobs`` of ``work``; return one opaque handle per job.

        Raises:
            BackendError: the jobs could not be handed over (nothing was started).
        """

    @abstractmethod
    def poll(self, handles: Sequence[str]) -> dict[str, JobState]:
        """Return the state of each handle (``LOST`` when the backend lost it)."""

    @abstractmethod
    def cancel(self, handles: Sequence[str]) -> None:
        """Stop the jobs behind ``handles``, queued or running."""

    def lost_reason(self, handle: str) -> str | None:
        """A one-line reason for a handle ``poll`` reported ``LOST`` (``None``: unknown)."""
        return None

    def free_slots(self, work: WorkSpec) -> int:
        """How many more jobs of ``work`` the backend wants now (own queue: many)."""
        return 1 << 30

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop everything and release resources."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
