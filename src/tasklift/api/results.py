"""Handles on submitted works: ``AsyncResult`` (waiting), ``Work``, ``MapResult``, ``Progress``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasklift.bus.base import MissedMessages, work_destination
from tasklift.errors import (
    DatabaseUnavailable,
    JobFailure,
    JobSkipped,
    SubmissionError,
    WorkFailed,
    WorkTimeout,
    short_repr,
)
from tasklift.keys import job_key
from tasklift.records import ResultRecord
from tasklift.serializers import get_serializer
from tasklift.states import JobState, WorkState, needed_successes

if TYPE_CHECKING:
    from tasklift.engine.engine import Engine

__all__ = ["AsyncResult", "CompletedJob", "MapResult", "Progress", "Work", "WorkRef"]

logger = logging.getLogger(__name__)

REREAD_EVERY = 2.0
"""Seconds between safety re-reads of the DB while waiting (a missed message costs this)."""
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


class AsyncResult:
    """Collects a work's terminal jobs: reads what is persisted, then listens on the bus."""

    def __init__(self, engine: Engine, work_id: int, n_jobs: int, *, reread: bool = True) -> None:
        self.engine = engine
        self.work_id = work_id
        self.n_jobs = n_jobs
        self._cond = threading.Condition()
        self._records: dict[int, ResultRecord] = {}
        self._arrival: list[int] = []
        self._stale = False
        self._cursor = 0  # every done_seq up to here has been seen
        self._seqs: set[int] = set()
        self._waiting: list[int] = []  # counts the blocked waiters wait for
        self._sub = engine.bus.subscribe(work_destination(work_id), self._on_messages)
        self._last_read = time.monotonic()
        if reread:
            self._reread()

    def _add(self, record: ResultRecord) -> None:
        if record.done_seq:
            self._seqs.add(record.done_seq)
            while self._cursor + 1 in self._seqs:
                self._cursor += 1
                self._seqs.discard(self._cursor)
        if record.idx < 0:
            self._stale = True
        elif record.idx not in self._records:
            self._records[record.idx] = record
            self._arrival.append(record.idx)

    def _on_messages(self, messages: Sequence[Any]) -> None:
        with self._cond:
            for record in messages:
                if isinstance(record, MissedMessages):
                    self._stale = True  # the bus may have lost some: re-read
                else:
                    self._add(record)
            # wake a waiter only when it has what it waits for (or must re-read): a waiter
            # woken for every result of a big work would fight the publishing thread for the
            # GIL once per result
            if self._waiting and (self._stale or len(self._records) >= min(self._waiting)):
                self._cond.notify_all()

    def _reread(self) -> None:
        """Read what the DB has beyond the gap-free cursor (a missed message costs this)."""
        with self._cond:
            since = self._cursor
        try:
            records = self.engine.results(self.work_id, since)
        except DatabaseUnavailable as exc:  # keep waiting (up to the caller's timeout)
            logger.warning("waiting for work %d: %s; trying again", self.work_id, exc)
            with self._cond:  # the next try at the next periodic re-read, which reads it all
                self._last_read = time.monotonic()
                self._stale = False
            return
        with self._cond:
            for record in records:
                self._add(record)
            self._stale = False
            self._last_read = time.monotonic()
            self._cond.notify_all()

    @property
    def n_done(self) -> int:
        """How many jobs are terminal."""
        return len(self._records)

    def done(self) -> bool:
        """True when every job is terminal."""
        return len(self._records) >= self.n_jobs

    def wait_for(self, count: int, deadline: float | None) -> bool:
        """Wait until at least ``count`` jobs are terminal; False when the deadline passed."""
        while True:
            with self._cond:
                if len(self._records) >= count:
                    return True
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                due = self._last_read + REREAD_EVERY
                wait = due - now
                if deadline is not None:
                    wait = min(wait, deadline - now)
                if not self._stale and wait > 0:
                    self._waiting.append(count)
                    try:
                        self._cond.wait(wait)
                    finally:
                        self._waiting.remove(count)
                need_read = self._stale or time.monotonic() >= due
            if need_read:
                self._reread()

    def arrivals(self, start: int) -> list[ResultRecord]:
        """Records that arrived after the first ``start`` ones, in arrival order."""
        with self._cond:
            return [self._records[i] for i in self._arrival[start:]]

    def ordered(self) -> list[ResultRecord]:
        """All terminal records in submission order."""
        with self._cond:
            return [self._records[i] for i in sorted(self._records)]

    def close(self) -> None:
        """Stop listening."""
        self._sub.close()


class MapResult(Mapping[str, Any]):
    """Read-only mapping job key -> result, in submission order (successful jobs only).

    Iterating gives the job keys (of the merged kwargs). Looking up also accepts a
    ``group_kwargs`` element itself (``res[p]``) or its own id (``res[get_unique_id_for_dict(p)]``,
    which differs from the job key when the call adds kwargs): both find that element's job.

    Attributes:
        failures: :class:`~tasklift.errors.JobFailure` of every job that did not succeed.
        skipped: :class:`~tasklift.errors.JobFailure` of every job skipped by ``when=``.
        metrics: counts and timings of the work.
    """

    def __init__(
        self,
        values: dict[str, Any],
        failures: list[JobFailure],
        metrics: dict[str, Any],
        base_args: Sequence[Any],
        base_kwargs: Mapping[str, Any],
        *,
        keys: Sequence[str] | None = None,
        elements: Sequence[Any] | None = None,
        skipped: Sequence[JobFailure] = (),
    ) -> None:
        self._values = values
        self.failures = failures
        self.skipped = list(skipped)
        self.metrics = metrics
        self._base_args = list(base_args)
        self._base_kwargs = dict(base_kwargs)
        self._failed = {f.key: f for f in failures}
        self._skipped = {f.key: f for f in self.skipped}
        self._keys = keys
        self._elements = elements
        self._by_element_id: dict[str, str] | None = None

    def __getitem__(self, key: str | Mapping[str, Any]) -> Any:
        if isinstance(key, str):
            if key in self._values:
                return self._values[key]
            full = self._element_ids().get(key)
            if full is None:
                raise KeyError(key)
            return self._values[full]
        if isinstance(key, Mapping):
            return self._values[self.key_of(key)]
        raise KeyError(key)

    def _element_ids(self) -> dict[str, str]:
        """``{id of a group_kwargs element: its job key}`` (made at the first miss)."""
        if self._by_element_id is None:
            ids: dict[str, str] = {}
            if self._keys is not None and self._elements is not None:
                for key, element in zip(self._keys, self._elements, strict=False):
                    try:
                        own = (
                            job_key([], element)
                            if isinstance(element, Mapping)
                            else job_key(list(element), {})
                        )
                    except (SubmissionError, TypeError):
                        continue
                    ids.setdefault(own, key)
            self._by_element_id = ids
        return self._by_element_id

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"MapResult({len(self._values)} results, {len(self.failures)} failures)"

    def key_of(self, args: Mapping[str, Any] | Sequence[Any]) -> str:
        """The job key of a ``group_kwargs`` element (merged over the call's kwargs)."""
        if isinstance(args, Mapping):
            return job_key(self._base_args, {**self._base_kwargs, **args})
        return job_key(list(args), self._base_kwargs)

    def get_result(
        self,
        args: Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        key: str | None = None,
    ) -> Any:
        """Return the result of the job for ``args`` (a ``group_kwargs`` element) or ``key``.

        Raises:
            KeyError: no such job, or the job failed (the message gives its error).
        """
        looked_for = ""
        if key is None:
            if args is None:
                raise TypeError("get_result needs args= or key=")
            key = self.key_of(args)
            merged: Any = (
                {**self._base_kwargs, **args}
                if isinstance(args, Mapping)
                else {"args": list(args), "kwargs": self._base_kwargs}
            )
            looked_for = f" (looked for {short_repr(merged)})"
        elif key not in self._values and key not in self._failed and key not in self._skipped:
            key = self._element_ids().get(key, key)  # the id of an element as given
        if key in self._values:
            return self._values[key]
        failure = self._failed.get(key)
        if failure is not None:
            raise KeyError(f"job {key[:12]}{looked_for} did not succeed: {failure}")
        skipped = self._skipped.get(key)
        if skipped is not None:
            raise KeyError(f"job {key[:12]}{looked_for} was skipped: {skipped.message}")
        raise KeyError(f"no job with key {key[:12]} in this work{looked_for}")


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


class Work:
    """A submitted work: N jobs of one ``@work`` function. Returned with ``return_work=True``."""

    def __init__(
        self,
        *,
        engine: Engine,
        work_id: int,
        name: str,
        keys: Sequence[str],
        calls: Sequence[tuple[list[Any], dict[str, Any]]],
        base_args: Sequence[Any],
        base_kwargs: Mapping[str, Any],
        serializer: str,
        map_results: bool,
        min_success: float,
        n_reused: int = 0,
        show_progress: bool = False,
        subscribed_before_dispatch: bool = False,
        workflow_id: int | None = None,
        elements: Sequence[Any] | None = None,
    ) -> None:
        self.engine = engine
        self.work_id = work_id
        self.workflow_id = workflow_id
        self.name = name
        self.keys = keys
        self.calls = calls
        self._base_args = list(base_args)
        self._base_kwargs = dict(base_kwargs)
        self._elements = elements  # the group_kwargs as given (MapResult looks them up)
        self._serializer = get_serializer(serializer)
        self.map_results = map_results
        self.min_success = min_success
        self.n_reused = n_reused
        self.submitted_at = time.time()
        self._show_progress = show_progress
        # subscribed before any job was dispatched, nothing can have been missed unless jobs
        # were reused from an earlier run (those are in the DB only)
        self._async = AsyncResult(
            engine, work_id, len(keys), reread=not subscribed_before_dispatch or n_reused > 0
        )

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
        if self._show_progress and not self._async.done():
            from tasklift.api.progress import wait_with_progress

            ok = wait_with_progress(self, deadline)
        else:
            ok = self._wait_count(len(self.keys), deadline)
        if not ok:
            raise WorkTimeout(self.name, float(timeout or 0), self._async.n_done, len(self.keys))

    def _wait_count(self, count: int, deadline: float | None) -> bool:
        """Wait for ``count`` terminal jobs; raise when storing the work's jobs failed."""
        store_error = getattr(self.engine, "store_error", None)
        while True:
            step = time.monotonic() + STORE_CHECK_EVERY
            if self._async.wait_for(count, step if deadline is None else min(step, deadline)):
                return True
            failure = store_error(self.work_id) if store_error is not None else None
            if failure is not None:
                raise SubmissionError(f"work {self.name!r}: {failure}")
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def wait_stored(self, timeout: float | None = None) -> bool:
        """Wait until every job of this work is stored (a large work is stored in chunks
        while its first jobs run); False when ``timeout`` passed first."""
        wait = getattr(self.engine, "wait_stored", None)
        return True if wait is None else bool(wait(self.work_id, timeout))

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
                self._base_args,
                self._base_kwargs,
                keys=self.keys,
                elements=self._elements,
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
