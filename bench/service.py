"""Through `tasklift server` (PostgreSQL by default): W1 throughput and W3 single-job latency.

    python bench/service.py [--db postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Creates a scratch database next to the one given (dropped afterwards), migrates it, starts a
server with 2 workers on a free port, and runs the measurements from this process over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

from tasklift import Workflow, shutdown, work
from tasklift.db.session import create_db_engine, upgrade
from tasklift.service.auth import Authenticator
from tasklift.settings import Settings


@work
def noop(x):
    return x + 1


def measure(n_w1: int, n_w3: int) -> dict[str, float]:
    out: dict[str, float] = {}
    noop(group_kwargs=[{"x": -i - 1} for i in range(4)])  # warm-up
    t = time.perf_counter()
    assert noop(group_kwargs=[{"x": i} for i in range(n_w1)]) == [i + 1 for i in range(n_w1)]
    out["w1_jobs_per_s"] = n_w1 / (time.perf_counter() - t)
    lat = []
    for i in range(n_w3):
        t = time.perf_counter()
        assert noop(x=10_000 + i) == 10_001 + i
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    out["w3_p50_ms"] = statistics.median(lat)
    out["w3_p99_ms"] = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="admin URL of the PostgreSQL server, or sqlite:///PATH")
    parser.add_argument("--w1", type=int, default=2000)
    parser.add_argument("--w3", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tasklift-bench-service-"))
    admin = None
    if args.db.startswith("postgresql"):
        name = f"tasklift_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.db, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        db_url = args.db.rsplit("/", 1)[0] + f"/{name}"
    else:
        db_url, name = args.db, ""
    engine = create_db_engine(db_url)
    upgrade(engine)
    settings = Settings(home=tmp / "server", db_url=db_url)
    token = Authenticator(db=engine, settings=settings).create_token(user="bench")[1]
    engine.dispose()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, TASKLIFT_HOME=str(tmp / "server"), TASKLIFT_WORKERS="2")
    server = subprocess.Popen([sys.executable, "-m", "tasklift.cli", "server", "--db", db_url,
                               "--port", str(port), "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        client = Settings(home=tmp / "client", token=token, quiet=True)
        figures = Workflow(func=measure, service=url, settings=client, fresh=True).run(
            args.w1, args.w3)
        shutdown()
    finally:
        server.terminate()
        server.wait(timeout=30)
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    figures["db"] = "postgresql" if admin is not None else "sqlite"
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"through tasklift server ({figures['db']}, 2 workers)")
        print(f"W1 {args.w1} no-op jobs   {figures['w1_jobs_per_s']:,.0f} jobs/s")
        print(f"W3 {args.w3} single jobs  p50 {figures['w3_p50_ms']:.2f} ms  "
              f"p99 {figures['w3_p99_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
