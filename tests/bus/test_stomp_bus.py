"""The STOMP bus on a real RabbitMQ: volume, latency, reconnects, credentials never shown."""

from __future__ import annotations

import logging
import statistics
import subprocess
import threading
import time

import pytest
from bus_support import LATENCY_LINES, enable_stomp

from tasklift.bus.base import MissedMessages
from tasklift.bus.stomp import StompBus
from tasklift.errors import BusError
from tasklift.records import ResultRecord

pytestmark = pytest.mark.stomp


def rec(job_id: int, result: bytes = b"1") -> ResultRecord:
    return ResultRecord(job_id=job_id, idx=job_id, state="finished", result=result)


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_2000_small_messages_in_batches_arrive_complete(stomp_url, collector):
    with_bus = StompBus(url=stomp_url), StompBus(url=stomp_url)
    publisher, subscriber = with_bus
    try:
        got = collector()
        subscriber.subscribe("work.1", got)
        t0 = time.perf_counter()
        for start in range(0, 2000, 50):
            publisher.publish("work.1", [rec(i, b"%d" % i) for i in range(start, start + 50)])
        assert got.wait_for(2000, timeout=20)
        elapsed = time.perf_counter() - t0
        assert sorted(m.job_id for m in got.messages) == list(range(2000))
        assert all(m.result == b"%d" % m.job_id for m in got.messages)
        assert len(got.batches) == 40
        assert publisher.stats["frames_sent"] == 40
        LATENCY_LINES.append(f"stomp: 2,000 records in 40 frames, all delivered in {elapsed:.3f} s")
    finally:
        publisher.close()
        subscriber.close()


def test_one_way_latency_of_a_single_record_batch(stomp_url):
    publisher, subscriber = StompBus(url=stomp_url), StompBus(url=stomp_url)
    arrived = threading.Event()
    stamp: list[float] = []

    def on_batch(messages):
        stamp.append(time.perf_counter())
        arrived.set()

    try:
        subscriber.subscribe("work.1", on_batch)
        samples = []
        for i in range(300):
            arrived.clear()
            stamp.clear()
            t0 = time.perf_counter()
            publisher.publish("work.1", [rec(i)])
            assert arrived.wait(2.0)
            if i >= 20:  # warm-up
                samples.append((stamp[0] - t0) * 1e3)
        samples.sort()
        p50, p99 = statistics.median(samples), samples[int(0.99 * len(samples)) - 1]
        LATENCY_LINES.append(
            f"stomp one-way, single-record batch: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
            f"({len(samples)} samples)"
        )
        assert p50 < 50
    finally:
        publisher.close()
        subscriber.close()


def test_a_bus_delivers_to_its_own_subscriptions(stomp_url, collector):
    bus = StompBus(url=stomp_url)
    try:
        got = collector()
        sub = bus.subscribe("work.2", got)
        assert sub.confirmed
        bus.publish("work.2", [rec(1)])
        assert got.wait_for(1)
    finally:
        bus.close()


def test_close_stops_delivery_threads_and_connection(stomp_url, collector):
    publisher, subscriber = StompBus(url=stomp_url), StompBus(url=stomp_url)
    try:
        got = collector()
        subscriber.subscribe("work.1", got)
        publisher.publish("work.1", [rec(1)])
        assert got.wait_for(1)
        subscriber.close()
        subscriber.close()  # idempotent
        assert not subscriber.connected
        publisher.publish("work.1", [rec(2)])
        time.sleep(0.2)
        assert [m.job_id for m in got.messages] == [1]
        with pytest.raises(BusError, match="closed"):
            subscriber.subscribe("work.1", got)
        subscriber.publish("work.1", [rec(3)])  # dropped quietly: the DB has the result
    finally:
        publisher.close()
    assert wait_until(
        lambda: not any(t.name == "tasklift-stomp-reconnect" for t in threading.enumerate()), 5
    )


def test_subscribe_inside_a_callback_does_not_deadlock(stomp_url, collector):
    bus = StompBus(url=stomp_url, receipt_timeout=5.0)
    inner = collector()
    done = threading.Event()

    def outer(messages):
        bus.subscribe("work.inner", inner)
        done.set()

    try:
        bus.subscribe("work.outer", outer)
        t0 = time.monotonic()
        bus.publish("work.outer", [rec(1)])
        assert done.wait(3)
        assert time.monotonic() - t0 < 2  # did not sit out the receipt timeout
        assert wait_until(lambda: bus.subscribe("work.inner", inner).confirmed, 3)
        bus.publish("work.inner", [rec(2)])
        assert inner.wait_for(2)  # both subscriptions of work.inner receive it
    finally:
        bus.close()


def test_wrong_password_is_a_bus_error_that_never_shows_it(stomp_broker, caplog):
    url = stomp_broker.replace("guest:guest@", "guest:Sup3r-s3cret@") + "/tasklift-test"
    with caplog.at_level(logging.DEBUG), pytest.raises(BusError) as info:
        StompBus(url=url, connect_timeout=5)
    assert "Sup3r-s3cret" not in str(info.value)
    assert "guest:***@" in str(info.value)
    assert "passcode" in caplog.text  # stomp.py's DEBUG line of the CONNECT frame ...
    assert "Sup3r-s3cret" not in caplog.text  # ... with the passcode redacted


def test_unreachable_broker_is_a_bus_error():
    with pytest.raises(BusError, match=r"cannot connect to stomp://u:\*\*\*@127\.0\.0\.1:1/"):
        StompBus(url="stomp://u:hidden-pw@127.0.0.1:1/tasklift", connect_timeout=2)


@pytest.mark.slow
def test_broker_restart_reconnects_resubscribes_and_tells_subscribers(stomp_url, collector):
    """The STOMP plugin goes away and comes back: the bus reconnects on its own."""
    subscriber = StompBus(url=stomp_url, reconnect_max=1.0)
    publisher = StompBus(url=stomp_url, reconnect_max=1.0)
    reconnected = threading.Event()
    subscriber.on_reconnect.append(reconnected.set)
    got, own = collector(), collector()
    try:
        subscriber.subscribe("work.1", got)
        subscriber.subscribe("work.2", own)
        publisher.publish("work.1", [rec(1)])
        assert got.wait_for(1)

        t0 = time.monotonic()
        subprocess.run(["rabbitmq-plugins", "-q", "disable", "rabbitmq_stomp"], check=True)
        assert wait_until(lambda: not subscriber.connected, 10)
        subscriber.publish("work.2", [rec(20)])  # buffered while the broker is away
        publisher.publish("work.1", [rec(2)])  # buffered too; may reach nobody (topics)
        subprocess.run(["rabbitmq-plugins", "-q", "enable", "rabbitmq_stomp"], check=True)

        assert reconnected.wait(20), "on_reconnect was not called"
        assert subscriber.connected
        assert subscriber.stats["reconnects"] == 1
        # "you may have missed something: re-read"
        assert any(isinstance(m, MissedMessages) for m in got.messages)
        # the bus re-bound work.2 before flushing its buffer, so its own frame arrives
        assert own.wait_for(2)
        assert [m for m in own.messages if not isinstance(m, MissedMessages)] == [rec(20)]
        assert MissedMessages(f"reconnected to {subscriber.url}") in own.messages

        assert wait_until(lambda: publisher.connected, 10)
        publisher.publish("work.1", [rec(3)])
        assert wait_until(lambda: rec(3) in got.messages, 5)
        elapsed = time.monotonic() - t0
        LATENCY_LINES.append(f"stomp: plugin disable+enable survived in {elapsed:.1f} s")
        assert elapsed < 30
    finally:
        if enable_stomp().returncode != 0:
            pytest.fail("could not enable rabbitmq_stomp again")
        publisher.close()
        subscriber.close()


def test_bad_destinations_and_unencodable_messages_are_bus_errors(stomp_url):
    bus = StompBus(url=stomp_url)
    try:
        for bad in ("work/1", "work.*", "work.#", "", "work..1", "/topic/x"):
            with pytest.raises(BusError, match="bad bus destination"):
                bus.publish(bad, [rec(1)])
            with pytest.raises(BusError, match="bad bus destination"):
                bus.subscribe(bad, print)
        with pytest.raises(BusError, match="cannot encode"):
            bus.publish("work.1", [object()])
        assert bus.connected  # nothing bad reached the broker
    finally:
        bus.close()
