"""Work functions used by the integration tests (importable by job runners)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tasklift import work


@work
def add(x, y=0):
    return x + y


@work(map_results=True)
def scaled(x, y=0, scale=1.0):
    return (x * 10 + y) * scale


@work
def positional(a, b, c=0):
    return [a, b, c]


@work
def sleep_then(x, delay=0.0):
    time.sleep(delay)
    return x


@work
def falsy(kind):
    return {"zero": 0, "none": None, "empty_list": [], "empty_str": "", "false": False}[kind]


@work(retries=2)
def flaky(x, marker_dir, fail_times):
    """Fails ``fail_times`` times per x (counted with marker files), then succeeds."""
    d = Path(marker_dir)
    d.mkdir(parents=True, exist_ok=True)
    n = len(list(d.glob(f"{x}-*")))
    (d / f"{x}-{n}").touch()
    if n < fail_times:
        raise ValueError(f"bad luck for {x} on attempt {n + 1}")
    return x


@work(retries=1, min_success=0.5, map_results=True)
def half_fail(x):
    if x % 2:
        raise RuntimeError(f"odd {x}")
    return x


@work
def returns_object(x):
    return {1, 2, x}


@work(serializer="pickle")
def pickled(s):
    return s | {99}


@work(timeout=1.0, retries=1)
def hangs(x, marker_dir):
    d = Path(marker_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{x}-{time.time_ns()}").touch()
    time.sleep(60)
    return x


@work(retries=2)
def dies_once(x, marker_dir, how="sigkill"):
    """Kills its own worker on the first attempt, succeeds on the next."""
    d = Path(marker_dir)
    d.mkdir(parents=True, exist_ok=True)
    first = not any(d.glob(f"{x}-*"))
    (d / f"{x}-{time.time_ns()}").touch()
    if first:
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


@work
def environment(name):
    return os.environ.get(name)


@work
def noisy(x):
    print(f"hello from job {x}")
    return x
