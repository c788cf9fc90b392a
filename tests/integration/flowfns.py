"""Work functions of the data-flow tests (importable by job runners)."""

from __future__ import annotations

import time
from pathlib import Path

from tasklift import work


@work(retries=0)
def generate(seed, delay=0.0, fail=(), marker=None):
    time.sleep(delay)
    if seed in fail and not (marker and Path(marker).exists()):
        raise ValueError(f"generator {seed} broke")
    return {"seed": seed, "events": [seed, seed + 1], "ok": seed % 3 != 0}


@work(retries=0)
def simulate(events, delay=0.0):
    time.sleep(delay)
    return {"hits": [e * 10 for e in events["events"]], "seed": events["seed"]}


@work(retries=0)
def reconstruct(hits):
    return sum(hits["hits"])


@work(retries=0)
def summarize(parts):
    return {"n": len(parts), "total": sum(parts), "first": parts[0]}


@work
def double(x):
    return 2 * x
