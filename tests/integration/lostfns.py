"""The work function of the "nothing lost" tests, and helpers that count its runs.

Every run of :func:`tracked` leaves a ``start-<x>-<pid>-<ns>`` file and, when it returns, a
``done-<x>-<pid>-<ns>`` file in ``marks``, so a test can tell how often each job ran. The
server tests copy this file into their client projects (job runners import it from there).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from tasklift import work

HOLD_SECONDS = 60.0
"""How long a held first attempt waits for the test to kill its worker."""


@work(retries=2)
def tracked(x, marks, hold=False, gate=None, delay=0.0):
    """Return ``x * x`` after recording the run.

    ``hold``: on the first attempt, write the worker's pid to ``pid-<x>`` and wait to be killed.
    ``gate``: wait (at most a minute) until this file exists.
    """
    d = Path(marks)
    d.mkdir(parents=True, exist_ok=True)
    first = not any(d.glob(f"start-{x}-*"))
    (d / f"start-{x}-{os.getpid()}-{time.time_ns()}").touch()
    if hold and first:
        tmp = d / f".pid-{x}"
        tmp.write_text(str(os.getpid()))
        tmp.rename(d / f"pid-{x}")
        time.sleep(HOLD_SECONDS)
    if gate:
        deadline = time.monotonic() + 60
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    time.sleep(delay)
    (d / f"done-{x}-{os.getpid()}-{time.time_ns()}").touch()
    return x * x


def count(marks: str | os.PathLike[str], kind: str) -> Counter[int]:
    """How many ``kind`` (``start`` or ``done``) files each x has."""
    root = Path(marks)
    if not root.exists():
        return Counter()
    return Counter(int(p.name.split("-")[1]) for p in root.glob(f"{kind}-*"))


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def held_pid(marks: str | os.PathLike[str], x: int, timeout: float = 60.0) -> int:
    """The pid of the worker that holds job ``x`` (written by its first attempt)."""
    path = Path(marks) / f"pid-{x}"
    wait_for(path.exists, timeout, f"{path} (job {x} started)")
    return int(path.read_text())
