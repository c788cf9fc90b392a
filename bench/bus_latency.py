"""One-way latency of a single-record batch, and batch throughput, over each bus.

    python bench/bus_latency.py [--url stomp://guest:guest@127.0.0.1:61613/bench] [--n 2000]
                                [--buses embedded,stomp] [--json]

Publisher and subscriber are separate buses (separate broker connections for STOMP) in one
process, so both stamps come from one clock. Each sample publishes one ``ResultRecord`` and
waits on an Event for its arrival (no spinning: a busy loop starves stomp.py's receiver thread).
Run ``scripts/enable-stomp.sh`` first for the STOMP figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from tasklift.bus.base import Bus
from tasklift.bus.registry import bus_from_url, mask_bus_url
from tasklift.records import ResultRecord

WARMUP = 50


def _pair(kind: str, url: str) -> tuple[Bus, Bus]:
    if kind == "embedded":
        bus = bus_from_url("embedded://")
        return bus, bus
    return bus_from_url(url), bus_from_url(url)


def _percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, max(0, round(q * len(sorted_ms)) - 1))]


def measure(kind: str, url: str, n: int) -> dict[str, Any]:
    publisher, subscriber = _pair(kind, url)
    arrived = threading.Event()
    stamps: list[float] = []
    count = [0]
    all_in = threading.Event()

    def on_one(messages: Sequence[Any]) -> None:
        stamps.append(time.perf_counter())
        arrived.set()

    def on_many(messages: Sequence[Any]) -> None:
        count[0] += len(messages)
        if count[0] >= n:
            all_in.set()

    try:
        subscriber.subscribe("work.1", on_one)
        subscriber.subscribe("work.2", on_many)
        samples: list[float] = []
        for i in range(n + WARMUP):
            arrived.clear()
            stamps.clear()
            t0 = time.perf_counter()
            publisher.publish("work.1", [ResultRecord(i, i, "finished", b"%d" % i, done_seq=i)])
            if not arrived.wait(5.0):
                raise RuntimeError(f"{kind}: message {i} did not arrive within 5 s")
            if i >= WARMUP:
                samples.append((stamps[0] - t0) * 1e3)
        samples.sort()

        t0 = time.perf_counter()
        for start in range(0, n, 50):
            batch = [ResultRecord(j, j, "finished", b"%d" % j) for j in range(start, start + 50)]
            publisher.publish("work.2", batch[: n - start])
        if not all_in.wait(30.0):
            raise RuntimeError(f"{kind}: only {count[0]} of {n} batched records arrived")
        batched_s = time.perf_counter() - t0
    finally:
        publisher.close()
        if subscriber is not publisher:
            subscriber.close()
    return {
        "bus": kind,
        "samples": len(samples),
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(_percentile(samples, 0.99), 3),
        "max_ms": round(samples[-1], 3),
        "batched_records": n,
        "batched_s": round(batched_s, 4),
        "batched_records_per_s": round(n / batched_s),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="stomp://guest:guest@127.0.0.1:61613/tasklift-bench")
    parser.add_argument("--n", type=int, default=2000, help="samples (and batched records)")
    parser.add_argument("--buses", default="embedded,stomp")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    rows = [measure(kind.strip(), args.url, args.n) for kind in args.buses.split(",")]
    if args.json:
        print(json.dumps({"url": mask_bus_url(args.url), "results": rows}, indent=2))
        return 0
    print(f"bus latency, single-record batches, n={args.n} ({mask_bus_url(args.url)})")
    print(f"{'bus':<10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'batched rec/s':>15}")
    for r in rows:
        print(
            f"{r['bus']:<10}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['max_ms']:>9.3f}"
            f"{r['batched_records_per_s']:>15,}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
