"""A remote workflow function for the service tests: runs until a file appears."""

from __future__ import annotations

import time
from pathlib import Path


def wait_for_file(path: str, timeout: float = 120.0) -> bool:
    """Return True once ``path`` exists (False after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
