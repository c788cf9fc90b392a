"""A reconnect of the STOMP bus is a typed event, and a waiting ``AsyncResult`` re-reads on it.

The connection is broken from our side (its socket shut down), so the broker stays up for
every other test; the bus must notice, reconnect, bind again, and deliver
:class:`~tasklift.bus.base.MissedMessages` in the subscribers' batches.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Sequence

import pytest

from tasklift.api.waiting import AsyncResult
from tasklift.bus.base import Bus, MissedMessages
from tasklift.bus.stomp import StompBus
from tasklift.records import ResultRecord

pytestmark = pytest.mark.stomp


class _FakeEngine:
    """What an ``AsyncResult`` uses of an engine: a bus, and the committed results."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.committed: list[ResultRecord] = []
        self.reads = 0

    def results(self, work_id: int, since: int) -> Sequence[ResultRecord]:
        self.reads += 1
        return [r for r in self.committed if r.done_seq > since]


def _break_connection(bus: StompBus) -> threading.Event:
    """Cut the bus's TCP connection; the returned event is set once it has reconnected."""
    reconnected = threading.Event()
    bus.on_reconnect.append(reconnected.set)
    bus._conn.transport.socket.shutdown(socket.SHUT_RDWR)  # as a broken network would
    return reconnected


def test_a_reconnect_delivers_missed_messages_after_binding_again(stomp_url, collector):
    bus = StompBus(url=stomp_url, reconnect_initial=0.05)
    publisher = StompBus(url=stomp_url)
    try:
        one, two = collector(), collector()
        bus.subscribe("work.1", one)
        bus.subscribe("work.2", two)
        assert _break_connection(bus).wait(20), "the bus did not reconnect"
        assert one.wait_for(1) and two.wait_for(1)
        event = MissedMessages(f"reconnected to {bus.url}")
        assert one.batches == [[event]] and two.batches == [[event]]  # a batch of its own
        assert bus.stats["reconnects"] == 1 and bus.connected
        assert "guest:guest" not in repr(event)  # the reason shows the masked URL

        record = ResultRecord(job_id=7, idx=0, state="finished", result=b"1", done_seq=1)
        publisher.publish("work.1", [record])  # the subscription was bound again
        assert one.wait_for(2)
        assert one.messages == [event, record]
    finally:
        publisher.close()
        bus.close()


def test_the_event_can_be_turned_off(stomp_url, collector):
    bus = StompBus(url=stomp_url, reconnect_initial=0.05, missed_on_reconnect=False)
    try:
        got = collector()
        bus.subscribe("work.1", got)
        assert _break_connection(bus).wait(20), "the bus did not reconnect"
        assert got.messages == []
    finally:
        bus.close()


@pytest.mark.parametrize("announce", [True, False])
def test_a_waiting_async_result_rereads_on_a_reconnect(stomp_url, monkeypatch, announce):
    """A result committed while its frame was lost arrives by the re-read the event triggers.

    Periodic re-reads are pushed out of the test's reach, so without the event (``announce``
    False) the result does not arrive: the test sees the event's effect and nothing else.
    """
    monkeypatch.setattr(sys.modules[AsyncResult.__module__], "REREAD_EVERY", 600.0)
    bus = StompBus(url=stomp_url, reconnect_initial=0.05, missed_on_reconnect=announce)
    engine = _FakeEngine(bus)
    waiting = AsyncResult(engine, work_id=1, n_jobs=1)  # type: ignore[arg-type]
    try:
        assert engine.reads == 1 and waiting.n_done == 0
        found: list[bool] = []
        waiter = threading.Thread(
            target=lambda: found.append(waiting.wait_for(1, time.monotonic() + 8.0))
        )
        waiter.start()
        # committed, but its announcement never reached us (the broker was away, say)
        record = ResultRecord(job_id=7, idx=0, state="finished", result=b"42", done_seq=1)
        engine.committed.append(record)
        assert _break_connection(bus).wait(20), "the bus did not reconnect"
        waiter.join(15.0)
        assert not waiter.is_alive()
        if announce:
            assert found == [True] and waiting.ordered() == [record]
            assert engine.reads == 2
        else:
            assert found == [False] and waiting.n_done == 0
            assert engine.reads == 1
    finally:
        waiting.close()
        bus.close()
