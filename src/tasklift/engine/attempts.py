"""The attempts the engine has handed to backends and not yet heard back from: one record per
active job (its work, attempt number, payload, backend handle, and for remote runners the
dispatch time and last heartbeat), and the starts reported by runners, recorded ``running``
in batches.

Changed only on the engine's loop thread (:mod:`tasklift.engine.loop`); other threads read single
entries (``get``) or a snapshot (``snapshot``), which the GIL keeps consistent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["Attempt", "Attempts"]


@dataclass(slots=True)
class Attempt:
    """One attempt of one job, handed to a backend.

    Attributes:
        job_id: the job.
        work_id: its work.
        number: the attempt number (1 for the first run).
        payload: the job's serialized arguments (kept for a retry).
        handle: the backend's handle (``None`` until ``submit`` returned it).
        backend: the backend's name.
        remote: the runner reports over the job API (monitored: heartbeats, timeouts, polls).
        timeout: the work's per-attempt timeout (remote runners: the monitor enforces it).
        dispatched_at: when it was handed over (epoch seconds; 0 for an adopted attempt).
        heartbeat: the last heartbeat its remote runner sent (epoch seconds), if any.
    """

    job_id: int
    work_id: int
    number: int
    payload: bytes
    handle: str | None = None
    backend: str = "local"
    remote: bool = False
    timeout: float | None = None
    dispatched_at: float = 0.0
    heartbeat: float | None = None


class Attempts:
    """The active attempts by job id, and the starts not yet recorded."""

    def __init__(self) -> None:
        self._by_job: dict[int, Attempt] = {}
        self._started: dict[int, int] = {}  # job -> attempt a runner said it started

    def __len__(self) -> int:
        return len(self._by_job)

    def __iter__(self) -> Iterator[Attempt]:
        return iter(list(self._by_job.values()))

    def add(self, attempt: Attempt) -> None:
        """Note an attempt handed to a backend (loop thread)."""
        self._by_job[attempt.job_id] = attempt

    def get(self, job_id: int) -> Attempt | None:
        """The active attempt of a job (any thread)."""
        return self._by_job.get(job_id)

    def current(self, job_id: int, number: int) -> Attempt | None:
        """The attempt when it is still the active one (not stale, not a duplicate)."""
        attempt = self._by_job.get(job_id)
        return attempt if attempt is not None and attempt.number == number else None

    def take(self, job_id: int, number: int) -> Attempt | None:
        """Remove and return the active attempt ``number`` of a job (loop thread)."""
        attempt = self.current(job_id, number)
        if attempt is not None:
            del self._by_job[job_id]
            self._started.pop(job_id, None)
        return attempt

    def take_work(self, work_id: int) -> list[Attempt]:
        """Remove and return every active attempt of a work (loop thread)."""
        taken = [a for a in list(self._by_job.values()) if a.work_id == work_id]
        for attempt in taken:
            del self._by_job[attempt.job_id]
            self._started.pop(attempt.job_id, None)
        return taken

    def snapshot(self) -> list[Attempt]:
        """A copy of the active attempts (any thread)."""
        return list(self._by_job.values())

    def of_work(self, work_id: int) -> int:
        """How many attempts of a work are active (any thread)."""
        return sum(1 for a in list(self._by_job.values()) if a.work_id == work_id)

    def note_started(self, job_id: int, number: int) -> None:
        """A runner started this attempt (loop thread); recorded by :meth:`starts_to_record`."""
        if self.current(job_id, number) is not None:
            self._started[job_id] = number

    def starts_to_record(self) -> list[tuple[int, int]]:
        """The started attempts still active, taken from the notes (loop thread)."""
        started, self._started = self._started, {}
        return [(j, n) for j, n in started.items() if self.current(j, n) is not None]

    def remote(self) -> list[Attempt]:
        """The active attempts of remote runners (any thread)."""
        return [a for a in list(self._by_job.values()) if a.remote]

    def heartbeats(self, job_ids: Iterable[int]) -> dict[int, float]:
        """The last heartbeat of each job's runner, where one was heard (any thread)."""
        found = {}
        for job_id in job_ids:
            attempt = self._by_job.get(job_id)
            if attempt is not None and attempt.heartbeat is not None:
                found[job_id] = attempt.heartbeat
        return found

    def beat(self, job_id: int) -> float:
        """A remote runner of ``job_id`` is alive now (any thread)."""
        now = time.time()
        attempt = self._by_job.get(job_id)
        if attempt is not None:
            attempt.heartbeat = now
        return now
