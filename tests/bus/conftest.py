"""Bus fixtures: RabbitMQ's STOMP plugin (enabled on demand), bus pairs, message collectors.

The ``stomp_broker`` session fixture runs ``scripts/enable-stomp.sh`` when 127.0.0.1:61613 is
closed. Without a broker the ``stomp`` tests skip with the reason, except in CI (``CI`` set),
where a missing broker is a failure. Latencies measured by tests are printed in the summary.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from bus_support import (
    LATENCY_LINES,
    STOMP_BASE,
    STOMP_HOST,
    STOMP_PORT,
    Collector,
    enable_stomp,
    stomp_port_open,
)

from tasklift.bus.base import Bus
from tasklift.bus.registry import bus_from_url


@pytest.fixture(scope="session")
def stomp_broker() -> str:
    """``stomp://guest:guest@127.0.0.1:61613`` once RabbitMQ's STOMP plugin answers."""
    if not stomp_port_open():
        proc = enable_stomp()
        if not stomp_port_open():
            why = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
            message = f"RabbitMQ STOMP not available at {STOMP_HOST}:{STOMP_PORT}: {why}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    return STOMP_BASE


@pytest.fixture
def stomp_url(stomp_broker: str) -> str:
    """A URL with a private destination prefix (tests never see each other's messages)."""
    return f"{stomp_broker}/tasklift-test-{secrets.token_hex(4)}?heartbeat=2"


@pytest.fixture(params=["embedded", pytest.param("stomp", marks=pytest.mark.stomp)])
def bus_pair(request: pytest.FixtureRequest) -> Iterator[tuple[Bus, Bus]]:
    """(publisher, subscriber): one bus twice for ``embedded``, two connections for ``stomp``."""
    if request.param == "embedded":
        bus = bus_from_url("embedded://")
        yield bus, bus
        bus.close()
        return
    url = request.getfixturevalue("stomp_url")
    publisher, subscriber = bus_from_url(url), bus_from_url(url)
    yield publisher, subscriber
    publisher.close()
    subscriber.close()


@pytest.fixture
def collector() -> Callable[[], Collector]:
    """Factory of :class:`Collector` callbacks."""
    return Collector


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if LATENCY_LINES:
        terminalreporter.section("bus latency")
        for line in LATENCY_LINES:
            terminalreporter.write_line(line)
