"""Work functions for the chunked-store tests (importable by the workers)."""

from __future__ import annotations

from tasklift import work


@work
def add(x, y=0):
    return x + y


@work
def slow_add(x, y=0):
    import time

    time.sleep(0.1)
    return x + y
