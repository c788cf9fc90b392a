"""Per-job cost must not grow with queue depth (issue 17 item 6).

The statements that run per dispatch batch, claiming jobs and paging a large work's pending
jobs, must find their rows through an index range of the batch's size, never by reading every
pending job: their PostgreSQL plans are checked on a deep queue in a table that was never
ANALYZEd (as after a large work was just stored). The throughput itself is measured in
``bench/queue_depth.py``; its smoke run here checks that the command works and that every job
ends with the right result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tasklift.db import hot
from tasklift.db.jobs import claim_jobs, pending_jobs
from tasklift.db.session import create_db_engine, upgrade
from tasklift.db.workflows import insert_workflow
from tasklift.db.works import insert_work

REPO = Path(__file__).resolve().parents[2]
DEPTH = 50_000


@pytest.fixture
def deep_queue(pg_url: str) -> Iterator[tuple[sa.Engine, int]]:
    """A migrated PostgreSQL database holding one work of ``DEPTH`` pending jobs, never
    analyzed; yields its engine and the work's id."""
    yield from _queue(pg_url, DEPTH)


@pytest.fixture(params=[DEPTH, 3000], ids=["deep", "small-table"])
def queue(request: pytest.FixtureRequest, pg_url: str) -> Iterator[tuple[sa.Engine, int]]:
    """Like ``deep_queue``, and also a small table (where a scan of it all looks cheap)."""
    yield from _queue(pg_url, request.param)


def _queue(pg_url: str, depth: int) -> Iterator[tuple[sa.Engine, int]]:
    engine = create_db_engine(pg_url)
    upgrade(engine)
    with engine.begin() as conn:
        workflow_id = insert_workflow(
            conn, name="deep", function="m:f", backend="local", source_dir="/tmp",
            archive_sha="x", archive_size=0, fresh=False,
        )  # fmt: skip
        work_id = insert_work(
            conn, workflow_id=workflow_id, name="deep", function="m:f", script=None,
            archive_sha="x", memo_key="m", status="running", options="{}", n_jobs=depth,
            when_predicate=None,
        )  # fmt: skip
        conn.execute(
            sa.text(
                "INSERT INTO jobs (work_id, idx, key, payload, state, attempts, created_at) "
                "SELECT :w, g, md5(g::text), 'x', 'pending', 0, 0 "
                "FROM generate_series(0, :n - 1) AS g"
            ),
            {"w": work_id, "n": depth},
        )
    yield engine, work_id
    engine.dispose()


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _explain(conn: sa.Connection, sql: str, params: Any) -> list[dict[str, Any]]:
    """The nodes of the statement's plan (``EXPLAIN``, nothing runs)."""
    cursor = conn.connection.cursor()
    try:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        return list(_plan_nodes(cursor.fetchone()[0][0]["Plan"]))
    finally:
        cursor.close()


def test_claim_looks_jobs_up_by_key_only(queue, monkeypatch):
    """A claim of one batch in the middle of the queue: every scan of ``jobs`` is a look-up on
    the primary key (before: a bitmap scan of the state index, i.e. every pending job, or on a
    small table a scan of all of it)."""
    engine, _ = queue
    seen: list[tuple[str, tuple[Any, ...]]] = []
    real_execute = hot.execute

    def recording(conn, sql, params=()):
        seen.append((hot._dialect_text(sql, False), tuple(params)))
        return real_execute(conn, sql, params)

    monkeypatch.setattr(hot, "execute", recording)
    with engine.connect() as conn:
        first, n = conn.execute(sa.text("SELECT MIN(id), COUNT(*) FROM jobs")).one()
        ids = list(range(first + n // 2, first + n // 2 + 250))
        claimed = claim_jobs(conn, ids, "engine-a")
        assert claimed == set(ids)
        assert claim_jobs(conn, ids, "engine-b") == set()  # taken: never handed out twice
        sql, params = seen[0]
        nodes = _explain(conn, sql, params)
        conn.rollback()
    scans = [n for n in nodes if n.get("Relation Name") == "jobs"]
    assert scans, "the claim's plan reads no jobs rows?"
    indexes = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert indexes == {"pk_jobs"}, f"the claim's plan uses {indexes}"
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"], scans


def _explain_all(engine: sa.Engine, sql: str, params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return _explain(conn, sql, params)


def test_page_of_pending_jobs_is_an_index_range(deep_queue):
    """The next page of a deep work's pending jobs: one ordered index range, no sort of every
    pending job (before: the (work_id, state) index read them all, then a sort)."""
    engine, work_id = deep_queue
    statements: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.connect() as conn:
            rows = pending_jobs(conn, work_id, DEPTH // 2, 5000)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert [r[1] for r in rows] == list(range(DEPTH // 2 + 1, DEPTH // 2 + 5001))
    [(sql, params)] = [s for s in statements if "FROM jobs" in s[0]]
    nodes = _explain_all(engine, sql, params)
    assert not [n for n in nodes if n["Node Type"] in ("Sort", "Incremental Sort")], nodes
    [scan] = [n for n in nodes if n.get("Relation Name") == "jobs"]
    assert scan["Node Type"] == "Index Scan", scan
    assert "idx" in scan["Index Cond"], scan


def test_queue_depth_bench_runs_small(pg_url):
    """``bench/queue_depth.py`` at a small size: both modes run, every job ends with the right
    result, and the figures it reports are there (throughput slices, the server's peak RSS and
    its two workers')."""
    cmd = [
        sys.executable, str(REPO / "bench" / "queue_depth.py"), "--db", pg_url,
        "--bus", "embedded", "--jobs", "2000", "--works", "4", "--work-size", "500",
        "--interval", "0.1", "--slice", "0.2", "--json",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLIFT_")}
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    by_mode = {r["mode"]: r for r in report["modes"]}
    assert set(by_mode) == {"one", "twenty"}
    assert by_mode["one"]["jobs"] == 2000
    assert by_mode["twenty"]["jobs"] == 4 * 500
    for rec in by_mode.values():
        assert rec["wrong_results"] == 0
        assert rec["ended_in_db"] == rec["jobs"]  # every job of the timed phase ended
        assert rec["finished_in_db"] == rec["jobs"] + 20  # + the warm-up's 20
        assert rec["server_peak_rss_mb"] > 10
        assert len(rec["children_peak_rss_mb"]) >= 2  # the two local workers
        assert rec["jobs_per_s"] > 0
        assert rec["median"] >= 0 and rec["max_dev_pct"] >= 0
