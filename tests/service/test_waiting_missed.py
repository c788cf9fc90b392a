"""A waiting request re-reads the database on a ``MissedMessages`` event (no DB needed here)."""

from __future__ import annotations

import asyncio

from tasklift.bus.base import MissedMessages
from tasklift.bus.embedded import EmbeddedBus
from tasklift.records import ResultRecord
from tasklift.service import waiting
from tasklift.service.waiting import ResultWaiter


def rec(seq: int, idx: int | None = None) -> ResultRecord:
    return ResultRecord(
        job_id=seq, idx=seq - 1 if idx is None else idx, state="finished", result=b"1", done_seq=seq
    )


class _Engine:
    def __init__(self) -> None:
        self.local_bus = self.bus = EmbeddedBus()


def test_only_gap_free_records_are_answered_as_announced():
    assert waiting._contiguous([rec(2), rec(1)], 0) == [rec(1), rec(2)]
    assert waiting._contiguous([rec(1), rec(3)], 0) is None  # a gap
    assert waiting._contiguous([rec(1), MissedMessages("reconnected")], 0) is None
    assert waiting._contiguous([rec(1, idx=-1)], 0) is None  # a reference


def test_a_waiter_that_stops_buffering_says_so_with_the_event(monkeypatch):
    monkeypatch.setattr(waiting, "MAX_BUFFERED", 3)

    async def scenario() -> list:
        engine = _Engine()
        waiter = ResultWaiter(engine, 5, asyncio.get_running_loop())  # type: ignore[arg-type]
        try:
            engine.local_bus.publish("work.5", [rec(1), rec(2)])
            engine.local_bus.publish("work.5", [rec(3), rec(4)])  # over the limit
            return await waiter.wait(5.0)
        finally:
            waiter.close()

    (got,) = asyncio.run(scenario())
    assert isinstance(got, MissedMessages)
    assert waiting._contiguous([got], 0) is None
