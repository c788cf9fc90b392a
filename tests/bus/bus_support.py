"""Helpers shared by the bus tests: the local STOMP port, enabling it, a waiting collector."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STOMP_HOST = "127.0.0.1"
STOMP_PORT = int(os.environ.get("TASKLIFT_TEST_STOMP_PORT", "61613"))
STOMP_BASE = f"stomp://guest:guest@{STOMP_HOST}:{STOMP_PORT}"
LATENCY_LINES: list[str] = []
"""Lines the terminal summary prints (tests append measured latencies)."""


def stomp_port_open(timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((STOMP_HOST, STOMP_PORT), timeout=timeout):
            return True
    except OSError:
        return False


def enable_stomp() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "enable-stomp.sh")],
        env={**os.environ, "STOMP_PORT": str(STOMP_PORT)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


class Collector:
    """A subscription callback that keeps every batch and lets a test wait (no spinning)."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self._cond = threading.Condition()

    def __call__(self, messages: Sequence[Any]) -> None:
        with self._cond:
            self.batches.append(list(messages))
            self._cond.notify_all()

    @property
    def messages(self) -> list[Any]:
        with self._cond:
            return [m for batch in self.batches for m in batch]

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """True once ``count`` messages arrived (in any batches) within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(len(b) for b in self.batches) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
