"""Work functions of the issue 18 tests (importable by job runners)."""

from __future__ import annotations

import time
from pathlib import Path

from tasklift import work


@work(retries=0)
def seed_of(events):
    return events["seed"]


@work(retries=0)
def types_of(a, t, d, n, f):
    """Reports the types the job got, and returns values JSON alone would change."""
    return {
        "got": [type(a).__name__, type(t).__name__, sorted(type(k).__name__ for k in d),
                type(n).__name__, type(f).__name__],
        "doubled": a * 2,
        "pair": (t[0], t[1]),
        "by_int": {1: "one", 2: "two"},
        "nan": float("nan"),
    }


@work(retries=2)
def two_args(a, b):
    return [a, b]


@work(retries=2)
def counted(x, marker_dir):
    """Counts its runs with marker files."""
    d = Path(marker_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{x}-{time.time_ns()}").touch()
    return x


@work(retries=0)
def slow(x, delay):
    time.sleep(delay)
    return x


@work(retries=0)
def fails_on(x, bad):
    if x in bad:
        raise ValueError(f"bad x {x}")
    return x
