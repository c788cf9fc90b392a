"""The interface every benchmarked system implements, and the workload definitions.

A system implements three primitives over the shared task bodies of :mod:`bench.systems.tasks`:

- :meth:`BenchSystem.start`: bring the system up with exactly 2 worker processes and return
  once both can run a task (not timed by the workloads; the harness times it as start-up);
- :meth:`BenchSystem.map`: run ``fn(a)`` for every ``a`` as one map / group, wait for all,
  return the results in submission order;
- :meth:`BenchSystem.call`: submit one ``fn(a)`` and wait for its result.

The workloads W1-W4 of issue 7 are written once here on top of those primitives, so every peer
is timed by the same code. A system whose programming model does not fit (tasklift: everything
runs inside a workflow function) overrides :meth:`BenchSystem.run` and calls
:meth:`BenchSystem.run_workloads` from the right place, so the same timing code still runs.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

from bench.systems import tasks

WORKERS = 2
"""Worker processes of every system."""

DEFAULTS: dict[str, dict[str, Any]] = {
    "w1": {"n": 2000},
    "w2": {"n": 200, "sleep": 0.01},
    "w3": {"n": 200},
    "w4": {"iters": 10, "width": 20, "sleep": 0.01},
    "w5": {"n": int(os.environ.get("BENCH_W5_N", "1000000"))},
}
"""Workload parameters of issue 7."""

PEER_WORKLOADS = ("w1", "w2", "w3", "w4")
"""Workloads every system runs. W5 (1,000,000 jobs) and W6 (through ``tasklift server``) are
tasklift-only and run only when asked for by name."""


class Unavailable(Exception):
    """The system cannot run here (not installed, does not import yet): skipped, not failed."""


def percentile(values: list[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) of ``values``, linear interpolation."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def w1_metrics(wall: float, n: int) -> dict[str, float]:
    """W1: ``n`` no-op jobs as one map -> jobs/s."""
    return {"w1_wall_s": wall, "w1_jobs_per_s": n / wall}


def w2_metrics(wall: float, n: int, sleep: float) -> dict[str, float]:
    """W2: ``n`` sleeps as one map -> efficiency = ideal wall on 2 workers / measured wall."""
    return {"w2_wall_s": wall, "w2_efficiency": (n * sleep / WORKERS) / wall}


def w3_metrics(latencies: list[float]) -> dict[str, float]:
    """W3: sequential single round trips -> p50 / p99 / mean in ms."""
    ms = [x * 1000.0 for x in latencies]
    return {
        "w3_p50_ms": percentile(ms, 50),
        "w3_p99_ms": percentile(ms, 99),
        "w3_mean_ms": statistics.fmean(ms),
    }


def w4_metrics(wall: float, iters: int, width: int, sleep: float) -> dict[str, float]:
    """W4: ``iters`` x (``width`` parallel sleeps, wait all) -> overhead over the ideal wall."""
    ideal = iters * width * sleep / WORKERS
    return {"w4_wall_s": wall, "w4_overhead_s": wall - ideal}


def check(results: list[Any], expected: list[Any], what: str) -> None:
    """Fail loudly if a system returned wrong or reordered results (no faked numbers)."""
    if list(results) != list(expected):
        bad = next(
            (i for i, (a, b) in enumerate(zip(results, expected, strict=False)) if a != b),
            min(len(results), len(expected)),
        )
        raise AssertionError(
            f"{what}: wrong results (len {len(results)} vs {len(expected)}, first bad at {bad})"
        )


class BenchSystem:
    """Base class of one benchmarked system (2 worker processes)."""

    name = "base"
    label = "base"
    """Human name for the table."""
    packages: tuple[str, ...] = ()
    """Distribution names whose versions are recorded."""

    # --- primitives -----------------------------------------------------------------------
    def start(self) -> None:
        """Bring the system up; return when both workers can run tasks."""
        raise NotImplementedError

    def map(self, fn: Callable[[Any], Any], args: list[Any]) -> list[Any]:
        """Run ``fn`` over ``args`` as one map; results in submission order."""
        raise NotImplementedError

    def call(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """Submit one ``fn(arg)`` and wait for it."""
        raise NotImplementedError

    def close(self) -> None:
        """Shut the system down (not timed)."""

    # --- warm-up and workloads ------------------------------------------------------------
    def warmup(self) -> None:
        """Untimed: import task modules in both workers and exercise every code path once."""
        check(self.map(tasks.noop, list(range(50))), [i + 1 for i in range(50)], "warm-up map")
        self.map(tasks.sleep, [0.02] * (2 * WORKERS))
        for i in range(5):
            check([self.call(tasks.noop, i)], [i + 1], "warm-up call")

    def w1(self, n: int = 2000) -> dict[str, float]:
        """W1: ``n`` no-op calls as one map."""
        args = list(range(n))
        t0 = time.perf_counter()
        out = self.map(tasks.noop, args)
        wall = time.perf_counter() - t0
        check(out, [x + 1 for x in args], "w1")
        return w1_metrics(wall, n)

    def w2(self, n: int = 200, sleep: float = 0.01) -> dict[str, float]:
        """W2: ``n`` sleeps of ``sleep`` s as one map."""
        t0 = time.perf_counter()
        out = self.map(tasks.sleep, [sleep] * n)
        wall = time.perf_counter() - t0
        check(out, [sleep] * n, "w2")
        return w2_metrics(wall, n, sleep)

    def w3(self, n: int = 200) -> dict[str, float]:
        """W3: ``n`` sequential single submissions, each waited for."""
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            out = self.call(tasks.noop, i)
            lat.append(time.perf_counter() - t0)
            if out != i + 1:
                raise AssertionError(f"w3: call {i} returned {out!r}")
        return w3_metrics(lat)

    def w4(self, iters: int = 10, width: int = 20, sleep: float = 0.01) -> dict[str, float]:
        """W4: ``iters`` iterations of ``width`` parallel sleeps, each waiting for all."""
        t0 = time.perf_counter()
        for _ in range(iters):
            out = self.map(tasks.sleep, [sleep] * width)
            if len(out) != width:
                raise AssertionError("w4: missing results")
        wall = time.perf_counter() - t0
        return w4_metrics(wall, iters, width, sleep)

    def run(self, workloads: Iterable[str]) -> dict[str, float]:
        """Start (timed as ``startup_s``), warm up and run ``workloads``, close (``close_s``)."""
        t0 = time.perf_counter()
        self.start()
        startup = time.perf_counter() - t0
        try:
            metrics = self.run_workloads(workloads)
        finally:
            t1 = time.perf_counter()
            self.close()
            close = time.perf_counter() - t1
        return {"startup_s": startup, **metrics, "close_s": close}

    def run_workloads(self, workloads: Iterable[str]) -> dict[str, float]:
        """Warm up, then run the named workloads in order; return their metrics."""
        self.warmup()
        metrics: dict[str, float] = {}
        for name in workloads:
            method = getattr(self, name, None)
            if method is None:
                raise NotImplementedError(f"{self.name} does not implement {name}")
            metrics.update(method(**DEFAULTS.get(name, {})))
        return metrics
