"""Side-by-side benchmark of tasklift and its peers (issue 7), from one command.

    bash bench/setup.sh                                   # once: .venv-bench with the peers
    .venv-bench/bin/python bench/run.py                   # all systems, 3 repeats
    .venv-bench/bin/python bench/run.py --systems ray,tasklift --repeats 1
    .venv-bench/bin/python bench/run.py --docs docs/benchmarks.md   # also render the doc
    .venv-bench/bin/python bench/run.py --render-only --docs docs/benchmarks.md  # from JSON

Each system runs in its own fresh interpreter (``python -m bench.child``), once per repeat, so
a crashing peer cannot take the run down and no system inherits another's state; repeats go
round-robin over the systems so slow drifts in machine load hit all of them alike. Start-up is
measured separately from the timed workloads. Reported: median and range (min-max) per metric.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.systems import SYSTEMS  # noqa: E402
from bench.systems.base import DEFAULTS, PEER_WORKLOADS  # noqa: E402

DEFAULT_SYSTEMS = ("processpool", "ray", "parsl", "dask", "celery", "tasklift", "tasklift-server")
TASKLIFT_ONLY = ("w5",)
"""Workloads passed only to the tasklift systems."""
SEPARATE = ("w5",)
"""Workloads run in a child of their own, ``--w5-repeats`` times after the round-robin (W5 alone
takes minutes and its peak RSS must not include the other workloads')."""
KEEP_MARKER = "<!-- analysis below: kept by bench/run.py when it renders this file -->"
"""Everything from this line on in an existing ``--docs`` file survives a re-render."""
PACKAGES = ("tasklift", "ray", "parsl", "dask", "distributed", "celery", "kombu", "redis", "psutil")

# metric key -> (column title, format, higher is better)
COLUMNS: dict[str, tuple[str, str, bool]] = {
    "startup_s": ("start-up s", "{:.2f}", False),
    "w1_jobs_per_s": ("W1 jobs/s", "{:,.0f}", True),
    "w2_efficiency": ("W2 efficiency", "{:.3f}", True),
    "w3_p50_ms": ("W3 p50 ms", "{:.2f}", False),
    "w3_p99_ms": ("W3 p99 ms", "{:.2f}", False),
    "w4_overhead_s": ("W4 overhead s", "{:.3f}", False),
}
W5_COLUMNS: dict[str, tuple[str, str, bool]] = {
    "w5_submit_s": ("W5 call returns s", "{:.2f}", False),
    "w5_create_s": ("W5 create s", "{:.2f}", False),
    "w5_first_result_s": ("W5 first result s", "{:.2f}", False),
    "w5_wall_s": ("W5 wall s", "{:.1f}", False),
    "w5_peak_rss_mb": ("W5 peak RSS MB", "{:,.0f}", False),
}
TARGETS: list[tuple[str, str, str, float]] = [
    # (system, metric, comparison, bound) from issue 7
    ("tasklift", "w1_jobs_per_s", ">=", 5000.0),
    ("tasklift", "w2_efficiency", ">=", 0.96),
    ("tasklift", "w3_p50_ms", "<=", 1.0),
    ("tasklift", "w3_p99_ms", "<=", 3.0),
    ("tasklift", "w4_overhead_s", "<=", 0.06),
    ("tasklift", "w5_create_s", "<=", 20.0),
    ("tasklift", "w5_peak_rss_mb", "<=", 1024.0),
    ("tasklift", "w5_first_result_s", "<=", 2.0),
    ("tasklift-server", "w1_jobs_per_s", ">=", 2000.0),
    ("tasklift-server", "w3_p50_ms", "<=", 5.0),
]


# --- running -------------------------------------------------------------------------------
def child_env(home: Path) -> dict[str, str]:
    """Environment of one child: bench importable by every worker, peers quiet and offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # console scripts of the bench venv (Parsl launches process_worker_pool.py by name)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["TASKLIFT_HOME"] = str(home)
    env["TASKLIFT_WORKERS"] = "2"
    env["TASKLIFT_QUIET"] = "1"
    return env


def kill_group(pgid: int) -> None:
    """Kill whatever is left of a child's process group (workers it failed to stop)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_child(system: str, workloads: list[str], timeout: float, tmp: Path, tag: str) -> dict:
    """Run ``bench.child`` for one system once; return its record (never raises)."""
    out = tmp / f"{system}-{tag}.json"
    log = tmp / f"{system}-{tag}.log"
    home = tmp / f"home-{system}-{tag}"
    home.mkdir()
    cmd = [sys.executable, "-m", "bench.child", "--system", system, "--out", str(out),
           "--workloads", ",".join(workloads)]  # fmt: skip
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=child_env(home), stdout=fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        kill_group(proc.pid)
        if code is None:
            proc.wait()
    elapsed = time.monotonic() - t0
    record: dict[str, Any]
    try:
        record = json.loads(out.read_text())
    except (OSError, ValueError):
        record = {"system": system, "status": "error"}
        record["reason"] = (
            f"timed out after {timeout:.0f} s" if code is None else f"exit code {code}, no result"
        )
    record["elapsed_s"] = elapsed
    record["load1_at_start"] = load
    if record.get("status") == "error":
        record["log_tail"] = log.read_text(errors="replace")[-3000:]
        record.pop("traceback", None)  # the log tail holds it
    return record


def summarize(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Median, min, max and count of every metric over the successful runs."""
    values: dict[str, list[float]] = {}
    for run in runs:
        if run.get("status") != "ok":
            continue
        for key, value in run.get("metrics", {}).items():
            if isinstance(value, int | float):
                values.setdefault(key, []).append(float(value))
    return {
        key: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
        for key, v in values.items()
    }


# --- machine and versions ------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, OS and Python, from /proc where available."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor() or "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return info


def package_versions() -> dict[str, str]:
    """Versions of tasklift, the peers and redis-server, as installed in this interpreter."""
    out: dict[str, str] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "missing"
    try:
        text = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        out["redis-server"] = next(
            (w.split("=", 1)[1] for w in text.split() if w.startswith("v=")), text.strip()
        )
    except (OSError, subprocess.SubprocessError):
        out["redis-server"] = "missing"
    return out


def command_line(argv: list[str]) -> str:
    """The command as a user would type it from the repository root."""
    exe = Path(sys.executable)
    try:
        exe_s = os.path.relpath(exe, ROOT) if exe.is_relative_to(ROOT) else str(exe)
    except ValueError:
        exe_s = str(exe)
    return shlex.join([exe_s, "bench/run.py", *argv])


# --- rendering -----------------------------------------------------------------------------
def cell(summary: dict[str, dict[str, float]], key: str, fmt: str, with_range: bool = True) -> str:
    """``median (min-max)`` or ``-``."""
    s = summary.get(key)
    if not s:
        return "-"
    text = fmt.format(s["median"])
    if with_range and s["n"] > 1:
        text += f" ({fmt.format(s['min'])}-{fmt.format(s['max'])})"
    return text


def columns_for(results: dict) -> dict[str, tuple[str, str, bool]]:
    """The table's columns: W1-W4 always, W5 only when some system measured it."""
    cols = dict(COLUMNS)
    if any("w5_wall_s" in r.get("summary", {}) for r in results["systems"].values()):
        cols.update(W5_COLUMNS)
    return cols


def status_text(entry: dict) -> str:
    """Why a system has no numbers (skipped / error), else ``""``."""
    if entry.get("summary"):
        failed = [r for r in entry["runs"] if r.get("status") != "ok"]
        return f"{len(failed)} of {len(entry['runs'])} runs failed" if failed else ""
    reasons = {r.get("reason", "?") for r in entry["runs"]}
    kind = "skipped" if all(r.get("status") == "skipped" for r in entry["runs"]) else "failed"
    return f"{kind}: " + "; ".join(sorted(reasons))


def ratios(results: dict, base: str = "tasklift") -> list[tuple[str, dict[str, float | None]]]:
    """tasklift/peer ratio of the medians, per peer and metric."""
    systems = results["systems"]
    mine = systems.get(base, {}).get("summary", {})
    if not mine:
        return []
    rows = []
    for name, entry in systems.items():
        if name.startswith("tasklift") or not entry.get("summary"):
            continue
        row: dict[str, float | None] = {}
        for key in COLUMNS:
            a, b = mine.get(key), entry["summary"].get(key)
            row[key] = a["median"] / b["median"] if a and b and b["median"] else None
        rows.append((name, row))
    return rows


def print_table(results: dict) -> None:
    """The results table on the terminal (rich if available)."""
    cols = columns_for(results)
    header = ["system", *(c[0] for c in cols.values())]
    rows = []
    for name, entry in results["systems"].items():
        note = status_text(entry)
        if entry.get("summary"):
            rows.append([name, *(cell(entry["summary"], k, c[1]) for k, c in cols.items())])
            if note:
                rows.append(["", note])
        else:
            rows.append([name, note])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(" | ".join(header))
        for row in rows:
            print(" | ".join(row))
    else:
        table = Table(title=f"median (min-max) of {results['repeats']} run(s), 2 workers each")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row, *([""] * (len(header) - len(row))))
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
        console.print(table)
    rr = ratios(results)
    if rr:
        print("\ntasklift / peer (medians; W1, W2: > 1 is better; others: < 1 is better)")
        for name, row in rr:
            parts = [f"{COLUMNS[k][0]} {v:.2f}" for k, v in row.items() if v is not None]
            print(f"  vs {name:12s} " + ", ".join(parts))


def render_markdown(results: dict) -> str:
    """``docs/benchmarks.md`` from a results JSON."""
    meta = results["meta"]
    m = meta["machine"]
    cols = columns_for(results)
    systems = results["systems"]
    lines = [
        "# Benchmarks: tasklift side by side with its peers",
        "",
        f"Generated by `bench/run.py` on {meta['date']}. Every system runs with exactly 2 worker "
        "processes on the same machine; each cell is the median of "
        f"{results['repeats']} run(s) in fresh interpreters, with the range (min-max) in brackets. "
        "Start-up is measured separately and excluded from the workloads.",
        "",
    ]
    cores = m.get("cores") or 1
    busiest = max(meta["load_start"], meta["load_end"])
    if busiest > 0.5 * cores:
        lines += [
            f"> **Noisy run**: the machine was shared with other work (1-min load average up to "
            f"{busiest:.1f} on {cores} cores), so absolute figures are inflated and the ranges "
            "wide. Contention does not hit every system alike (those with more processes, such "
            "as Dask and Celery, suffer most), so the ratios are provisional too: rerun on a "
            "quiet machine for figures to quote.",
            "",
        ]
    lines += [
        "## Headline: tasklift / peer",
        "",
    ]
    rr = ratios(results)
    tl = systems.get("tasklift", {})
    if rr:
        lines += [
            "Ratio of the medians, tasklift divided by the peer. For W1 (jobs/s) and W2 "
            "(efficiency) above 1 means tasklift is better; for start-up, W3 latency and W4 "
            "overhead below 1 means tasklift is better.",
            "",
            "| peer | " + " | ".join(c[0] for c in COLUMNS.values()) + " |",
            "|---|" + "---:|" * len(COLUMNS),
        ]
        for name, row in rr:
            vals = [f"{v:.2f}" if v is not None else "-" for v in row.values()]
            lines.append(f"| {systems[name].get('label', name)} | " + " | ".join(vals) + " |")
    else:
        why = status_text(tl) if tl else "tasklift was not part of this run"
        lines.append(f"No tasklift numbers in this run ({why}), so no ratios yet.")
    lines += [
        "",
        "## Results",
        "",
        "| system | " + " | ".join(c[0] for c in cols.values()) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    notes = []
    for name, entry in systems.items():
        label = entry.get("label", name)
        if entry.get("summary"):
            cells = [cell(entry["summary"], k, c[1]) for k, c in cols.items()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        else:
            lines.append(f"| {label} | " + " | ".join("-" for _ in cols) + " |")
        note = status_text(entry)
        if note:
            notes.append(f"- {label}: {note}")
    if notes:
        lines += ["", *notes]
    target_rows = []
    for system, key, op, bound in TARGETS:
        s = systems.get(system, {}).get("summary", {}).get(key)
        if s is None:
            continue
        met = s["median"] >= bound if op == ">=" else s["median"] <= bound
        title = (COLUMNS | W5_COLUMNS).get(key, (key, "{:g}", True))
        target_rows.append(
            f"| {system} | {title[0]} | {op} {bound:g} | {title[1].format(s['median'])} | "
            f"{'met' if met else 'not met'} |"
        )
    if target_rows:
        lines += [
            "",
            "## Targets of issue 7 (medians)",
            "",
            "| system | metric | target | measured | |",
            "|---|---|---|---:|---|",
            *target_rows,
        ]
    lines += [
        "",
        "## Workloads",
        "",
        "- W1: 2,000 no-op calls `f(x) = x + 1` as one map (tasklift: one work with "
        "`group_kwargs`); jobs/s.",
        "- W2: 200 calls of a 10 ms sleep as one map; efficiency = (200 x 0.01 / 2) / wall.",
        "- W3: 200 sequential single submissions of the no-op, each waited for; p50 and p99 ms.",
        "- W4: 10 iterations x 20 parallel 10 ms sleeps, each iteration waits for all its "
        "results (the HPO loop); overhead = wall - 1.0 s.",
        "- W5 (tasklift only, `--workloads w1,w2,w3,w4,w5`, in a child of its own): one work "
        "of 1,000,000 no-op jobs. Times from the call: the call returns (first chunk stored and "
        "running), first result, create (every job stored, `Work.wait_stored()`), wall (all "
        "results); peak RSS of the process, the caller's own list of 1,000,000 kwargs "
        "dicts included.",
        "- W6 (tasklift only, system `tasklift-server`): W1 and W3 through `tasklift server`.",
        "",
        "Every system gets the same untimed warm-up (a 50-job map, a map of sleeps and 5 single "
        "calls) after start-up. Results are checked (values and order) before a run counts.",
        "",
        "## How each system is set up",
        "",
        "- ProcessPoolExecutor: `ProcessPoolExecutor(2)`, `Executor.map` (chunksize 1) and "
        "`submit().result()`; no persistence: the floor.",
        "- Ray: `ray.init(num_cpus=2)`, `ray.get([f.remote(x) ...])`.",
        "- Parsl: `HighThroughputExecutor(max_workers_per_node=2)` on one `LocalProvider` "
        "block; `strategy='none'` with `strategy_period=0.1` so the block starts at once "
        "(the default 5 s strategy tick would delay the first block); timing starts only "
        "after both workers are connected. Otherwise Parsl's defaults.",
        "- Dask: `LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`, "
        "`client.map(..., pure=False)` / `client.submit(..., pure=False)`.",
        "- Celery: prefork worker `-c 2` as a subprocess, Redis broker and result backend "
        "(own database number and queue), `get(interval=0.01)` on every wait.",
        "- tasklift: `Workflow(func=..., service='local').run()` with `TASKLIFT_WORKERS=2` and "
        "a fresh `TASKLIFT_HOME`; every workload runs inside the one workflow function, timed "
        "there; every job persisted with the default settings and distinct kwargs so "
        "memoisation never turns a job into a cache hit.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {m.get('cpu', '?')}, {m.get('cores')} cores; RAM {m.get('ram_gib', '?')} GiB",
        f"- OS: {m.get('os', '?')} (kernel {m.get('kernel')}); Python {m.get('python')}",
        f"- load average (1 min) at start / end: {meta['load_start']:.2f} / "
        f"{meta['load_end']:.2f} (other processes on the machine add noise)",
        "- packages: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v != "missing"),
        "",
        "## Command",
        "",
        "```",
        "bash bench/setup.sh",
        meta["command"],
        "```",
        "",
        f"Total run time: {meta['elapsed_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def write_docs(path: Path, results: dict) -> None:
    """Render ``path`` from ``results``, keeping its hand-written analysis (after the marker)."""
    kept = ""
    if path.exists():
        old = path.read_text()
        if KEEP_MARKER in old:
            kept = old[old.index(KEEP_MARKER) :]
    text = render_markdown(results)
    path.write_text(text + ("\n" + kept if kept else ""))
    print(f"wrote {path}")


# --- main ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description="Benchmark tasklift against its peers (issue 7).")
    ap.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                    help=f"comma-separated, from: {', '.join(SYSTEMS)}")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workloads", default=",".join(PEER_WORKLOADS),
                    help="w1..w4 for every system; w5 for tasklift only")  # fmt: skip
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    ap.add_argument("--docs", type=Path, default=None, help="also render this markdown file")
    ap.add_argument("--render-only", action="store_true",
                    help="do not run: render --docs (and the table) from --out")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per system run")
    ap.add_argument("--w5-repeats", type=int, default=1, help="runs of W5 (when asked for)")
    args = ap.parse_args(argv)

    if args.render_only:
        results = json.loads(args.out.read_text())
        print_table(results)
        if args.docs:
            write_docs(args.docs, results)
        return 0

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    start = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command_line(argv),
            "machine": machine_info(),
            "versions": package_versions(),
            "load_start": os.getloadavg()[0],
        },
        "repeats": args.repeats,
        "workloads": workloads,
        "params": DEFAULTS,
        "systems": {s: {"runs": []} for s in systems},
    }
    with tempfile.TemporaryDirectory(prefix="tasklift-bench-") as tmp:
        for rep in range(1, args.repeats + 1):
            for system in systems:
                wl = [
                    w for w in workloads
                    if (w not in TASKLIFT_ONLY or system.startswith("tasklift"))
                    and w not in SEPARATE
                ]  # fmt: skip
                if system == "tasklift-server":
                    wl = [w for w in wl if w in ("w1", "w3")]
                print(f"[{rep}/{args.repeats}] {system:12s} ...", end=" ", flush=True)
                rec = run_child(system, wl, args.timeout, Path(tmp), str(rep))
                entry = results["systems"][system]
                entry["runs"].append(rec)
                entry.setdefault("label", rec.get("label", system))
                if rec.get("versions"):
                    entry["versions"] = rec["versions"]
                m = rec.get("metrics", {})
                if rec.get("status") == "ok":
                    print(
                        f"ok in {rec['elapsed_s']:.1f} s (start-up {m.get('startup_s', 0):.2f} s,"
                        f" W1 {m.get('w1_jobs_per_s', 0):,.0f}/s)",
                        flush=True,
                    )
                else:
                    print(f"{rec.get('status')}: {rec.get('reason')}", flush=True)
        separate = [w for w in workloads if w in SEPARATE]
        if separate and "tasklift" in systems:
            for rep in range(1, args.w5_repeats + 1):
                print(f"[{rep}/{args.w5_repeats}] tasklift     {','.join(separate)} ...",
                      end=" ", flush=True)  # fmt: skip
                rec = run_child(
                    "tasklift", separate, max(args.timeout, 1800.0), Path(tmp), f"w5-{rep}"
                )
                if rec.get("status") == "ok":  # only its own figures: start-up counted above
                    rec["metrics"] = {
                        k: v for k, v in rec["metrics"].items() if k.split("_")[0] in separate
                    }
                    m = rec["metrics"]
                    create = m.get("w5_create_s", 0)
                    print(f"ok in {rec['elapsed_s']:.1f} s (create {create:.1f} s)", flush=True)
                else:
                    print(f"{rec.get('status')}: {rec.get('reason')}", flush=True)
                results["systems"]["tasklift"]["runs"].append(rec)
    for entry in results["systems"].values():
        entry["summary"] = summarize(entry["runs"])
    results["meta"]["load_end"] = os.getloadavg()[0]
    results["meta"]["elapsed_s"] = time.monotonic() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print()
    print_table(results)
    print(f"\nwrote {args.out}")
    if args.docs:
        write_docs(args.docs, results)
    ok = all(e["summary"] for e in results["systems"].values() if e["runs"])
    skipped_only = all(
        e["summary"] or all(r.get("status") == "skipped" for r in e["runs"])
        for e in results["systems"].values()
    )
    return 0 if ok or skipped_only else 1


if __name__ == "__main__":
    sys.exit(main())
