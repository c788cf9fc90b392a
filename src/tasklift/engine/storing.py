"""Storing a large work in chunks: the first chunk runs at once, a thread of its own stores
the rest in transactions that double in size. Part of :class:`tasklift.engine.core.Engine`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from tasklift.bus.base import work_destination
from tasklift.db import queries as q
from tasklift.engine.state import state_of
from tasklift.states import WORK_TERMINAL, JobState, WorkState

__all__ = ["STORE_CHUNK", "STORE_CHUNK_MAX", "ChunkedStoreMixin"]

logger = logging.getLogger(__name__)

STORE_CHUNK = 10_000
STORE_CHUNK_MAX = 80_000
"""A larger work is stored in chunks: a first transaction of ``STORE_CHUNK`` jobs, which start
running at once (a million-job work's first result comes in about a second, not after the whole
insert), then transactions twice as large each time up to ``STORE_CHUNK_MAX`` (each commit
rewrites every index page it touched: large chunks store a million jobs 2x faster on SQLite)."""


class ChunkedStoreMixin:
    """Methods of :class:`~tasklift.engine.core.Engine` (which owns ``_live``, ``_writer``,
    ``_store_errors`` ...) for works of more than ``IN_MEMORY_JOBS`` jobs."""

    def store_error(self, work_id: int) -> str | None:
        """Why storing a large work's jobs stopped short (``None``: it did not)."""
        with self._lock:
            return self._store_errors.get(work_id)

    def wait_stored(self, work_id: int, timeout: float | None = None) -> bool:
        """Wait until every job of a work is stored (large works are stored in chunks while
        they run); False when ``timeout`` passed first."""
        with self._lock:
            live = self._live.get(work_id)
            done = None if live is None else live.store_done
        return done is None or done.wait(timeout)

    def _store_rest(
        self,
        work_id: int,
        jobs: Sequence[tuple[str, bytes]],
        start: int,
        memo_key: str,
        reuse: bool,
        min_success: float,
        done: threading.Event,
    ) -> None:
        """Store the jobs of a large work after its first chunk, one transaction per chunk,
        while the stored ones run. Memo hits end at once (published like results). A failure
        (e.g. two jobs with the same arguments further down) cancels the work with its reason.
        """
        try:
            self._store_chunks(work_id, jobs, start, memo_key, reuse, min_success)
        except Exception as exc:  # the waiting caller gets it from store_error()
            logger.exception("work %d: storing its jobs failed", work_id)
            message = f"storing the work's jobs failed: {exc}"
            with self._lock:
                self._store_errors[work_id] = message
            self.cancel_work(work_id, message)
        finally:
            done.set()

    def _store_chunks(
        self,
        work_id: int,
        jobs: Sequence[tuple[str, bytes]],
        start: int,
        memo_key: str,
        reuse: bool,
        min_success: float,
    ) -> None:
        n_jobs = len(jobs)
        begin, size = start, STORE_CHUNK
        while begin < n_jobs:
            size = min(2 * size, STORE_CHUNK_MAX)
            end = min(n_jobs, begin + size)
            with self._lock:
                if self._closed:
                    return
                if work_id not in self._live:  # cancelled: the rest of its jobs never exist
                    self._store_errors[work_id] = (
                        f"cancelled with {begin} of its {n_jobs} jobs stored"
                    )
                    return
            chunk = jobs[begin:end]  # a lazy sequence computes keys and payloads here
            records = self._store_chunk(work_id, chunk, begin, memo_key, reuse, min_success)
            with self._lock:
                live = self._live.get(work_id)
                if live is not None:
                    live.stored = None if end == n_jobs else end
                    live.finished += len(records)
                    if live.finished + live.failed + live.cancelled >= live.n_jobs:
                        self._live.pop(work_id, None)
                    self._dispatch()
            if records:
                self._announce(work_destination(work_id), records)
            begin = end

    def _store_chunk(
        self,
        work_id: int,
        chunk: Sequence[tuple[str, bytes]],
        begin: int,
        memo_key: str,
        reuse: bool,
        min_success: float,
    ) -> list[q.ResultRecord]:
        """Store jobs ``begin..`` of a work in one transaction; return its memo hits, ended."""
        with self._submit_lock, self._writer.begin() as conn:
            memo = q.find_memo(conn, memo_key, [k for k, _ in chunk]) if reuse else {}
            hits = {begin + i for i, (k, _) in enumerate(chunk) if k in memo}
            job_ids = q.insert_jobs(conn, work_id, chunk, first=begin, skip=hits)
            if not hits:
                return []
            reused = [
                (job_id, *memo[chunk[i][0]])
                for i, job_id in enumerate(job_ids)
                if begin + i in hits
            ]
            idx_of = {job_id: begin + i for i, job_id in enumerate(job_ids)}
            counts = q.bump_work_counters(
                conn, work_id, len(reused), 0, 0, done_status=WorkState.FINISHED.value
            )
            seq = counts.last_seq - len(reused) + 1
            q.mark_reused(conn, reused, first_seq=seq)
            q.add_reused(conn, work_id, len(reused))
            state = state_of(counts, min_success)
            if state in WORK_TERMINAL and state != WorkState.FINISHED:
                q.set_work_status(conn, work_id, state.value, finished=True)
        finished = JobState.FINISHED.value
        return [
            q.ResultRecord(job_id, idx_of[job_id], finished, result, done_seq=seq + i)
            for i, (job_id, _, result) in enumerate(reused)
        ]
