"""``AsyncResult``: a work's terminal jobs, read from what is persisted, then heard on the bus
(with a periodic re-read, so a missed message costs at most :data:`REREAD_EVERY` seconds)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tasklift.bus.base import MissedMessages, work_destination
from tasklift.errors import DatabaseUnavailable
from tasklift.records import ResultRecord

if TYPE_CHECKING:
    from tasklift.api.client import EngineClient

__all__ = ["REREAD_EVERY", "AsyncResult"]

logger = logging.getLogger(__name__)

REREAD_EVERY = 2.0
"""Seconds between safety re-reads of the DB while waiting (a missed message costs this)."""


class AsyncResult:
    """Collects a work's terminal jobs: reads what is persisted, then listens on the bus."""

    def __init__(
        self, engine: EngineClient, work_id: int, n_jobs: int, *, reread: bool = True
    ) -> None:
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
