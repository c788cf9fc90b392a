"""Job state moves through :func:`tasklift.db.jobs.transition` on the real databases (each
service test runs on SQLite and PostgreSQL, where the claim takes locking one-probe-per-id
statements): every move :data:`~tasklift.states.ALLOWED` allows happens, every other one is
refused with the job named, and a refused batch loses nothing."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, insert, select, update

from tasklift.db import tables
from tasklift.db.jobs import (
    claim_jobs,
    ended_already,
    mark_running,
    store_terminal,
    transition,
)
from tasklift.db.session import create_db_engine, upgrade
from tasklift.db.workflows import insert_workflow
from tasklift.db.works import insert_work
from tasklift.states import ALLOWED, IllegalTransition, JobState


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def store_jobs(db: Engine, states: list[JobState]) -> list[int]:
    """One work with one job in each of ``states`` (set directly: test set-up)."""
    with db.begin() as conn:
        workflow_id = insert_workflow(conn, name="w", owner="alice", function="m:f")
        work_id = insert_work(
            conn, workflow_id=workflow_id, name="w", function="m:f", memo_key="0" * 64,
            status="running", options="{}", n_jobs=len(states),
        )  # fmt: skip
        conn.execute(
            insert(tables.jobs),
            [
                {"work_id": work_id, "idx": i, "key": f"k{i}", "payload": b"{}",
                 "state": s.value, "attempts": 1, "result": b"kept", "created_at": time.time()}
                for i, s in enumerate(states)
            ],
        )  # fmt: skip
        rows = conn.execute(
            select(tables.jobs.c.id).where(tables.jobs.c.work_id == work_id).order_by("idx")
        )
        return [int(r[0]) for r in rows]


def stored(db: Engine, job_ids: list[int]) -> list[tuple[str, bytes | None, int]]:
    """``(state, result, attempts)`` of each job."""
    with db.connect() as conn:
        rows = dict(
            (r[0], tuple(r[1:]))
            for r in conn.execute(
                select(
                    tables.jobs.c.id, tables.jobs.c.state, tables.jobs.c.result,
                    tables.jobs.c.attempts,
                ).where(tables.jobs.c.id.in_(job_ids))
            )
        )  # fmt: skip
    return [rows[j] for j in job_ids]  # type: ignore[misc]


def test_every_allowed_move_and_no_other(db: Engine) -> None:
    """Every (from, to) pair: allowed moves happen (bulk and per job), others are refused."""
    for start, finish in itertools.product(JobState, JobState):
        for per_job in (False, True):
            [job] = store_jobs(db, [start])
            rows = [(7,)] if per_job else ()
            columns = ("attempts",) if per_job else ()
            if finish in ALLOWED[start]:
                with db.begin() as conn:
                    assert transition(conn, [job], finish, columns=columns, rows=rows) == [job]
                assert stored(db, [job])[0][0] == finish.value
                continue
            with pytest.raises(IllegalTransition) as caught, db.begin() as conn:
                transition(conn, [job], finish, columns=columns, rows=rows)
            assert f"job {job} from {start.value} to {finish.value}" in str(caught.value)
            assert stored(db, [job]) == [(start.value, b"kept", 1)]


def test_a_refused_move_loses_nothing(db: Engine) -> None:
    """A batch with one disallowed move is refused whole: the allowed moves in it roll back,
    the refused job keeps its state and result, and the error names it. Outcomes are the one
    exception: the engine drops a late outcome of a job that ended already, stores the rest."""
    jobs = store_jobs(db, [JobState.RUNNING, JobState.FINISHED, JobState.QUEUED])
    before = stored(db, jobs)
    row = {"_result": b"new", "_error_type": None, "_error_message": None, "_traceback": None,
           "_attempts": 1, "_started_at": 1.0, "_finished_at": 2.0, "_stdout": None,
           "_done_seq": 1, "_handle": None, "_state": "finished"}  # fmt: skip
    refused = pytest.raises(IllegalTransition, match=f"job {jobs[1]} from finished to finished")
    with refused, db.begin() as conn:
        transition(conn, jobs, JobState.FINISHED, columns=("attempts",), rows=[(1,)] * 3)
    assert stored(db, jobs) == before
    refused = pytest.raises(IllegalTransition, match=f"job {jobs[1]} from finished to pending")
    with refused, db.begin() as conn:
        transition(conn, jobs, JobState.PENDING, values={"attempts": 0})
    assert stored(db, jobs) == before
    # a guard may only name allowed sources
    with pytest.raises(IllegalTransition, match="from finished to queued"), db.begin() as conn:
        transition(conn, jobs, JobState.QUEUED, only_from={JobState.FINISHED})
    assert stored(db, jobs) == before
    refused = pytest.raises(IllegalTransition, match=f"job {jobs[1]} from finished to finished")
    with refused, db.begin() as conn:
        store_terminal(conn, [{**row, "_id": j} for j in jobs])
    assert stored(db, jobs) == before
    # the engine then finds the late outcome (a job that ended already) and stores the rest
    with db.begin() as conn:
        assert ended_already(conn, [{**row, "_id": j} for j in jobs]) == {jobs[1]}
        store_terminal(conn, [{**row, "_id": j} for j in (jobs[0], jobs[2])])
    assert stored(db, jobs) == [("finished", b"new", 1), before[1], ("finished", b"new", 1)]


def test_claims_and_starts_are_guards(db: Engine) -> None:
    """Claims and starts are guards: jobs in other states are left as they are."""
    jobs = store_jobs(db, [JobState.PENDING, JobState.QUEUED, JobState.FINISHED])
    with db.begin() as conn:
        assert claim_jobs(conn, jobs, "engine-a") == {jobs[0]}
    assert [s for s, _, _ in stored(db, jobs)] == ["queued", "queued", "finished"]
    with db.begin() as conn:
        conn.execute(update(tables.jobs).where(tables.jobs.c.id == jobs[0]).values(attempts=2))
        # job 0 is on attempt 2: its attempt-1 start is stale; job 2 ended before its start
        assert mark_running(conn, [(jobs[0], 1), (jobs[1], 1), (jobs[2], 1)]) == 1
    assert [s for s, _, _ in stored(db, jobs)] == ["queued", "running", "finished"]
