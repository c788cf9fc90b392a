"""Through `tasklift server` (PostgreSQL + STOMP by default): W1 throughput and W3 latency (W6).

    python bench/service.py [--db postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
                            [--bus stomp://127.0.0.1:61613 | --bus embedded] [--repeats 3]
                            [--calls] [--hold SECONDS]

Creates a scratch database next to the one given (dropped afterwards), migrates it, starts a
server with 2 workers on a free port, and runs the measurements from this process over HTTP.
The STOMP bus logs in as ``guest`` unless ``BENCH_STOMP_USER``/``BENCH_STOMP_PASSWORD`` say
otherwise; the bus URL goes to the server through its environment, never its command line.
``--calls`` also times every HTTP request of W3 from the client (method, route, ms);
``--hold`` waits that long before the measurements (attach ``py-spy record --pid <pid>``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tasklift import Workflow, shutdown, work
from tasklift._context import current_workflow
from tasklift.db.session import create_db_engine, upgrade
from tasklift.service.auth import Authenticator
from tasklift.settings import Settings

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@work
def noop(x):
    return x + 1


def _percentile(values: list[float], q: float) -> float:
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _route(url: httpx.URL) -> str:
    parts = [("{id}" if p.isdigit() else p) for p in url.path.split("/")]
    return "/".join(parts).removeprefix("/api/v1")


def _cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    n_w1: int, n_w3: int, calls: bool, hold: float, server_pid: int | None = None
) -> dict[str, Any]:
    """The workflow function: warm up, then W1 (one map) and W3 (sequential single jobs)."""
    out: dict[str, Any] = {}
    if hold:
        print(f"holding {hold:.0f} s before measuring (server pid in the log above)", flush=True)
        time.sleep(hold)
    noop(group_kwargs=[{"x": -i - 1} for i in range(50)])  # warm-up
    for i in range(5):
        noop(x=-1000 - i)
    t = time.perf_counter()
    assert noop(group_kwargs=[{"x": i} for i in range(n_w1)]) == [i + 1 for i in range(n_w1)]
    out["w1_jobs_per_s"] = n_w1 / (time.perf_counter() - t)
    timings: dict[str, list[float]] = defaultdict(list)
    if calls:
        client = current_workflow.get().engine._client  # the HttpService's httpx client

        def started(request: httpx.Request) -> None:
            request.extensions["bench_t0"] = time.perf_counter()

        def ended(response: httpx.Response) -> None:
            key = f"{response.request.method} {_route(response.request.url)}"
            if response.headers.get("content-type", "").startswith("application/x-ndjson"):
                key += " (to headers)"  # a streamed answer: its lines come later
            else:
                response.read()
            t0 = response.request.extensions["bench_t0"]
            timings[key].append((time.perf_counter() - t0) * 1000)

        client.event_hooks = {"request": [started], "response": [ended]}
    lat = []
    cpu0 = _cpu_seconds(), _cpu_seconds(server_pid) if server_pid else 0.0
    for i in range(n_w3):
        t = time.perf_counter()
        assert noop(x=10_000 + i) == 10_001 + i
        lat.append((time.perf_counter() - t) * 1000)
    out["w3_client_cpu_ms"] = (_cpu_seconds() - cpu0[0]) * 1000 / n_w3
    if server_pid:
        out["w3_server_cpu_ms"] = (_cpu_seconds(server_pid) - cpu0[1]) * 1000 / n_w3
    out["w3_p50_ms"] = _percentile(lat, 50)
    out["w3_p99_ms"] = _percentile(lat, 99)
    if calls:
        out["calls"] = {
            key: {"n": len(v), "p50_ms": statistics.median(v), "p99_ms": _percentile(v, 99)}
            for key, v in timings.items()
        }
    return out


def _stomp_url(bus: str) -> str:
    """A STOMP URL with credentials from the environment and a prefix of its own."""
    if bus == "embedded":
        return bus
    user = os.environ.get("BENCH_STOMP_USER", "guest")
    password = os.environ.get("BENCH_STOMP_PASSWORD", "guest")
    host = bus.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    return f"stomp://{user}:{password}@{host}/bench{uuid.uuid4().hex[:8]}"


@dataclass
class ScratchServer:
    """A running ``tasklift server`` on a scratch database (see :func:`scratch_server`)."""

    url: str
    db_url: str
    pid: int
    token: str
    tmp: Path
    postgresql: bool


@contextlib.contextmanager
def scratch_server(
    db: str = PG_ADMIN,
    bus: str = "stomp://127.0.0.1:61613",
    server_module: str = "tasklift.cli",
    workers: int = 2,
) -> Iterator[ScratchServer]:
    """A scratch database next to ``db`` (migrated, dropped afterwards) and a server on it.

    The server runs with ``workers`` local workers on a free port; the bus URL goes to it
    through its environment. Yields once ``/health`` answers (60 s at most).
    """
    tmp = Path(tempfile.mkdtemp(prefix="tasklift-bench-service-"))
    admin = None
    if db.startswith("postgresql"):
        name = f"tasklift_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(db, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        db_url = db.rsplit("/", 1)[0] + f"/{name}"
    else:
        db_url, name = db, ""
    server = None
    try:
        engine = create_db_engine(db_url)
        upgrade(engine)
        settings = Settings(home=tmp / "server", db_url=db_url)
        token = Authenticator(db=engine, settings=settings).create_token(user="bench")[1]
        engine.dispose()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = dict(os.environ, TASKLIFT_HOME=str(tmp / "server"), TASKLIFT_WORKERS=str(workers),
                   TASKLIFT_BUS=_stomp_url(bus))  # fmt: skip
        # TASKLIFT_RUNNER_USER=LOW-HIGH in the environment: jobs run under runner identities,
        # as on a shared server; else --no-runner-isolation (a server only the bench uses)
        isolation = [] if os.environ.get("TASKLIFT_RUNNER_USER") else ["--no-runner-isolation"]
        cmd = [sys.executable, "-m", server_module, "server", "--db", db_url,
               "--port", str(port), "--log-level", "warning", *isolation]  # fmt: skip
        server = subprocess.Popen(cmd, env=env)
        print(f"server pid {server.pid}", file=sys.stderr, flush=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with code {server.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start within 60 s")
            time.sleep(0.1)
        yield ScratchServer(url, db_url, server.pid, token, tmp, admin is not None)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """Scratch database, server, one workflow of measurements, clean-up."""
    with scratch_server(args.db, args.bus, args.server_module) as srv:
        client = Settings(home=srv.tmp / "client", token=srv.token, quiet=True)
        figures: dict[str, Any] = Workflow(
            func=measure, service=srv.url, settings=client, fresh=True
        ).run(args.w1, args.w3, args.calls, args.hold, srv.pid)
        shutdown()
    figures["db"] = "postgresql" if srv.postgresql else "sqlite"
    figures["bus"] = "embedded" if args.bus == "embedded" else "stomp"
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=PG_ADMIN,
                        help="admin URL of the PostgreSQL server, or sqlite:///PATH")
    parser.add_argument("--bus", default="stomp://127.0.0.1:61613",
                        help="STOMP broker (host:port taken from it) or 'embedded'")
    parser.add_argument("--w1", type=int, default=2000)
    parser.add_argument("--w3", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--calls", action="store_true", help="time each HTTP request of W3")
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--server-module", default="tasklift.cli",
                        help="module run as the server (an instrumented wrapper when profiling)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = [run_once(args) for _ in range(args.repeats)]
    summary = {
        key: statistics.median(r[key] for r in runs)
        for key in ("w1_jobs_per_s", "w3_p50_ms", "w3_p99_ms")
    }
    summary.update(db=runs[0]["db"], bus=runs[0]["bus"], runs=runs)
    if args.json:
        print(json.dumps(summary))
        return 0
    w1_runs = ", ".join(f"{r['w1_jobs_per_s']:,.0f}" for r in runs)
    w3_runs = ", ".join(f"{r['w3_p50_ms']:.2f}" for r in runs)
    print(f"through tasklift server ({summary['db']}, bus {summary['bus']}, 2 workers), "
          f"median of {len(runs)}")
    print(f"W1 {args.w1} no-op jobs   {summary['w1_jobs_per_s']:,.0f} jobs/s   "
          f"(runs: {w1_runs})")
    print(f"W3 {args.w3} single jobs  p50 {summary['w3_p50_ms']:.2f} ms  "
          f"p99 {summary['w3_p99_ms']:.2f} ms   (p50 runs: "
          f"{w3_runs})")
    for r in runs:
        if "w3_server_cpu_ms" in r:
            print(f"  W3 CPU per work: server {r['w3_server_cpu_ms']:.2f} ms, "
                  f"client {r['w3_client_cpu_ms']:.2f} ms")
        for key, c in sorted(r.get("calls", {}).items()):
            print(f"  {key:40s} n={c['n']:4d}  p50 {c['p50_ms']:6.2f} ms  "
                  f"p99 {c['p99_ms']:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
