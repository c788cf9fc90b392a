"""Web monitor pages over 1,000,000 jobs in PostgreSQL: p50/p95 per page kind.

    python bench/web_pages.py [--db postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
                              [--jobs 1000000] [--repeat 30] [--json]

Creates a scratch database next to the one given (dropped afterwards), migrates it, fills it
with COPY (one big running work, a 50-iteration HPO workflow with numeric results, hundreds of
small workflows of two users), serves ``create_app`` with uvicorn in a thread (engine not
resumed: nothing runs), and requests each page kind ``--repeat`` times over HTTP. Target: every
page under 300 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import sqlalchemy as sa
import uvicorn

from tasklift.db import tables
from tasklift.db.session import create_db_engine, upgrade
from tasklift.service.app import create_app
from tasklift.service.auth import Authenticator
from tasklift.settings import Settings

NOW = time.time()
JOB_COLUMNS = (
    "id, work_id, idx, key, payload, state, attempts, result, error_type, error_message, "
    "traceback, stdout, backend_handle, claimed_by, done_seq, created_at, started_at, finished_at"
)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/scratch/campaign/train.py", line 88, in evaluate\n'
    "    loss = fit(model, data)\n"
    '  File "/scratch/campaign/train.py", line 41, in fit\n'
    '    raise FloatingPointError("loss is NaN after 12 epochs")\n'
    "FloatingPointError: loss is NaN after 12 epochs\n"
)


@dataclass
class Plan:
    """One work to create: its workflow, size, non-finished job counts and result maker."""

    workflow_id: int
    seq: int
    n_jobs: int
    counts: dict[str, int]
    result: Callable[[random.Random], Any]
    created: float
    work_id: int = 0


def _workflow(rows: list[dict[str, Any]], owner: str, name: str, status: str, at: float) -> int:
    rows.append(
        dict(id=len(rows) + 1, name=name, owner=owner, status=status, function="campaign:run",
             source_dir="/scratch/campaign", archive_sha=hashlib.sha256(name.encode()).hexdigest(),
             archive_size=48_213, init_env="apptainer exec base.sif", backend="local", fresh=False,
             result=b'{"best": 0.1}' if status == "finished" else None, created_at=at,
             finished_at=None if status == "running" else at + 3600)
    )  # fmt: skip
    return len(rows)


def _work_row(plan: Plan) -> dict[str, Any]:
    failed, open_ = plan.counts.get("failed", 0), plan.counts.get("queued", 0)
    open_ += plan.counts.get("pending", 0)
    finished = plan.n_jobs - failed - open_
    status = "running" if open_ else ("failed" if failed else "finished")
    options = {"serializer": "json", "retries": 2, "backend": "local", "min_success": 0.5}
    return dict(
        id=plan.work_id, workflow_id=plan.workflow_id, seq=plan.seq, name="evaluate",
        function="campaign:evaluate", memo_key=hashlib.sha256(b"%d" % plan.work_id).hexdigest(),
        status=status, options=json.dumps(options), n_jobs=plan.n_jobs, n_finished=finished,
        n_failed=failed, n_cancelled=0, n_reused=0, last_seq=finished + failed,
        created_at=plan.created, finished_at=None if open_ else plan.created + 600,
    )  # fmt: skip


def _copy_jobs(copy: Any, plan: Plan, first_id: int, rng: random.Random) -> list[int]:
    """Stream one work's jobs into ``COPY jobs``; return the ids of its failed jobs."""
    states = [s for s in ("failed", "queued", "pending") for _ in range(plan.counts.get(s, 0))]
    states += ["finished"] * (plan.n_jobs - len(states))
    rng.shuffle(states)
    failed, done = [], 0
    for idx, state in enumerate(states):
        job_id, start, took = (
            first_id + idx,
            plan.created + idx * 0.01,
            rng.lognormvariate(0.5, 0.6),
        )
        ended = state in ("finished", "failed")
        done += ended
        if state == "failed":
            failed.append(job_id)
        copy.write_row((
            job_id, plan.work_id, idx, hashlib.sha256(b"%d:%d" % (plan.work_id, idx)).hexdigest(),
            json.dumps({"kwargs": {"x": idx, "lr": 0.01, "depth": idx % 9}}).encode(), state,
            0 if state == "pending" else (3 if state == "failed" else 1),
            json.dumps(plan.result(rng)).encode() if state == "finished" else None,
            *(("FloatingPointError", "loss is NaN after 12 epochs", TRACEBACK) if state == "failed"
              else (None, None, None)),
            f"epoch 12 loss {took:.3f}\n" if ended else None,
            None if state == "pending" else f"local:{job_id % 977}:{job_id}",
            None if state == "pending" else "bench", done if ended else None, plan.created,
            start if ended else None, start + took if ended else None,
        ))  # fmt: skip
    return failed


def fill(db_url: str, n_total: int) -> dict[str, int]:
    """Fill the database (workflows and works by executemany, jobs by COPY); return ids."""
    big_n, hpo_works, hpo_each = n_total // 2, 50, n_total // 10 // 50
    small_workflows, small_works = 400, 4
    rest = n_total - big_n - hpo_works * hpo_each
    small_each = rest // (small_workflows * small_works)
    workflows: list[dict[str, Any]] = []
    plans: list[Plan] = []
    for i in range(small_workflows):
        status = ("finished", "failed", "finished", "cancelled")[i % 4]
        at = NOW - 86_400 + i
        wf = _workflow(workflows, "bob" if i % 4 == 0 else "alice", f"sweep-{i:03d}", status, at)
        for seq in range(small_works):
            n = small_each + (
                rest - small_each * small_workflows * small_works if i + seq == 0 else 0
            )
            plans.append(Plan(wf, seq, n, {"failed": n // 50}, lambda r: r.random(), at))
    hpo = _workflow(workflows, "alice", "hpo-bdt", "finished", NOW - 7200)
    for seq in range(hpo_works):
        loss = lambda r, s=seq: {"loss": r.random() / (s + 1), "auc": r.random()}  # noqa: E731
        plans.append(Plan(hpo, seq, hpo_each, {"failed": hpo_each // 100}, loss, NOW - 7200 + seq))
    big = _workflow(workflows, "alice", "mc-toys-big", "running", NOW - 3600)
    counts = {"failed": big_n // 100, "queued": 200, "pending": big_n // 50}
    plans.append(Plan(big, 0, big_n, counts, lambda r: r.gauss(0, 1), NOW - 3600))
    for i, plan in enumerate(plans):
        plan.work_id = i + 1
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(tables.workflows), workflows)
        conn.execute(sa.insert(tables.works), [_work_row(p) for p in plans])
    engine.dispose()
    rng, failed, next_id = random.Random(7), [], 1
    conninfo = sa.make_url(db_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY jobs ({JOB_COLUMNS}) FROM STDIN") as copy:
            for plan in plans:
                failed += _copy_jobs(copy, plan, next_id, rng)
                next_id += plan.n_jobs
        with cur.copy(
            "COPY job_attempts (job_id, attempt, state, error_type, error_message, traceback, "
            "started_at, finished_at) FROM STDIN"
        ) as copy:
            for job_id in failed:
                for n in (1, 2):
                    copy.write_row((job_id, n, "failed", "FloatingPointError", "NaN", TRACEBACK,
                                    NOW - 900 * n, NOW - 900 * n + 2))  # fmt: skip
        for table in ("workflows", "works", "jobs", "job_attempts"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))")  # fmt: skip
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        deep = conn.execute(
            "SELECT id, idx FROM jobs WHERE work_id = %s AND state = 'failed' ORDER BY idx "
            "LIMIT 1 OFFSET %s",
            (plans[-1].work_id, big_n // 100 * 3 // 4),
        ).fetchone()
    assert deep is not None
    return dict(big_workflow=big, hpo_workflow=hpo, big_work=plans[-1].work_id,
                failed_job=deep[0], failed_deep_after=deep[1], small_work=plans[5].work_id,
                n_jobs=next_id - 1)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    app = create_app(settings, start_engine=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the app did not start")
        time.sleep(0.05)
    return server, thread, url


def pages(ids: dict[str, int]) -> list[tuple[str, str, str]]:
    """``(page kind, who, path)`` to request."""
    big, hpo, work = ids["big_workflow"], ids["hpo_workflow"], ids["big_work"]
    n_big, n_hpo = f"{ids['n_jobs'] // 2 // 1000}k", f"{ids['n_jobs'] // 10 // 1000}k"
    return [
        ("workflows list", "alice", "/"),
        ("workflows list, admin, page 5", "admin", "/?page=5"),
        ("workflows list, filtered", "alice", "/?status=finished&q=sweep-1"),
        ("workflows list, live poll", "alice", "/?partial=1"),
        (f"workflow, 1 work of {n_big} jobs", "alice", f"/workflows/{big}"),
        (f"workflow, 50 works ({n_hpo} jobs)", "alice", f"/workflows/{hpo}"),
        (f"convergence, {n_hpo} jobs", "alice", f"/workflows/{hpo}/convergence"),
        (
            f"convergence, {n_hpo}, field auc, max",
            "alice",
            f"/workflows/{hpo}/convergence?field=auc&mode=max",
        ),
        (f"work {n_big} jobs, page 1", "alice", f"/works/{work}"),
        (f"work {n_big} jobs, page 9000", "alice", f"/works/{work}?page=9000"),
        (f"work {n_big} jobs, failed", "alice", f"/works/{work}?state=failed"),
        (
            f"work {n_big} jobs, failed, deep",
            "alice",
            f"/works/{work}?state=failed&after={ids['failed_deep_after']}",
        ),
        (f"work {n_big} jobs, live poll", "alice", f"/works/{work}?partial=1"),
        ("work 250 jobs", "alice", f"/works/{ids['small_work']}"),
        ("job (failed, 3 attempts)", "alice", f"/jobs/{ids['failed_job']}"),
    ]


def measure(
    url: str, tokens: dict[str, str], ids: dict[str, int], repeat: int
) -> list[dict[str, Any]]:
    out = []
    clients = {
        who: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {t}"}, timeout=60)
        for who, t in tokens.items()
    }
    try:
        for kind, who, path in pages(ids):
            client = clients[who]
            times = []
            for i in range(repeat + 2):
                t = time.perf_counter()
                response = client.get(path)
                elapsed = (time.perf_counter() - t) * 1000
                if response.status_code != 200:
                    raise RuntimeError(
                        f"{path}: HTTP {response.status_code}: {response.text[:300]}"
                    )
                if i >= 2:  # two warm-ups
                    times.append(elapsed)
            times.sort()
            out.append(
                {
                    "page": kind,
                    "path": path,
                    "bytes": len(response.content),
                    "p50_ms": statistics.median(times),
                    "p95_ms": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
                    "max_ms": times[-1],
                }
            )
    finally:
        for client in clients.values():
            client.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="admin URL of the PostgreSQL server (a scratch database is made)",
    )
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    name = f"tasklift_bench_web_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.db, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db_url = args.db.rsplit("/", 1)[0] + f"/{name}"
    tmp = Path(tempfile.mkdtemp(prefix="tasklift-bench-web-"))
    ids: dict[str, int] = {}
    try:
        engine = create_db_engine(db_url)
        upgrade(engine)
        settings = Settings(home=tmp / "server", db_url=db_url, quiet=True)
        auth = Authenticator(db=engine, settings=settings)
        tokens = {
            "alice": auth.create_token(user="alice")[1],
            "admin": auth.create_token(user="root", admin=True)[1],
        }
        engine.dispose()
        t = time.perf_counter()
        ids = fill(db_url, args.jobs)
        fill_s = time.perf_counter() - t
        server, thread, url = serve(settings)
        try:
            rows = measure(url, tokens, ids, args.repeat)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    finally:
        if args.keep:
            print(f"kept {db_url} (ids {json.dumps(ids)})", file=sys.stderr)
        else:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    if args.json:
        print(json.dumps({"jobs": ids["n_jobs"], "fill_s": fill_s, "pages": rows}))
        return 0
    print(
        f"web pages over {ids['n_jobs']:,} jobs in PostgreSQL (filled in {fill_s:.0f} s), "
        f"{args.repeat} requests each after 2 warm-ups"
    )
    print(f"{'page':<36} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'KiB':>7}")
    for r in rows:
        flag = "" if r["p95_ms"] < 300 else "  over 300 ms"
        print(
            f"{r['page']:<36} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['max_ms']:8.1f} "
            f"{r['bytes'] / 1024:7.1f}{flag}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
