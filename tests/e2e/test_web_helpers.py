"""The web monitor's pure parts and queries, without a browser: DAG layout and edges,
convergence, keyset pages, duration samples, plots and value summaries (SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from sqlalchemy import update

from tasklift.db import tables
from tasklift.db.jobs import insert_jobs
from tasklift.db.session import create_db_engine, upgrade
from tasklift.db.workflows import insert_workflow
from tasklift.db.works import insert_work
from tasklift.service.web import queries as wq
from tasklift.service.web import workflow_edges
from tasklift.service.web.convergence import MAX_POINTS, convergence, sample_indexes
from tasklift.service.web.dag import dag_svg, layout
from tasklift.service.web.plots import histogram_svg, nice_ticks, progress_svg
from tasklift.service.web.present import first_line, kwargs_summary, tail
from tasklift.service.web.routing import fmt_duration, local_path


@pytest.fixture
def db(tmp_path: Path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'web.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def _work(conn, workflow_id: int, seq: int, results: list, serializer: str = "json") -> int:
    work_id = insert_work(
        conn,
        workflow_id=workflow_id,
        seq=seq,
        name=f"step{seq}",
        function="m:f",
        memo_key="k",
        status="finished",
        options=json.dumps({"serializer": serializer}),
        n_jobs=len(results),
        n_finished=len(results),
    )
    ids = insert_jobs(
        conn,
        work_id,
        [(f"{work_id}-{i}", orjson.dumps({"kwargs": {"i": i}})) for i in range(len(results))],
    )
    for job_id, value in zip(ids, results, strict=True):
        conn.execute(
            update(tables.jobs)
            .where(tables.jobs.c.id == job_id)
            .values(state="finished", result=orjson.dumps(value), started_at=1.0, finished_at=3.5)
        )
    return work_id


def test_layout_places_chains_and_diamonds_in_layers():
    assert layout([1, 2, 3], [(1, 2), (2, 3)]) == {1: (0, 0), 2: (1, 0), 3: (2, 0)}
    diamond = layout([1, 2, 3, 4], [(1, 2), (1, 3), (2, 4), (3, 4)])
    assert diamond == {1: (0, 0), 2: (1, 0), 3: (1, 1), 4: (2, 0)}
    cyclic = layout([1, 2], [(1, 2), (2, 1)])  # never expected; must not hang
    assert set(cyclic) == {1, 2}


def test_dag_svg_links_every_work_and_escapes_names():
    works = [
        {
            "id": 7,
            "seq": 0,
            "name": "<script>x</script>",
            "status": "failed",
            "n_jobs": 3,
            "n_finished": 1,
            "n_failed": 2,
        },
        {
            "id": 8,
            "seq": 1,
            "name": "next",
            "status": "running",
            "n_jobs": 1,
            "n_finished": 0,
            "n_failed": 0,
        },
    ]
    svg = str(dag_svg(works, [(7, 8)]))
    assert 'href="/works/7"' in svg and 'href="/works/8"' in svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "✗ failed" in svg and svg.count("dag-edge") == 1


def test_edges_follow_submission_order_and_convergence_tracks_the_best(db):
    with db.begin() as conn:
        wf = insert_workflow(conn, name="hpo", owner="a", function="m:f")
        first = _work(conn, wf, 0, [{"loss": 3.0, "auc": 0.5}, {"loss": 2.0, "auc": 0.7}])
        second = _work(conn, wf, 1, [{"loss": 2.5, "auc": 0.9}, {"loss": 1.0, "auc": 0.6}])
        third = _work(conn, wf, 2, [{"loss": 4.0, "auc": 0.1}])
        pickled = _work(conn, wf, 3, [1], serializer="pickle")
    with db.connect() as conn:
        assert workflow_edges(conn, wf) == [(first, second), (second, third), (third, pickled)]
        works = wq.works_of(conn, wf)
        low = convergence(conn, works, field=None, mode="min")
        high = convergence(conn, works, field="auc", mode="max")
    assert low.fields == ["loss", "auc"] and low.field == "loss"
    assert [p.value for p in low.points] == [3.0, 2.0, 2.5, 1.0, 4.0]
    assert [(i.best, i.best_so_far, i.improved) for i in low.iterations] == [
        (2.0, 2.0, True),
        (1.0, 1.0, True),
        (4.0, 1.0, False),
    ]
    assert [(i.first_x, i.last_x) for i in low.iterations] == [(1, 2), (3, 4), (5, 5)]
    assert [w["id"] for w, _why in low.skipped] == [pickled]
    assert [i.best_so_far for i in high.iterations] == [0.7, 0.9, 0.9]


def test_large_works_are_sampled_evenly(db):
    n = MAX_POINTS * 2
    with db.begin() as conn:
        wf = insert_workflow(conn, name="big", owner="a", function="m:f")
        _work(conn, wf, 0, [float(i % 97) for i in range(n)])
    with db.connect() as conn:
        data = convergence(conn, wq.works_of(conn, wf), field=None, mode="max")
        durations, sampled = wq.duration_sample(conn, wq.works_of(conn, wf)[0]["id"], n, 500)
    assert data.sampled and len(data.points) <= MAX_POINTS
    assert data.iterations[0].best == 96.0
    assert sampled and 450 <= len(durations) <= 500 and set(durations) == {2.5}
    assert sample_indexes(10, 20) == tuple(range(10))
    assert sample_indexes(1000, 10) == tuple(range(0, 1000, 100))


def test_keyset_pages_walk_forwards_and_back(db):
    with db.begin() as conn:
        wf = insert_workflow(conn, name="w", owner="a", function="m:f")
        work = _work(conn, wf, 0, list(range(23)))
        conn.execute(update(tables.jobs).where(tables.jobs.c.idx % 2 == 0).values(state="failed"))
    with db.connect() as conn:
        first = wq.jobs_in_state(conn, work, ("failed",), size=5)
        assert [r["idx"] for r in first.rows] == [0, 2, 4, 6, 8]
        assert first.prev_after is None and first.next_after == 8
        second = wq.jobs_in_state(conn, work, ("failed",), after=8, size=5)
        assert [r["idx"] for r in second.rows] == [10, 12, 14, 16, 18]
        assert second.prev_after == -1
        last = wq.jobs_in_state(conn, work, ("failed",), after=18, size=5)
        assert [r["idx"] for r in last.rows] == [20, 22] and last.next_after is None
        assert last.prev_after == 8
        assert [r["idx"] for r in wq.jobs_on_page(conn, work, 3, 10)] == [20, 21, 22]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/works/3?state=failed", "/works/3?state=failed"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil", "/"),
        (None, "/"),
        ("", "/"),
    ],
)
def test_login_redirects_stay_on_this_site(target, expected):
    assert local_path(target) == expected


def test_small_formatters():
    assert fmt_duration(None) == "\u2013" and fmt_duration(0.0004) == "0.4 ms"
    assert fmt_duration(12.34) == "12.3 s" and fmt_duration(245) == "4 min 05 s"
    assert fmt_duration(7500) == "2 h 05 min"
    assert nice_ticks(0, 1, 5) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert kwargs_summary(b'{"kwargs":{"x":1,"name":"a"}}', "json") == 'x=1, name="a"'
    assert kwargs_summary(b'{"kwargs":{"x":1,"name":"abcdefgh', "json").startswith('"x":1')
    assert kwargs_summary(b"\x80\x04", "pickle") == "(pickle)"
    assert first_line("\n  ValueError: bad\nmore") == "ValueError: bad"
    assert tail("a" * 10, limit=4) == ("aaaa", True)
    assert "No durations" in histogram_svg([], title="t")
    assert histogram_svg([1.0, 1.0], title="t").count("hist-bar") == 1
    assert 'aria-label="50% done: 1 finished, 1 failed, 0 cancelled of 4 jobs"' in progress_svg(
        1, 1, 0, 4
    )
