"""One suite over every bus: ``embedded://`` and ``stomp://`` (RabbitMQ, marker ``stomp``)."""

from __future__ import annotations

import logging
import time

from tasklift.bus.base import work_destination
from tasklift.bus.stomp_codec import is_reference
from tasklift.records import ResultRecord


def rec(job_id: int, result: bytes | None = b"1", **kw) -> ResultRecord:
    return ResultRecord(job_id, kw.pop("idx", job_id), "finished", result, **kw)


def test_result_records_round_trip(bus_pair, collector):
    publisher, subscriber = bus_pair
    got = collector()
    subscriber.subscribe(work_destination(1), got)
    sent = [
        rec(1, b'{"x": 1.5}', attempts=1, done_seq=1),
        rec(2, b"", attempts=1, done_seq=2),  # falsy results are results
        rec(3, b"\x00\xff\x80binary"),
        ResultRecord(4, 3, "failed", None, "ValueError", "bad: ünïcode", "Traceback...\n", 3, 4),
        ResultRecord(5, 4, "cancelled", None),
    ]
    publisher.publish(work_destination(1), sent)
    assert got.wait_for(len(sent))
    assert got.messages == sent


def test_a_batch_arrives_as_one_callback(bus_pair, collector):
    publisher, subscriber = bus_pair
    got = collector()
    subscriber.subscribe("work.7", got)
    publisher.publish("work.7", [rec(i) for i in range(100)])
    assert got.wait_for(100)
    time.sleep(0.05)
    assert len(got.batches) == 1
    assert [m.job_id for m in got.batches[0]] == list(range(100))


def test_destinations_are_isolated(bus_pair, collector):
    publisher, subscriber = bus_pair
    one, two = collector(), collector()
    subscriber.subscribe("work.1", one)
    subscriber.subscribe("work.2", two)
    publisher.publish("work.2", [rec(200), rec(201)])
    publisher.publish("work.1", [rec(100)])
    publisher.publish("work.12", [rec(1200)])  # a prefix of nothing, a neighbour of both
    assert one.wait_for(1) and two.wait_for(2)
    time.sleep(0.1)
    assert [m.job_id for m in one.messages] == [100]
    assert [m.job_id for m in two.messages] == [200, 201]


def test_subscribe_then_publish_never_loses_the_first_message(bus_pair, collector):
    publisher, subscriber = bus_pair
    for n in range(25):
        got = collector()
        subscriber.subscribe(f"work.{1000 + n}", got)
        publisher.publish(f"work.{1000 + n}", [rec(n)])  # at once, from another connection
        assert got.wait_for(1, timeout=3.0), f"first message lost on attempt {n}"


def test_two_subscriptions_of_one_destination_both_receive(bus_pair, collector):
    publisher, subscriber = bus_pair
    a, b = collector(), collector()
    subscriber.subscribe("work.3", a)
    sub_b = subscriber.subscribe("work.3", b)
    publisher.publish("work.3", [rec(1)])
    assert a.wait_for(1) and b.wait_for(1)
    sub_b.close()
    publisher.publish("work.3", [rec(2)])
    assert a.wait_for(2)
    time.sleep(0.1)
    assert [m.job_id for m in b.messages] == [1]


def test_a_closed_subscription_gets_nothing(bus_pair, collector):
    publisher, subscriber = bus_pair
    closed, sentinel = collector(), collector()
    sub = subscriber.subscribe("work.5", closed)
    subscriber.subscribe("work.6", sentinel)
    publisher.publish("work.5", [rec(1)])
    assert closed.wait_for(1)
    sub.close()
    sub.close()  # idempotent
    publisher.publish("work.5", [rec(2)])
    publisher.publish("work.6", [rec(3)])  # sent after: its arrival bounds the wait
    assert sentinel.wait_for(1)
    time.sleep(0.1)
    assert [m.job_id for m in closed.messages] == [1]


def test_large_results_travel_by_reference(bus_pair, collector):
    publisher, subscriber = bus_pair
    got = collector()
    subscriber.subscribe("work.9", got)
    big, small = rec(1, b"x" * 100_000, done_seq=1), rec(2, b"y" * 100, done_seq=2)
    publisher.publish("work.9", [big, small])
    assert got.wait_for(2)
    first, second = got.messages
    assert second == small
    # a bus either carries the result whole or says "re-read": never a truncated result
    assert first == big or (is_reference(first) and first.job_id == 1 and first.result is None)


def test_a_raising_subscriber_does_not_stop_the_others(bus_pair, collector, caplog):
    publisher, subscriber = bus_pair
    got = collector()

    def broken(messages):
        raise RuntimeError("subscriber bug")

    subscriber.subscribe("work.4", broken)
    subscriber.subscribe("work.4", got)
    with caplog.at_level(logging.ERROR):
        publisher.publish("work.4", [rec(1)])
        assert got.wait_for(1)
        publisher.publish("work.4", [rec(2)])
        assert got.wait_for(2)
    assert "subscriber bug" in caplog.text
