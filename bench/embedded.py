"""Embedded-engine figures on this machine: W1 throughput, W3 latency, W4 iterate-and-wait.

    python bench/embedded.py [--workers 2] [--json]

Every job is persisted (SQLite, WAL, synchronous=NORMAL) exactly as in normal use; start-up
(worker processes, first import) is excluded by a warm-up work and reported separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tasklift import Workflow, shutdown, work
from tasklift.settings import Settings


@work
def noop(x):
    return x + 1


@work
def nap(x, seconds=0.01):
    time.sleep(seconds)
    return x


def measure(n_w1: int, n_w3: int, iters: int, width: int) -> dict[str, float]:
    out: dict[str, float] = {}
    t = time.perf_counter()
    noop(group_kwargs=[{"x": -i - 1} for i in range(4)])  # warm-up: workers import the code
    out["warmup_s"] = time.perf_counter() - t

    t = time.perf_counter()
    res = noop(group_kwargs=[{"x": i} for i in range(n_w1)])
    wall = time.perf_counter() - t
    assert res == [i + 1 for i in range(n_w1)]
    out["w1_jobs_per_s"] = n_w1 / wall

    lat = []
    for i in range(n_w3):
        t = time.perf_counter()
        assert noop(x=10_000 + i) == 10_001 + i
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    out["w3_p50_ms"] = statistics.median(lat)
    out["w3_p99_ms"] = lat[min(len(lat) - 1, int(0.99 * len(lat)))]

    t = time.perf_counter()
    for it in range(iters):
        got = nap(group_kwargs=[{"x": it * 1000 + j} for j in range(width)])
        assert len(got) == width
    out["w4_wall_s"] = time.perf_counter() - t
    out["w4_overhead_s"] = out["w4_wall_s"] - iters * width * 0.01 / 2
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--w1", type=int, default=2000, help="jobs in the W1 work")
    parser.add_argument("--w3", type=int, default=200, help="sequential single-job works")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tasklift-bench-") as home:
        settings = Settings(home=Path(home), workers=args.workers, quiet=True)
        t = time.perf_counter()
        wf = Workflow(func=measure, settings=settings, name="bench-embedded", fresh=True)
        figures = wf.run(args.w1, args.w3, 10, 20)
        figures["total_s"] = time.perf_counter() - t
        shutdown()
    figures["workers"] = args.workers
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"workers              {args.workers}")
        print(f"start-up (warm-up)   {figures['warmup_s']:.3f} s")
        print(f"W1 {args.w1} no-op jobs  {figures['w1_jobs_per_s']:,.0f} jobs/s")
        print(
            f"W3 {args.w3} single jobs  p50 {figures['w3_p50_ms']:.2f} ms  "
            f"p99 {figures['w3_p99_ms']:.2f} ms"
        )
        print(
            f"W4 10 x 20 x 10 ms   wall {figures['w4_wall_s']:.3f} s  "
            f"(overhead {figures['w4_overhead_s']:.3f} s over the ideal 1.0 s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
