"""Storing a large work in chunks: the first chunk runs at once, a thread of its own stores
the rest (SQLite: transactions that double in size; PostgreSQL: paced to stay a little ahead of
dispatch). Part of :class:`tasklift.engine.core.Engine`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from tasklift.bus.base import work_destination
from tasklift.db import queries as q
from tasklift.engine.state import state_of
from tasklift.states import WORK_TERMINAL, JobState, WorkState

__all__ = ["STORE_AHEAD", "STORE_CHUNK", "STORE_CHUNK_MAX", "ChunkedStoreMixin"]

logger = logging.getLogger(__name__)

STORE_CHUNK = 10_000
STORE_CHUNK_MAX = 80_000
"""A larger work is stored in chunks: a first transaction of ``STORE_CHUNK`` jobs, which start
running at once (a million-job work's first result comes in about a second, not after the whole
insert), then transactions twice as large each time up to ``STORE_CHUNK_MAX`` (each commit
rewrites every index page it touched: large chunks store a million jobs 2x faster on SQLite)."""
STORE_AHEAD = 2 * STORE_CHUNK
"""PostgreSQL: the store thread keeps at most this many stored jobs ahead of the ones dispatch
has taken (paged into memory), in chunks of ``STORE_CHUNK // 2``; before each chunk it waits,
polling every ``STORE_POLL`` s, until dispatch has come that close. Storing a job costs the
database about as much CPU as running a no-op one (five indexes on ``jobs``, one in random key
order): stored at once, a 200,000-job work's rows took a core of PostgreSQL's for its first
seconds and dispatch ran at 60 % of its rate meanwhile (issue 17 item 6,
``bench/queue_depth.py``); paced in small chunks, the same cost is spread evenly over the run
(large chunks would still be bursts). On SQLite the writer is one connection taken in turns
and large chunks are cheaper: the whole work is stored at once, in growing chunks, as before."""
STORE_POLL = 0.02


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
            with self._lock:
                closed = self._closed
            if not closed:  # stored, failed or cancelled: nobody stores this work any more
                # (an engine that closed mid-store keeps its claim: restarted, it ends the work)
                self._release_store(work_id)
            done.set()

    def _release_store(self, work_id: int) -> None:
        try:
            with self._submit_lock, self._writer.begin() as conn:
                q.set_storing_by(conn, work_id, None)
        except Exception:  # the work has ended anyway; a restarted engine ends it again
            logger.exception("work %d: clearing its storing engine failed", work_id)

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
        paced = self.db.dialect.name == "postgresql"
        begin, size = start, STORE_CHUNK
        while begin < n_jobs:
            size = max(1, STORE_CHUNK // 2) if paced else min(2 * size, STORE_CHUNK_MAX)
            end = min(n_jobs, begin + size)
            if paced:
                self._wait_for_dispatch(work_id, begin, STORE_AHEAD - (end - begin))
            with self._lock:
                if self._closed:
                    return
                if work_id not in self._live:  # cancelled: the rest of its jobs never exist
                    self._store_errors[work_id] = (
                        f"cancelled with {begin} of its {n_jobs} jobs stored"
                    )
                    return
            chunk = jobs[begin:end]  # a lazy sequence computes keys and payloads here
            records = self._store_chunk(
                work_id, chunk, begin, memo_key, reuse, min_success, end == n_jobs
            )
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

    def _wait_for_dispatch(self, work_id: int, stored: int, ahead: int) -> None:
        """Wait until at most ``ahead`` of a work's first ``stored`` jobs are still to be taken
        by dispatch (paged into memory), or the work ended or the engine closes."""
        while not self._stop.is_set():
            with self._lock:
                live = self._live.get(work_id)
                if live is None or self._closed or live.page_after is None:
                    return
                if stored - (live.page_after + 1) <= ahead:
                    return
            self._stop.wait(STORE_POLL)

    def _store_chunk(
        self,
        work_id: int,
        chunk: Sequence[tuple[str, bytes]],
        begin: int,
        memo_key: str,
        reuse: bool,
        min_success: float,
        last: bool = False,
    ) -> list[q.ResultRecord]:
        """Store jobs ``begin..`` of a work in one transaction; return its memo hits, ended.
        The ``last`` chunk also clears the work's ``storing_by``: every job is stored."""
        with self._submit_lock, self._writer.begin() as conn:
            memo = q.find_memo(conn, memo_key, [k for k, _ in chunk]) if reuse else {}
            hits = {begin + i for i, (k, _) in enumerate(chunk) if k in memo}
            job_ids = q.insert_jobs(conn, work_id, chunk, first=begin, skip=hits)
            if last:
                q.set_storing_by(conn, work_id, None)
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
