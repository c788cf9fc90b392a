"""The real RabbitMQ STOMP broker for the "nothing lost" tests: availability, private URLs,
stop and restart with the broker's own control commands (``rabbitmqctl stop_app/start_app``).

Importable from every test directory (``tests/`` is on ``sys.path`` through its conftest).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STOMP_HOST = "127.0.0.1"
STOMP_PORT = int(os.environ.get("TASKLIFT_TEST_STOMP_PORT", "61613"))
STOMP_BASE = f"stomp://guest:guest@{STOMP_HOST}:{STOMP_PORT}"
CTL_TIMEOUT = 90.0
"""Seconds any one ``rabbitmqctl`` call may take."""


def stomp_port_open(timeout: float = 1.0) -> bool:
    """True when the STOMP port accepts a TCP connection."""
    try:
        with socket.create_connection((STOMP_HOST, STOMP_PORT), timeout=timeout):
            return True
    except OSError:
        return False


def require_stomp() -> str:
    """The broker's base URL, enabling the STOMP plugin when needed.

    A missing broker fails the test when ``CI`` is set and skips it (with the reason) otherwise.
    """
    if not stomp_port_open():
        proc = subprocess.run(
            ["bash", str(REPO / "scripts" / "enable-stomp.sh")],
            env={**os.environ, "STOMP_PORT": str(STOMP_PORT)},
            capture_output=True, text=True, timeout=240, check=False,
        )
        if not stomp_port_open():
            why = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
            message = f"RabbitMQ STOMP not available at {STOMP_HOST}:{STOMP_PORT}: {why}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    return STOMP_BASE


def private_stomp_url(base: str = STOMP_BASE) -> str:
    """A bus URL with a destination prefix of its own and 2 s heartbeats."""
    return f"{base}/tl-lost-{secrets.token_hex(4)}?heartbeat=2"


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True,
                   timeout=CTL_TIMEOUT)


def wait_port(open_: bool, timeout: float = 30.0) -> None:
    """Wait until the STOMP port is open (or closed); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while stomp_port_open(timeout=0.5) != open_:
        if time.monotonic() > deadline:
            state = "open" if open_ else "closed"
            raise AssertionError(f"STOMP port {STOMP_PORT} not {state} after {timeout:g} s")
        time.sleep(0.1)


def stop_broker() -> None:
    """Stop the RabbitMQ application (the node stays up); the STOMP port closes."""
    _ctl("stop_app")
    wait_port(False)


def start_broker() -> None:
    """Start the RabbitMQ application again and wait for the STOMP port."""
    _ctl("start_app")
    _ctl("await_startup", "--timeout", "60")
    wait_port(True)


@contextmanager
def broker_stopped() -> Iterator[None]:
    """The broker is down inside the block and always running again after it."""
    stop_broker()
    try:
        yield
    finally:
        try:
            start_broker()
        except (subprocess.SubprocessError, AssertionError):
            # last resort: the set-up script starts the node and enables the plugin
            subprocess.run(["bash", str(REPO / "scripts" / "enable-stomp.sh")],
                           capture_output=True, timeout=240, check=False)
            wait_port(True)
