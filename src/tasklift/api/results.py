"""Handles on submitted works: ``Work`` (with ``Progress``, ``CompletedJob`` and ``WorkRef``,
a work's results as another work's input). Waiting is :mod:`tasklift.api.waiting`
(``AsyncResult``), the mapping of results :mod:`tasklift.api.map_result` (``MapResult``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any

from tasklift.api.map_result import MapResult
from tasklift.api.waiting import AsyncResult
from tasklift.errors import (
    JobFailure,
    JobSkipped,
    SubmissionError,
    WorkFailed,
    WorkTimeout,
    short_repr,
)
from tasklift.records import ResultRecord
from tasklift.serializers import get_serializer
from tasklift.states import JobState, WorkState, needed_successes

if TYPE_CHECKING:
    from tasklift.api.client import EngineClient

__all__ = ["CompletedJob", "Progress", "Work", "WorkRef"]

STORE_CHECK_EVERY = 1.0
"""Seconds between checks, while waiting for a work, that storing its jobs did not fail."""


@dataclass(frozen=True)
class Progress:
    """Counts of a work's jobs."""

    total: int
    finished: int
    failed: int
    cancelled: int
    running: int

    @property
    def done(self) -> int:
        """Jobs in a terminal state."""
        return self.finished + self.failed + self.cancelled


@dataclass(frozen=True, eq=False)
class CompletedJob:
    """A successful job as :meth:`Work.as_completed` yields it (like a done Dask future).

    Unpacks as ``(kwargs, value)``: ``for kwargs, value in work.as_completed(): ...``.

    Attributes:
        index: the job's position in the work (its ``group_kwargs`` element).
        key: the job key.
        args: positional arguments of the job ([] for keyword-only jobs).
        kwargs: the job's merged kwargs.
        value: the job's result.
    """

    index: int
    key: str
    args: list[Any]
    kwargs: dict[str, Any]
    value: Any

    def result(self) -> Any:
        """The job's result (as ``value``; the name Dask and ``concurrent.futures`` use)."""
        return self.value

    def __iter__(self) -> Iterator[Any]:
        return iter((self.kwargs, self.value))

    def __repr__(self) -> str:
        return f"CompletedJob(index={self.index}, kwargs={short_repr(self.kwargs)})"


@dataclass(frozen=True)
class WorkRef:
    """A work's result(s) passed as an argument of another work (a data dependency)."""

    work: Work
    mode: str  # each | all | job
    index: int | None

    def __repr__(self) -> str:
        what = f"job({self.index})" if self.mode == "job" else f"{self.mode}()"
        return f"<{self.work.name}.{what}>"


@dataclass(eq=False, repr=False, kw_only=True)
class Work:
    """A submitted work: N jobs of one ``@work`` function. Returned with ``return_work=True``."""

    engine: EngineClient
    work_id: int
    name: str
    keys: Sequence[str]
    calls: Sequence[tuple[list[Any], dict[str, Any]]]
    base_args: Sequence[Any]
    base_kwargs: Mapping[str, Any]
    serializer: InitVar[str]
    map_results: bool
    min_success: float
    n_reused: int = 0
    show_progress: bool = False
    subscribed_before_dispatch: InitVar[bool] = False
    workflow_id: int | None = None
    elements: Sequence[Any] | None = None
    """The group_kwargs as given (MapResult looks them up)."""
    submitted_at: float = field(default_factory=time.time, init=False)

    def __post_init__(self, serializer: str, subscribed_before_dispatch: bool) -> None:
        self.base_args = list(self.base_args)
        self.base_kwargs = dict(self.base_kwargs)
        self._serializer = get_serializer(serializer)
        # subscribed before any job was dispatched, nothing can have been missed unless jobs
        # were reused from an earlier run (those are in the DB only)
        reread = not subscribed_before_dispatch or self.n_reused > 0
        self._async = AsyncResult(self.engine, self.work_id, len(self.keys), reread=reread)

    def __repr__(self) -> str:
        return f"<Work {self.name!r} id={self.work_id} jobs={len(self.keys)}>"

    def each(self) -> WorkRef:
        """As an argument of another work: its job i takes this work's job i's result."""
        return WorkRef(self, "each", None)

    def all(self) -> WorkRef:
        """As an argument: the list of all this work's results, in submission order."""
        return WorkRef(self, "all", None)

    def job(self, index: int) -> WorkRef:
        """As an argument: the result of this work's job ``index``."""
        if not -len(self.keys) <= index < len(self.keys):
            raise IndexError(f"work {self.name!r} has {len(self.keys)} jobs, no job {index}")
        return WorkRef(self, "job", index % len(self.keys))

    def __getitem__(self, index: int) -> WorkRef:
        return self.job(index)

    def __len__(self) -> int:
        return len(self.keys)

    def submit(self) -> Work:
        """Return this work; it was submitted when it was created (idempotent)."""
        return self

    @property
    def status(self) -> WorkState:
        """The work's state as stored."""
        return WorkState(self.engine.work_row(self.work_id)["status"])

    @property
    def progress(self) -> Progress:
        """Counts of finished, failed, cancelled and running jobs."""
        row = self.engine.work_row(self.work_id)
        return Progress(
            total=row["n_jobs"],
            finished=row["n_finished"],
            failed=row["n_failed"],
            cancelled=row["n_cancelled"],
            running=self.engine.running_count(self.work_id),
        )

    def cancel(self) -> int:
        """Cancel queued and running jobs; return how many were cancelled."""
        return self.engine.cancel_work(self.work_id)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every job is terminal.

        Raises:
            WorkTimeout: ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.show_progress and not self._async.done():
            from tasklift.api.progress import wait_with_progress

            ok = wait_with_progress(
                self.name, self._async, lambda: self.engine.running_count(self.work_id), deadline
            )
        else:
            ok = self._wait_count(len(self.keys), deadline)
        if not ok:
            raise WorkTimeout(self.name, float(timeout or 0), self._async.n_done, len(self.keys))

    def _wait_count(self, count: int, deadline: float | None) -> bool:
        """Wait for ``count`` terminal jobs; raise when storing the work's jobs failed."""
        while True:
            step = time.monotonic() + STORE_CHECK_EVERY
            if self._async.wait_for(count, step if deadline is None else min(step, deadline)):
                return True
            failure = self.engine.store_error(self.work_id)
            if failure is not None:
                raise SubmissionError(f"work {self.name!r}: {failure}")
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def wait_stored(self, timeout: float | None = None) -> bool:
        """Wait until every job of this work is stored (a large work is stored in chunks
        while its first jobs run); False when ``timeout`` passed first."""
        return self.engine.wait_stored(self.work_id, timeout)

    def as_completed(self, timeout: float | None = None) -> Iterator[CompletedJob]:
        """Yield a :class:`CompletedJob` per successful job as jobs finish (arrival order):
        ``for kwargs, value in work.as_completed(): ...``, or ``job.index``, ``job.key``,
        ``job.result()``. Failed and skipped jobs are collected, not yielded.

        Raises:
            WorkTimeout: ``timeout`` seconds (for the whole iteration) passed first.
            WorkFailed: at the end, when fewer jobs succeeded than ``min_success`` requires.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while seen < len(self.keys):
            if not self._wait_count(seen + 1, deadline):
                raise WorkTimeout(self.name, float(timeout or 0), seen, len(self.keys))
            for record in self._async.arrivals(seen):
                seen += 1
                if record.state == JobState.FINISHED.value:
                    args, kwargs = self.calls[record.idx]
                    yield CompletedJob(
                        record.idx, self.keys[record.idx], args, kwargs, self._decode(record)
                    )
        self._check()

    def results(self, timeout: float | None = None) -> Any:
        """Wait, then return a :class:`MapResult` (``map_results``) or a list in submission order.

        In the list, a job that did not succeed holds its :class:`JobFailure`.

        Raises:
            WorkTimeout: ``timeout`` seconds passed first.
            WorkFailed: fewer jobs succeeded than ``min_success`` requires.
        """
        self.wait(timeout)
        records = self._check()
        if self.map_results:
            values = {
                self.keys[r.idx]: self._decode(r)
                for r in records
                if r.state == JobState.FINISHED.value
            }
            return MapResult(
                values,
                self.failures,
                self.metrics,
                self.base_args,
                self.base_kwargs,
                keys=self.keys,
                elements=self.elements,
                skipped=[self._failure(r) for r in records if r.state == JobState.SKIPPED.value],
            )
        return [
            self._decode(r) if r.state == JobState.FINISHED.value else self._failure(r)
            for r in records
        ]

    def result(self, timeout: float | None = None) -> Any:
        """The single result of a one-job work.

        Raises:
            JobSkipped: the job was skipped (its ``when=`` was false, or an input was skipped).
            WorkFailed: the job did not succeed.
        """
        if len(self.keys) != 1:
            raise ValueError(f"work {self.name!r} has {len(self.keys)} jobs; use results()")
        self.wait(timeout)
        self._check()
        record = self._async.ordered()[0]
        if record.state == JobState.SKIPPED.value:
            raise JobSkipped(self.name, self._failure(record))
        return self._decode(record)

    @property
    def failures(self) -> list[JobFailure]:
        """Jobs that ended without success so far (skipped ones excluded), in order."""
        done = (JobState.FINISHED.value, JobState.SKIPPED.value)
        return [self._failure(r) for r in self._async.ordered() if r.state not in done]

    @property
    def metrics(self) -> dict[str, Any]:
        """Counts and wall time of the work so far."""
        records = self._async.ordered()
        succeeded = sum(r.state == JobState.FINISHED.value for r in records)
        return {
            "n_jobs": len(self.keys),
            "n_succeeded": succeeded,
            "n_failed": len(records) - succeeded,
            "n_reused": self.n_reused,
            "attempts": sum(r.attempts for r in records),
            "wall_seconds": time.time() - self.submitted_at,
        }

    def _check(self) -> list[ResultRecord]:
        records = self._async.ordered()
        succeeded = sum(r.state == JobState.FINISHED.value for r in records)
        skipped = sum(r.state == JobState.SKIPPED.value for r in records)
        # skipped jobs (a false when=) were meant not to run: not failures
        if len(records) == len(self.keys) and succeeded < needed_successes(
            len(self.keys) - skipped, self.min_success
        ):
            raise WorkFailed(self.name, self.failures, len(self.keys), succeeded, self.min_success)
        return records

    def _decode(self, record: ResultRecord) -> Any:
        if record.result is None:
            raise RuntimeError(f"job {record.job_id} finished without a stored result")
        return self._serializer.loads(record.result)

    def _failure(self, record: ResultRecord) -> JobFailure:
        args, kwargs = self.calls[record.idx]
        # a data-flow input is stored as a marker: say what it stands for
        args = [_readable_input(a) for a in args]
        kwargs = {name: _readable_input(value) for name, value in kwargs.items()}
        return JobFailure(
            key=self.keys[record.idx],
            kwargs=kwargs if not args else {"args": args, "kwargs": kwargs},
            error_type=record.error_type or record.state,
            message=record.error_message or "",
            traceback=record.traceback or "",
            attempts=record.attempts,
            state=record.state,
            job_id=record.job_id,
        )

    def close(self) -> None:
        """Stop listening for results."""
        self._async.close()


def _readable_input(value: Any) -> Any:
    """A data-flow input marker (``{"__tasklift_ref__": True}``) as ``"<from upstream>"``."""
    if isinstance(value, dict) and set(value) == {"__tasklift_ref__"}:
        return "<from upstream>"
    return value
