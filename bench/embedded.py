"""Quick tasklift-only bench of the embedded engine (issue 7 targets W1-W5), median of N runs.

    python bench/embedded.py                       # W1-W4, 3 fresh interpreters, medians
    python bench/embedded.py --w5 1000000          # ... and W5 (one work of 1,000,000 jobs)
    python bench/embedded.py --repeats 1 --json    # one run, one JSON object

Every job is persisted (SQLite, WAL, synchronous=NORMAL) exactly as in normal use, with the
default settings; start-up (worker processes, first import) is excluded by a warm-up work and
reported separately. Besides wall-clock figures it reports the CPU time of the submitting
process (engine, I/O thread, caller) per job: a figure that machine load inflates much less.
Each repeat runs in a fresh interpreter with a fresh ``TASKLIFT_HOME`` (no memo hits).
``bench/run.py`` runs the same workloads next to the peers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tasklift import Workflow, shutdown, work
from tasklift.settings import Settings

TARGETS = {
    "w1_jobs_per_s": (">=", 5000.0),
    "w2_efficiency": (">=", 0.96),
    "w3_p50_ms": ("<=", 1.0),
    "w3_p99_ms": ("<=", 3.0),
    "w4_overhead_s": ("<=", 0.06),
    "w5_create_s": ("<=", 20.0),
    "w5_first_result_s": ("<=", 2.0),
    "w5_peak_rss_mb": ("<=", 1024.0),
}
"""Issue 7 targets (2 workers, 2 cores)."""


@work
def noop(x, tag=0):
    return x + 1


@work
def nap(x, seconds=0.01, tag=0):
    time.sleep(seconds)
    return x


def _pct(values: list[float], q: float) -> float:
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def measure(n_w1: int, n_w3: int, n_w5: int) -> dict[str, float]:
    """The workflow function: every workload, timed from inside it."""
    out: dict[str, float] = {}
    t = time.perf_counter()
    noop(group_kwargs=[{"x": -i - 1} for i in range(4)])  # warm-up: workers import the code
    out["warmup_s"] = time.perf_counter() - t
    nap(group_kwargs=[{"x": i, "seconds": 0.02, "tag": "warm"} for i in range(4)])
    for i in range(5):
        noop(x=-100 - i)

    t, cpu = time.perf_counter(), time.process_time()
    res = noop(group_kwargs=[{"x": i} for i in range(n_w1)])
    wall = time.perf_counter() - t
    assert res == [i + 1 for i in range(n_w1)]
    out["w1_jobs_per_s"] = n_w1 / wall
    out["w1_engine_cpu_us_per_job"] = (time.process_time() - cpu) / n_w1 * 1e6

    t = time.perf_counter()
    got = nap(group_kwargs=[{"x": i, "tag": "w2"} for i in range(200)])
    wall = time.perf_counter() - t
    assert got == list(range(200))
    out["w2_efficiency"] = (200 * 0.01 / 2) / wall

    lat = []
    cpu = time.process_time()
    for i in range(n_w3):
        t = time.perf_counter()
        value = noop(x=10_000 + i)
        lat.append((time.perf_counter() - t) * 1000)
        assert value == 10_001 + i
    out["w3_p50_ms"] = _pct(lat, 50)
    out["w3_p99_ms"] = _pct(lat, 99)
    out["w3_engine_cpu_ms_per_call"] = (time.process_time() - cpu) / n_w3 * 1e3

    t = time.perf_counter()
    for it in range(10):
        got = nap(group_kwargs=[{"x": it * 1000 + j, "tag": "w4"} for j in range(20)])
        assert len(got) == 20
    out["w4_overhead_s"] = time.perf_counter() - t - 10 * 20 * 0.01 / 2

    if n_w5:
        kwargs = [{"x": i, "tag": "w5"} for i in range(n_w5)]
        t = time.perf_counter()
        handle = noop(group_kwargs=kwargs, return_work=True)
        out["w5_submit_s"] = time.perf_counter() - t  # first chunk stored and running
        next(iter(handle.as_completed()))
        out["w5_first_result_s"] = time.perf_counter() - t
        assert handle.wait_stored(timeout=600)
        out["w5_create_s"] = time.perf_counter() - t  # every job stored
        values = handle.results()
        out["w5_wall_s"] = time.perf_counter() - t
        assert len(values) == n_w5 and values[0] == 1 and values[-1] == n_w5
        handle.close()
        del values, kwargs
        out["w5_jobs_per_s"] = n_w5 / out["w5_wall_s"]
        out["w5_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def run_once(args: argparse.Namespace) -> dict[str, float]:
    """One run in this interpreter, in a fresh home."""
    with tempfile.TemporaryDirectory(prefix="tasklift-bench-") as home:
        settings = Settings(home=Path(home), workers=args.workers, quiet=True)
        t = time.perf_counter()
        wf = Workflow(func=measure, settings=settings, name="bench-embedded", fresh=True)
        figures = wf.run(args.w1, args.w3, args.w5)
        figures["total_s"] = time.perf_counter() - t
        shutdown()
    return figures


def _verdict(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    op, bound = TARGETS[name]
    ok = value >= bound if op == ">=" else value <= bound
    return f"{'met' if ok else 'MISSED'} ({op} {bound:g})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--w1", type=int, default=2000, help="jobs in the W1 work")
    parser.add_argument("--w3", type=int, default=200, help="sequential single-job works")
    parser.add_argument("--w5", type=int, default=0, help="jobs in the W5 work (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh interpreters; medians")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        print(json.dumps(run_once(args)))
        return 0
    runs: list[dict[str, float]] = []
    child = [sys.executable, __file__, "--once", "--workers", str(args.workers)]
    child += ["--w1", str(args.w1), "--w3", str(args.w3), "--w5", str(args.w5)]
    for _ in range(args.repeats):
        load = os.getloadavg()[0]
        done = subprocess.run(child, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            return done.returncode
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        figures["load1_at_start"] = load
        runs.append(figures)
    medians: dict[str, Any] = {
        k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "workers"
    }
    medians["runs"] = runs
    medians["workers"] = args.workers
    if args.json:
        print(json.dumps(medians))
        return 0
    print(
        f"median of {len(runs)} runs, {args.workers} workers, load1 at start "
        + ", ".join(f"{r['load1_at_start']:.2f}" for r in runs)
    )
    for name, value in medians.items():
        if name in ("runs", "workers"):
            continue
        spread = [r[name] for r in runs]
        print(
            f"  {name:20s} {value:12.3f}   [{min(spread):.3f} .. {max(spread):.3f}]  "
            f"{_verdict(name, value)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
