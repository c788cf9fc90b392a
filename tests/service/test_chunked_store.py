"""Storing a large work's jobs on PostgreSQL (issue 17 item 6): job rows go in by ``COPY``, and
the store thread stays only a little ahead of dispatch instead of storing every chunk at once
(which took the database's CPU from dispatch for the first seconds of the run). SQLite keeps
storing the whole work at once in growing chunks. Throughput itself: ``bench/queue_depth.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
import storefns

import tasklift
from tasklift import Workflow
from tasklift.api import joblist
from tasklift.api.engines import embedded_engine
from tasklift.db import hot, tables
from tasklift.db.jobs import insert_jobs
from tasklift.db.session import create_db_engine, upgrade
from tasklift.db.workflows import insert_workflow
from tasklift.db.works import insert_work
from tasklift.engine import dispatch, store, works
from tasklift.settings import Settings


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a 'large' work small: chunked store from 50 jobs on, first chunk 10, 20 ahead."""
    monkeypatch.setattr(works, "IN_MEMORY_JOBS", 50)
    monkeypatch.setattr(works, "STORE_CHUNK", 10)  # the first chunk
    monkeypatch.setattr(store, "STORE_CHUNK", 10)  # the rest
    monkeypatch.setattr(store, "STORE_CHUNK_MAX", 40)
    monkeypatch.setattr(store, "STORE_AHEAD", 20)
    monkeypatch.setattr(dispatch, "PAGE", 7)
    monkeypatch.setattr(joblist, "EAGER_UP_TO", 50)
    monkeypatch.setattr("tasklift.api.submit.EAGER_UP_TO", 50)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_large_work_is_stored_paced_on_postgresql_only(
    dialect: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    small_chunks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db_url = (
        f"sqlite:///{tmp_path / 'run.db'}"
        if dialect == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    seen: list[tuple[int, int, int]] = []  # (first idx, jobs, dispatch's page_after) per chunk
    real_store_chunk = store.WorkStore.store_chunk
    settings = Settings(home=tmp_path / "home", db_url=db_url, workers=2, quiet=True)

    def recording(self, work_id, chunk, begin, *args):
        live = embedded_engine(settings)._memory.works.get(work_id)  # dispatch's position
        seen.append((begin, len(chunk), -2 if live is None else live.page_after))
        return real_store_chunk(self, work_id, chunk, begin, *args)

    monkeypatch.setattr(store.WorkStore, "store_chunk", recording)

    def wf():
        handle = storefns.add(y=1, group_kwargs=[{"x": i} for i in range(300)], return_work=True)
        values = handle.results(timeout=120)
        assert handle.wait_stored(timeout=60)
        return handle.work_id, values

    try:
        work_id, values = Workflow(func=wf, settings=settings).run()
    finally:
        tasklift.shutdown()
    assert values == [i + 1 for i in range(300)]
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as conn:
            idx = conn.execute(
                sa.select(tables.jobs.c.idx)
                .where(tables.jobs.c.work_id == work_id)
                .order_by(tables.jobs.c.idx)
            ).scalars()
            assert list(idx) == list(range(300))  # every job stored exactly once
    finally:
        engine.dispose()
    assert [b for b, _, _ in seen] == list(
        range(10, 300, 5) if dialect == "postgresql" else [10, 30, 70, 110, 150, 190, 230, 270]
    )
    if dialect == "postgresql":
        # each chunk waited until dispatch had taken all but STORE_AHEAD of the jobs it leaves
        # stored (before: every chunk stored at once, 290 jobs ahead of a dispatch at ~10)
        assert all(b + n - (after + 1) <= 20 for b, n, after in seen), seen
    else:  # SQLite: stored at once, in chunks that double up to STORE_CHUNK_MAX
        assert [n for _, n, _ in seen] == [20, 40, 40, 40, 40, 40, 40, 30]


def test_job_rows_go_in_by_copy_on_postgresql(pg_url: str, monkeypatch: pytest.MonkeyPatch):
    """``insert_jobs`` on PostgreSQL: one COPY, no statement per row; payloads with every byte
    value, claims, skips and the columns' defaults come out as an INSERT stores them."""
    engine = create_db_engine(pg_url)
    upgrade(engine)

    def no_statement_per_row(*args, **kwargs):
        raise AssertionError("job rows inserted by executemany on PostgreSQL")

    monkeypatch.setattr(hot, "executemany", no_statement_per_row)
    rows = [(f"k{i}", bytes([i, 0, 92, 9, 10, 13, 255 - i]) + b"\\N") for i in range(256)]
    try:
        with engine.begin() as conn:
            workflow_id = insert_workflow(
                conn, name="w", function="m:f", backend="local", source_dir="/tmp",
                archive_sha="x", archive_size=0, fresh=False,
            )  # fmt: skip
            work_id = insert_work(
                conn, workflow_id=workflow_id, name="w", function="m:f", script=None,
                archive_sha="x", memo_key="m", status="running", options="{}", n_jobs=261,
                when_predicate=None,
            )  # fmt: skip
            ids = insert_jobs(conn, work_id, rows, claim=3, skip={6}, engine_id="e1", first=5)
        with engine.connect() as conn:
            stored = conn.execute(
                sa.select(tables.jobs)
                .where(tables.jobs.c.work_id == work_id)
                .order_by(tables.jobs.c.idx)
            ).mappings().all()  # fmt: skip
    finally:
        engine.dispose()
    assert [r["id"] for r in stored] == ids and len(set(ids)) == 256
    assert [(r["idx"], r["key"], r["payload"]) for r in stored] == [
        (5 + i, key, payload) for i, (key, payload) in enumerate(rows)
    ]
    claimed = [r["idx"] for r in stored if r["state"] == "queued"]
    assert claimed == [5, 7, 8]  # the first 3 not skipped
    assert all(
        (r["attempts"], r["claimed_by"]) == ((1, "e1") if r["idx"] in claimed else (0, None))
        for r in stored
    )
    assert {(r["n_waiting"], r["result"], r["done_seq"]) for r in stored} == {(0, None, None)}
    assert all(r["created_at"] > 0 for r in stored)
