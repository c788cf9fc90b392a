"""The embedded engine's fast paths (issue 7): jobs claimed when stored, results taken from the
bus, large works stored in chunks while they run, lazily computed job keys."""

from __future__ import annotations

import pytest
import workfns
from sqlalchemy import select

from tasklift import Workflow, get_unique_id_for_dict
from tasklift.api import joblist
from tasklift.api.engines import embedded_engine
from tasklift.db import tables
from tasklift.engine import dispatch, store, works
from tasklift.keys import occurrence_key
from tasklift.settings import Settings


def run(settings: Settings, fn, *args, **kwargs):
    return Workflow(func=fn, settings=settings, **kwargs).run(*args)


@pytest.fixture
def small_chunks(monkeypatch):
    """Make a 'large' work small: chunked store from 50 jobs on, chunks of 10 to 40."""
    monkeypatch.setattr(works, "IN_MEMORY_JOBS", 50)
    monkeypatch.setattr(works, "STORE_CHUNK", 10)  # the first chunk
    monkeypatch.setattr(store, "STORE_CHUNK", 10)  # the rest
    monkeypatch.setattr(store, "STORE_CHUNK_MAX", 40)
    monkeypatch.setattr(dispatch, "PAGE", 7)
    monkeypatch.setattr(joblist, "EAGER_UP_TO", 50)
    monkeypatch.setattr("tasklift.api.submit.EAGER_UP_TO", 50)


def job_rows(settings: Settings, work_id: int) -> list[dict]:
    engine = embedded_engine(settings)
    with engine.db.connect() as conn:
        rows = conn.execute(
            select(tables.jobs).where(tables.jobs.c.work_id == work_id).order_by(tables.jobs.c.idx)
        ).mappings()
        return [dict(r) for r in rows]


def test_results_from_the_bus_equal_the_stored_ones(settings):
    def wf():
        handle = workfns.add(y=1, group_kwargs=[{"x": i} for i in range(40)], return_work=True)
        values = handle.results()
        return handle.work_id, values, handle._async.ordered()

    work_id, values, from_bus = run(settings, wf)
    assert values == [i + 1 for i in range(40)]
    stored = embedded_engine(settings).results(work_id)  # the DB, the source of truth
    assert sorted(from_bus, key=lambda r: r.done_seq) == stored
    assert sorted(r.done_seq for r in stored) == list(range(1, 41))


def test_first_jobs_are_claimed_in_the_store_transaction(settings):
    def wf():
        one = workfns.add(x=1, y=2, return_work=True)
        many = workfns.add(group_kwargs=[{"x": i} for i in range(25)], return_work=True)
        return one.work_id, one.result(), many.work_id, many.results()

    one_id, one, many_id, many = run(settings, wf)
    assert one == 3 and many == list(range(25))
    engine_id = embedded_engine(settings).engine_id
    for work_id in (one_id, many_id):
        rows = job_rows(settings, work_id)
        assert all(r["state"] == "finished" and r["attempts"] == 1 for r in rows)
        assert all(r["claimed_by"] == engine_id for r in rows)
    row = embedded_engine(settings).work_row(many_id)
    assert (row["status"], row["n_finished"], row["last_seq"]) == ("finished", 25, 25)
    assert row["finished_at"] is not None  # set by the same statement as the counters


def test_a_large_work_runs_while_it_is_stored_in_chunks(settings, small_chunks):
    def wf():
        handle = workfns.add(y=1, group_kwargs=[{"x": i} for i in range(230)], return_work=True)
        first = next(iter(handle.as_completed(timeout=60))).value
        assert handle.wait_stored(timeout=60)
        return handle.work_id, first, handle.results(timeout=60)

    work_id, first, values = run(settings, wf)
    assert first in range(1, 231)
    assert values == [i + 1 for i in range(230)]
    rows = job_rows(settings, work_id)
    assert [r["idx"] for r in rows] == list(range(230))
    assert sorted(r["done_seq"] for r in rows) == list(range(1, 231))


def test_a_rerun_reuses_the_jobs_of_every_chunk(settings, small_chunks):
    def wf(extra):
        points = [{"x": i} for i in range(120)] + [{"x": 1000 + i} for i in range(extra)]
        handle = workfns.add(y=2, group_kwargs=points, return_work=True)
        return handle.work_id, handle.results(timeout=60), handle.n_reused

    _, first, _ = run(settings, wf, 0)
    second_id, second, reused_first_chunk = run(settings, wf, 30)  # same archive: memo hits
    assert second == first + [1002 + i for i in range(30)]
    assert reused_first_chunk == 10  # the first chunk's hits; later ones end as they are stored
    rows = job_rows(settings, second_id)
    assert sum(r["reused_from"] is not None for r in rows) == 120
    assert sorted(r["done_seq"] for r in rows) == list(range(1, 151))
    row = embedded_engine(settings).work_row(second_id)
    assert (row["status"], row["n_reused"], row["n_finished"]) == ("finished", 120, 150)


def test_identical_jobs_further_down_a_large_work_run_as_their_own(settings, small_chunks):
    def wf():
        points = [{"x": i} for i in range(100)] + [{"x": 5}]
        handle = workfns.add(group_kwargs=points, return_work=True)
        return handle.results(timeout=60), list(handle.keys)

    values, keys = run(settings, wf)
    assert values == [*range(100), 5]  # issue 18: a repeat is a job of its own
    assert keys[5] == get_unique_id_for_dict({"x": 5}) and keys[100] == occurrence_key(keys[5], 1)


def test_job_keys_are_computed_lazily_and_checked(monkeypatch):
    monkeypatch.setattr(joblist, "EAGER_UP_TO", 50)
    calls = [([], {"x": i}) for i in range(10)]
    made: list[int] = []

    def texts(batch):
        made.append(len(batch))
        return [str(kwargs["x"]) for _, kwargs in batch]

    jobs = joblist.JobList("w", calls, calls, texts, lambda b: [b"p"] * len(b), lambda t: t)
    assert made == [10]  # small: computed at once
    assert jobs[2:4] == [("2", b"p"), ("3", b"p")]
    assert list(jobs.keys) == [str(i) for i in range(10)]
    big = [([], {"x": i % 60}) for i in range(70)]
    lazy = joblist.JobList("w", big, big, texts, lambda b: [b"p"] * len(b), lambda t: t)
    assert len(lazy) == 70 and lazy.keys[3] == "3"
    assert [k for k, _ in lazy[0:70]][60:62] == [occurrence_key("0", 1), occurrence_key("1", 1)]
