"""The monitor: nobody waits forever for a job whose runner is gone.

For jobs of backends whose runners live elsewhere (``Backend.runs_remotely``: Dask, Slurm), it
checks every ``settings.monitor_interval`` seconds:

- what the backend says (``poll``): a job the backend lost (worker killed, node failure, time
  limit, preemption), or whose runner ended without reporting, becomes a ``JobLost`` failure;
- heartbeats: a started job silent for ``settings.heartbeat_timeout`` seconds is lost;
- per-job timeouts: a job running longer than its work's ``timeout`` is cancelled on the
  backend and fails with ``Timeout`` (the local backend's workers enforce theirs themselves).

Each becomes an ordinary outcome through :meth:`Engine.record_outcomes`: stored, retried while
attempts remain, else published as the job's failure with the reason in its message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Engine as DBEngine
from sqlalchemy import select

from tasklift.backends.base import Backend
from tasklift.db import tables
from tasklift.engine.attempts import Attempt
from tasklift.errors import BackendError
from tasklift.records import Outcome
from tasklift.states import JobState

__all__ = ["Monitor", "Monitored"]

logger = logging.getLogger(__name__)

TIMEOUT_GRACE = 1.0
"""Seconds past a job's timeout before the monitor cancels it (the runner may be reporting)."""
QUERY_CHUNK = 500


class Monitored(Protocol):
    """What the monitor needs of its engine."""

    db: DBEngine

    def remote_jobs(self) -> list[Attempt]:
        """Attempts handed to remote backends and not yet reported."""
        ...

    def last_heartbeats(self, job_ids: Sequence[int]) -> dict[int, float]:
        """The last heartbeat heard from each job's runner (if any)."""
        ...

    def backend(self, name: str) -> Backend:
        """The started backend called ``name``."""
        ...

    def record_outcomes(self, outcomes: list[Outcome]) -> None:
        """Store outcomes of attempts."""
        ...


@dataclass(eq=False, repr=False)
class Monitor:
    """Watches the remote jobs of one engine from a background thread."""

    engine: Monitored
    interval: float
    heartbeat_timeout: float
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _started: dict[tuple[int, int], float] = field(default_factory=dict, init=False)
    """First heartbeat seen."""
    _ended_at: dict[tuple[int, int], float] = field(default_factory=dict, init=False)
    """Backend says ended, no outcome yet."""
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def start(self) -> None:
        """Start watching (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="tasklift-monitor", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_once()
            except Exception:  # keep watching; the next round tries again
                logger.exception("the monitor's check failed")

    def check_once(self, now: float | None = None) -> list[Outcome]:
        """One round: find lost, silent and timed-out jobs and record their failures."""
        jobs = self.engine.remote_jobs()
        keys = {(j.job_id, j.number) for j in jobs}
        for table in (self._started, self._ended_at):
            for key in [k for k in table if k not in keys]:
                del table[key]
        if not jobs:
            return []
        now = time.time() if now is None else now
        ids = [j.job_id for j in jobs]
        beats = self.engine.last_heartbeats(ids)
        unheard = [j for j in ids if j not in beats]  # e.g. adopted after a restart
        if unheard:
            beats.update(self._heartbeats(unheard))
        failures: list[Outcome] = []
        to_cancel: dict[str, list[str]] = defaultdict(list)
        by_backend: dict[str, list[Attempt]] = defaultdict(list)
        for job in jobs:
            by_backend[job.backend].append(job)
        for name, group in by_backend.items():
            states = self._poll(name, group)
            for job in group:
                failure = self._verdict(job, name, states.get(job.handle or ""), beats, now)
                if failure is not None:
                    failures.append(failure[0])
                    if failure[1]:  # if it still runs somewhere, stop it
                        to_cancel[name].append(job.handle or "")
        for name, handles in to_cancel.items():
            try:
                self.engine.backend(name).cancel(handles)
            except BackendError as exc:
                logger.error("monitor: the %s backend could not cancel %s: %s", name, handles, exc)
        if failures:
            for failure in failures:
                logger.warning(
                    "job %d attempt %d: %s: %s",
                    failure.job_id,
                    failure.attempt,
                    failure.error_type,
                    failure.error_message,
                )
            self.engine.record_outcomes(failures)
        return failures

    def _verdict(
        self,
        job: Attempt,
        name: str,
        state: JobState | None,
        beats: dict[int, float],
        now: float,
    ) -> tuple[Outcome, bool] | None:
        """A job's failure (and whether to cancel it on the backend), or ``None``: it is fine."""
        key = (job.job_id, job.number)
        beat = beats.get(job.job_id)
        if beat is not None and beat > job.dispatched_at:  # this attempt's, not older
            self._started.setdefault(key, beat)
        started = self._started.get(key)
        why: tuple[str, str] | None = None
        cancel = False
        if state == JobState.LOST:
            reason = self._reason(name, job.handle or "") or f"the {name} backend lost the job"
            why = ("JobLost", reason)
        elif state in (JobState.FINISHED, JobState.FAILED):
            first = self._ended_at.setdefault(key, now)
            if now - first > self.heartbeat_timeout:
                why = (
                    "JobLost",
                    f"the job runner ended ({state.value} on {name}) without reporting "
                    f"an outcome within {self.heartbeat_timeout:g} s",
                )
        elif started is not None and beat is not None and now - beat > self.heartbeat_timeout:
            why = (
                "JobLost",
                f"no heartbeat for {now - beat:.0f} s (heartbeat timeout "
                f"{self.heartbeat_timeout:g} s): the job runner or its node died",
            )
            cancel = True
        if (
            why is None
            and job.timeout is not None
            and started is not None
            and now - started > job.timeout + TIMEOUT_GRACE
        ):
            why = (
                "Timeout",
                f"job exceeded its timeout of {job.timeout:g} s; the monitor cancelled it",
            )
            cancel = True
        if why is None:
            return None
        failure = Outcome.failure(
            job.job_id,
            job.number,
            why[0],
            why[1],
            started_at=started or job.dispatched_at,
            finished_at=now,
        )
        return failure, cancel

    def _poll(self, name: str, jobs: list[Attempt]) -> dict[str, JobState]:
        try:
            return self.engine.backend(name).poll([j.handle for j in jobs if j.handle])
        except BackendError as exc:
            logger.warning("monitor: cannot poll the %s backend: %s", name, exc)
            return {}

    def _reason(self, name: str, handle: str) -> str | None:
        try:
            return self.engine.backend(name).lost_reason(handle)
        except BackendError as exc:
            return f"the {name} backend lost the job ({exc})"

    def _heartbeats(self, job_ids: list[int]) -> dict[int, float]:
        beats: dict[int, float] = {}
        with self.engine.db.connect() as conn:
            for i in range(0, len(job_ids), QUERY_CHUNK):
                chunk = job_ids[i : i + QUERY_CHUNK]
                rows = conn.execute(
                    select(tables.jobs.c.id, tables.jobs.c.heartbeat_at).where(
                        tables.jobs.c.id.in_(chunk), tables.jobs.c.heartbeat_at.is_not(None)
                    )
                )
                beats.update({int(r[0]): float(r[1]) for r in rows})
        return beats
