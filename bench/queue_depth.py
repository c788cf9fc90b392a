"""Per-job cost against queue depth through `tasklift server` (issue 17 item 6).

    python bench/queue_depth.py                      # one 200,000-job work, then 20 x 1,000
    python bench/queue_depth.py --jobs 50000 --modes one
    python bench/queue_depth.py --jobs 2000 --works 4 --work-size 500 --slice 0.5 --json

Each mode runs on a server of its own (``bench/service.py``: scratch PostgreSQL database,
STOMP bus, 2 local workers). ``one`` submits one work of ``--jobs`` no-op jobs; ``twenty``
submits ``--works`` works of ``--work-size`` jobs one after the other, each waited for. A
thread samples the number of ended jobs from the database (the works' counters) every
``--interval`` seconds; the run is cut into ``--slice``-second slices, the last, partial one
left out; they start at the first sample that saw a result (the time to it is printed on its
own). Printed per mode: jobs/s per slice, their median, min, max, the largest deviation
from the median in %, and the peak RSS (``VmHWM``) of the server process and of its children
(the workers) separately. Every job's result is checked; the exit code is 1 if one is wrong
or missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tasklift import Workflow, shutdown, work
from tasklift.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

_ENDED = sa.text(
    "SELECT COALESCE(SUM(n_finished + n_failed + n_cancelled + n_skipped), 0), "
    "COALESCE(SUM(n_finished), 0) FROM works"
)


@work
def noop(x):
    return x + 1


def _vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size of a process in KiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from the parent ids in /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        here = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == here]
        found += kids
        frontier += kids
    return found


class Sampler(threading.Thread):
    """Samples (time, ended jobs) from the database and the server's peak RSS, until stopped."""

    def __init__(self, db_url: str, server_pid: int, interval: float) -> None:
        super().__init__(name="queue-depth-sampler", daemon=True)
        self.engine = sa.create_engine(db_url, pool_size=1)
        self.server_pid = server_pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.server_hwm_kb = 0
        self.children_hwm_kb: dict[int, int] = {}  # pid -> its VmHWM (last read)
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def sample(self) -> None:
        """One sample now (also called from the measuring thread at phase boundaries)."""
        with self.engine.connect() as conn:
            ended = int(conn.execute(_ENDED).one()[0])
        self.samples.append((time.monotonic(), ended))
        self.server_hwm_kb = max(self.server_hwm_kb, _vm_hwm_kb(self.server_pid) or 0)
        for pid in _descendants(self.server_pid):
            hwm = _vm_hwm_kb(pid)
            if hwm is not None:
                self.children_hwm_kb[pid] = max(hwm, self.children_hwm_kb.get(pid, 0))

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval):
                self.sample()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc

    def stop(self) -> None:
        """Stop sampling (within one interval) and release the database."""
        self._stop_event.set()
        self.join(timeout=30)
        self.engine.dispose()
        if self.error is not None:
            raise RuntimeError(f"sampling failed: {self.error!r}") from self.error


def slices(samples: list[tuple[float, int]], t0: float, t1: float, width: float) -> list[float]:
    """Jobs/s in consecutive ``width``-second slices of ``[t0, t1]`` (a partial last one left
    out), the ended-job count at each slice edge interpolated between samples."""

    def ended_at(t: float) -> float:
        before = [s for s in samples if s[0] <= t]
        after = [s for s in samples if s[0] >= t]
        if not before:
            return float(after[0][1])
        if not after:
            return float(before[-1][1])
        (ta, ca), (tb, cb) = before[-1], after[0]
        return float(ca) if tb == ta else ca + (cb - ca) * (t - ta) / (tb - ta)

    rates = []
    edge = t0
    while edge + width <= t1 + 1e-9:
        rates.append((ended_at(edge + width) - ended_at(edge)) / width)
        edge += width
    return rates


def summary(rates: list[float]) -> dict[str, float]:
    """Median, min, max, the largest deviation from the median in %, and the depth trend: the
    median of the second half of the slices (shallow queue) over that of the first half (deep
    queue); 1.0 when per-job cost does not depend on depth (0 slices: zeros)."""
    if not rates:
        return {"median": 0.0, "min": 0.0, "max": 0.0, "max_dev_pct": 0.0, "late_over_early": 0.0}
    med = statistics.median(rates)
    dev = max(abs(r - med) for r in rates) / med * 100 if med else 0.0
    half = len(rates) // 2
    early = statistics.median(rates[:half]) if half else med
    late = statistics.median(rates[half:])
    return {
        "median": med,
        "min": min(rates),
        "max": max(rates),
        "max_dev_pct": dev,
        "late_over_early": late / early if early else 0.0,
    }


def run_jobs(mode: str, sampler: Sampler, args: argparse.Namespace) -> dict[str, Any]:
    """The workflow function: warm up, then the timed jobs; returns the phase's figures."""
    noop(group_kwargs=[{"x": -i - 1} for i in range(20)])  # warm-up: workers started
    sampler.sample()
    t0 = time.monotonic()
    wrong = 0
    if mode == "one":
        n = args.jobs
        results = noop(group_kwargs=[{"x": i} for i in range(n)])
        wrong += sum(1 for i, r in enumerate(results) if r != i + 1) + abs(len(results) - n)
    else:
        n = args.works * args.work_size
        for w in range(args.works):
            base = w * args.work_size
            results = noop(group_kwargs=[{"x": base + i} for i in range(args.work_size)])
            wrong += sum(1 for i, r in enumerate(results) if r != base + i + 1)
            wrong += abs(len(results) - args.work_size)
    t1 = time.monotonic()
    sampler.sample()
    return {"n": n, "t0": t0, "t1": t1, "wrong": wrong}


def measure_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One mode on a server of its own: its slices, summary, RSS and checks."""
    # imported here: the workers import this module from the workflow's archive, where
    # ``bench`` is not a package on the path
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.service import scratch_server

    with scratch_server(args.db, args.bus, args.server_module) as srv:
        sampler = Sampler(srv.db_url, srv.pid, args.interval)
        sampler.start()
        try:
            client = Settings(home=srv.tmp / "client", token=srv.token, quiet=True)
            phase: dict[str, Any] = Workflow(
                func=run_jobs, service=srv.url, settings=client, fresh=True
            ).run(mode, sampler, args)
            shutdown()
            sampler.sample()  # the children's peak before the server stops them
        finally:
            sampler.stop()
        with sa.create_engine(srv.db_url).connect() as conn:
            finished = conn.execute(
                sa.text("SELECT COUNT(*) FROM jobs WHERE state = 'finished'")
            ).scalar_one()
    # the ended jobs before the timed phase: the sample taken just before it (the first one
    # after t0 may already count jobs of a fast phase)
    base = max((t, c) for t, c in sampler.samples if t <= phase["t0"])[1]
    wall = phase["t1"] - phase["t0"]
    # slices start at the first sample that saw a job end: the time to the first result
    # (building, sending and storing the first chunk of the work) is reported on its own
    started = next((t for t, c in sampler.samples if c > base), phase["t0"])
    rates = slices(sampler.samples, started, phase["t1"], args.slice)
    return {
        "mode": mode,
        "jobs": phase["n"],
        "wall_s": wall,
        "first_result_s": started - phase["t0"],
        "jobs_per_s": phase["n"] / wall,
        "slice_s": args.slice,
        "slices": rates,
        **summary(rates),
        "wrong_results": phase["wrong"],
        "ended_in_db": sampler.samples[-1][1] - base,
        "finished_in_db": int(finished),
        "server_peak_rss_mb": sampler.server_hwm_kb / 1024,
        "children_peak_rss_mb": sorted(
            (kb / 1024 for kb in sampler.children_hwm_kb.values()), reverse=True
        ),
        "load1_at_start": os.getloadavg()[0],
    }


def print_mode(rec: dict[str, Any]) -> None:
    """The human-readable figures of one mode."""
    title = {"one": "one work", "twenty": "works one after the other"}[rec["mode"]]
    print(
        f"\n{rec['mode']}: {rec['jobs']:,} jobs ({title}), wall {rec['wall_s']:.1f} s, "
        f"{rec['jobs_per_s']:,.0f} jobs/s overall"
    )
    per_line = 10
    rates = rec["slices"]
    print(
        f"  jobs/s per {rec['slice_s']:g} s slice ({len(rates)} slices, from the first sample "
        f"with a result, {rec['first_result_s']:.1f} s after the call):"
    )
    for i in range(0, len(rates), per_line):
        print("   " + " ".join(f"{r:7,.0f}" for r in rates[i : i + per_line]))
    print(
        f"  median {rec['median']:,.0f}  min {rec['min']:,.0f}  max {rec['max']:,.0f}  "
        f"max deviation from the median {rec['max_dev_pct']:.1f} %"
    )
    print(
        f"  depth trend: median of the second half of the slices / first half "
        f"{rec['late_over_early']:.2f} (1.00: per-job cost independent of queue depth)"
    )
    kids = ", ".join(f"{mb:,.0f}" for mb in rec["children_peak_rss_mb"]) or "-"
    print(f"  peak RSS (VmHWM): server {rec['server_peak_rss_mb']:,.0f} MB; children {kids} MB")
    ok = rec["wrong_results"] == 0 and rec["finished_in_db"] >= rec["jobs"]
    print(
        f"  results: {'all correct' if ok else 'WRONG'} ({rec['wrong_results']} wrong; "
        f"{rec['finished_in_db']:,} finished jobs in the database, warm-up included)"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=PG_ADMIN, help="admin URL of PostgreSQL, or sqlite:///PATH")
    ap.add_argument(
        "--bus",
        default="stomp://127.0.0.1:61613",
        help="STOMP broker (host:port taken from it) or 'embedded'",
    )
    ap.add_argument("--jobs", type=int, default=200_000, help="jobs of the one work")
    ap.add_argument("--works", type=int, default=20, help="works of the comparison")
    ap.add_argument("--work-size", type=int, default=1000, help="jobs per comparison work")
    ap.add_argument("--modes", default="one,twenty", help="one, twenty or both")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    ap.add_argument("--slice", type=float, default=1.0, help="seconds per throughput slice")
    ap.add_argument(
        "--server-module",
        default="tasklift.cli",
        help="module run as the server (an instrumented wrapper when profiling)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("one", "twenty")]
    if bad or not modes:
        ap.error(f"--modes takes one, twenty or both, not {args.modes!r}")
    for name in ("jobs", "works", "work_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.interval <= 0 or args.slice <= 0:
        ap.error("--interval and --slice must be positive")
    records = [measure_mode(mode, args) for mode in modes]
    ok = all(r["wrong_results"] == 0 and r["finished_in_db"] >= r["jobs"] for r in records)
    if args.json:
        print(json.dumps({"ok": ok, "modes": records}))
    else:
        db = "postgresql" if args.db.startswith("postgresql") else "sqlite"
        bus = "embedded" if args.bus == "embedded" else "stomp"
        print(f"through tasklift server ({db}, bus {bus}, 2 workers)")
        for rec in records:
            print_mode(rec)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
