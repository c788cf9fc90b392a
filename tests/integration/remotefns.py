"""Work functions for the remote job runner tests (importable from the source archive)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tasklift import work


@work
def square(x):
    return x * x


@work(retries=0)
def broken(x):
    raise ValueError(f"bad x={x}")


@work(retries=1)
def stalls_once(x, marker_dir):
    """First attempt: records its pid and sleeps (the test freezes it); then returns."""
    d = Path(marker_dir)
    d.mkdir(parents=True, exist_ok=True)
    first = not any(d.glob(f"{x}-*"))
    (d / f"{x}-{os.getpid()}").write_text(str(os.getpid()))
    if first:
        time.sleep(120)
    return x + 100


@work(timeout=1.0, retries=0)
def overruns(x):
    time.sleep(60)
    return x


@work
def pid_of_runner(x, marker_dir, delay=0.0):
    d = Path(marker_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{x}-{os.getpid()}").write_text(str(os.getpid()))
    time.sleep(delay)
    return x
