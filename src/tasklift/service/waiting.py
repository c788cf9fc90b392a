"""Requests that wait for a work's results: woken by the engine's announcements, never by polling.

A waiting request listens on ``engine.local_bus`` (this server's engine announces each result
batch there right after its commit, with no broker round trip) and, once it has waited
``RECHECK`` seconds, on ``engine.bus`` too (results that other engines committed). A batch that
continues the caller's cursor without a gap is answered as it is (it was committed before it was
announced); anything else (a gap, a reference, a :class:`~tasklift.bus.base.MissedMessages` event
from a bus that reconnected or from a waiter that stopped buffering, a silent ``RECHECK``)
re-reads the database, which stays the source of truth.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from tasklift.bus.base import MissedMessages, Subscription, work_destination
from tasklift.db import tables
from tasklift.db.results import result_records
from tasklift.records import ResultRecord
from tasklift.service.access import visible_work
from tasklift.states import WORK_TERMINAL, JobState

if TYPE_CHECKING:
    from tasklift.engine.engine import Engine
    from tasklift.service.principal import Principal

__all__ = ["RECHECK", "ResultFollower", "ResultWaiter", "page_dict", "read_results"]

logger = logging.getLogger(__name__)

RECHECK = 0.5
"""Seconds a waiting request stays silent before it re-reads the database (and, from then on,
also listens on the bus for results that other engines commit)."""

MAX_BUFFERED = 20_000
"""Announced records a waiter keeps for a slow reader; beyond, it forgets them and re-reads."""
_TOO_MANY = MissedMessages(f"more than {MAX_BUFFERED} announced records waited for a reader")
_TERMINAL = frozenset(s.value for s in WORK_TERMINAL)
_WORK_STATE = select(tables.works.c.status, tables.works.c.last_seq, tables.works.c.n_jobs)


class ResultWaiter:
    """Collects the result batches announced for one work; wakes the request that waits.

    Create it before the work's jobs can end (``Engine.submit_work(on_stored=...)``) or re-read
    after creating it. Any thread may create it; ``wait`` runs on ``loop``.
    """

    def __init__(self, engine: Engine, work_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._destination = work_destination(work_id)
        self._loop = loop
        self._event = asyncio.Event()
        self._messages: list[Any] = []
        self._subs: list[Subscription] = [
            engine.local_bus.subscribe(self._destination, self._deliver)
        ]
        self._on_bus = engine.bus is engine.local_bus  # nothing more to listen to

    def _deliver(self, messages: Sequence[Any]) -> None:  # on the announcing thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stops
            self._loop.call_soon_threadsafe(self._arrived, list(messages))

    def _arrived(self, messages: list[Any]) -> None:
        if len(self._messages) + len(messages) > MAX_BUFFERED:
            self._messages = [_TOO_MANY]  # the database has them all
        else:
            self._messages.extend(messages)
        self._event.set()

    async def wait(self, timeout: float) -> list[Any]:
        """Return the batches announced since the last call; ``[]`` after ``timeout`` seconds."""
        if not self._messages and timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()
        messages, self._messages = self._messages, []
        return messages

    def push_back(self, messages: list[Any]) -> None:
        """Keep messages for the next ``wait`` (more than a page's worth arrived)."""
        self._messages[:0] = messages
        if messages:
            self._event.set()

    async def listen_to_bus(self) -> None:
        """Also take batches from ``engine.bus`` (other engines); once, in a worker thread."""
        if self._on_bus:
            return
        self._on_bus = True
        sub = await run_in_threadpool(self._engine.bus.subscribe, self._destination, self._deliver)
        self._subs.append(sub)

    def close(self) -> None:
        """Stop listening."""
        for sub in self._subs:
            sub.close()
        self._subs.clear()


def _is_done(work: Any, cursor: int) -> bool:
    return work["status"] in _TERMINAL and cursor >= work["last_seq"]


def read_results(
    engine: Engine,
    work_id: int,
    since: int,
    limit: int,
    principal: Principal | None = None,
) -> tuple[list[ResultRecord], Any]:
    """Read (in a worker thread) the work's state, then its results after ``since``.

    With ``principal``, the work must be visible to it (404 otherwise).
    """
    with engine.db.connect() as conn:
        if principal is not None:
            work: Any = visible_work(conn, principal, work_id)
        else:
            work = conn.execute(_WORK_STATE.where(tables.works.c.id == work_id)).mappings().one()
        return result_records(conn, work_id, since, limit), work


def _work_state(engine: Engine, work_id: int) -> Any:
    with engine.db.connect() as conn:
        return conn.execute(_WORK_STATE.where(tables.works.c.id == work_id)).mappings().one()


def _contiguous(messages: list[Any], since: int) -> list[ResultRecord] | None:
    """The announced records that continue ``since`` without a gap; None: re-read the DB."""
    fresh: dict[int, ResultRecord] = {}
    for m in messages:
        if not isinstance(m, ResultRecord):
            return None  # MissedMessages: the bus may have lost some
        if m.idx < 0 or m.done_seq <= 0:
            return None  # a reference or an unnumbered record
        if m.done_seq > since:
            fresh[m.done_seq] = m
    records = [fresh[seq] for seq in sorted(fresh)]
    for expected, record in enumerate(records, start=since + 1):
        if record.done_seq != expected:
            return None
    return records


@dataclass(eq=False, repr=False)
class ResultFollower:
    """Pages of one work's results after a cursor, each as soon as it is announced."""

    engine: Engine
    waiter: ResultWaiter
    work_id: int
    since: InitVar[int]
    limit: int
    cursor: int = field(init=False)
    n_jobs: int | None = field(default=None, init=False)
    done: bool = field(default=False, init=False)
    _all_finished: bool = field(init=False)
    """Followed from the first result and every one finished: no job can be reopened (only
    failed ones are retried), so the last job's result means the work is done."""

    def __post_init__(self, since: int) -> None:
        self.cursor = since
        self._all_finished = since == 0

    async def check_done(self) -> list[ResultRecord]:
        """After a page taken from an announcement: read whether the work is done now.

        Reads the work's state only, and its results too when some are not taken yet.
        """
        work = await run_in_threadpool(_work_state, self.engine, self.work_id)
        if self.cursor >= work["last_seq"]:
            self.done = work["status"] in _TERMINAL
            return []
        return await self.next_page(0.0, read_first=True)

    async def next_page(self, deadline: float, *, read_first: bool) -> list[ResultRecord]:
        """Wait until results after the cursor exist (or the work is done, or ``deadline``).

        Args:
            deadline: ``loop.time()`` after which an empty page is returned.
            read_first: read the database before waiting (a fresh cursor, or to learn
                whether the work is done after a page taken from an announcement).

        Returns:
            The page (``self.cursor`` and ``self.done`` are updated).
        """
        loop = asyncio.get_running_loop()
        need_read = read_first
        while True:
            if need_read:
                need_read = False
                records, work = await run_in_threadpool(
                    read_results, self.engine, self.work_id, self.cursor, self.limit
                )
                self.n_jobs = int(work["n_jobs"])
                self._took(records)
                self.done = self.done or _is_done(work, self.cursor)
                if records or self.done:
                    return records
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            messages = await self.waiter.wait(min(RECHECK, remaining))
            if not messages:  # silence: results of other engines come by the DB or the bus
                await self.waiter.listen_to_bus()
                need_read = True
                continue
            announced = _contiguous(messages, self.cursor)
            if announced is None:
                need_read = True
                continue
            if not announced:
                continue  # duplicates of what the caller has
            records = announced
            if len(records) > self.limit:
                self.waiter.push_back(records[self.limit :])
                records = records[: self.limit]
            self._took(records)
            return records

    def _took(self, records: list[ResultRecord]) -> None:
        if not records:
            return
        self.cursor = records[-1].done_seq
        if self._all_finished:
            self._all_finished = all(r.state == JobState.FINISHED.value for r in records)
            if self._all_finished and self.n_jobs is not None and self.cursor >= self.n_jobs:
                self.done = True  # committed before it was announced: the work has ended

    def took_all(self) -> bool:
        """True when the cursor reached the work's job count (the next read may say done)."""
        return self.n_jobs is not None and self.cursor >= self.n_jobs


def page_dict(records: list[ResultRecord], cursor: int, done: bool) -> dict[str, Any]:
    """A ``ResultsPage`` as plain JSON-ready data (results base64)."""
    return {
        "data": [
            {
                "job_id": r.job_id,
                "idx": r.idx,
                "state": r.state,
                "result": base64.b64encode(r.result).decode() if r.result is not None else None,
                "error_type": r.error_type,
                "error_message": r.error_message,
                "traceback": r.traceback,
                "attempts": r.attempts,
                "done_seq": r.done_seq,
            }
            for r in records
        ],
        "cursor": cursor,
        "done": done,
    }
