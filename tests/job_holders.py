"""Job tokens die with the job attempt that holds them: tests that sign job tokens by hand
first store a running job to hold them (a real row in the real database)."""

from __future__ import annotations

import time

from sqlalchemy import Engine, insert, update

from tasklift.db import tables
from tasklift.db.workflows import insert_workflow
from tasklift.db.works import insert_work


def running_job(
    db: Engine, owner: str = "alice", workflow_id: int | None = None
) -> tuple[int, int, int, int]:
    """Store a running job (in a new workflow unless given); return ``(workflow, work, job,
    attempt)``: ``holder=(job, attempt)`` makes a job token that lives while it runs."""
    now = time.time()
    with db.begin() as conn:
        if workflow_id is None:
            workflow_id = insert_workflow(conn, name="holder", owner=owner, function="m:f")
        work_id = insert_work(
            conn, workflow_id=workflow_id, name="holder", function="m:f", memo_key="0" * 64,
            status="running", options="{}", n_jobs=1,
        )
        job_id = int(conn.execute(insert(tables.jobs).values(
            work_id=work_id, idx=0, key="0" * 64, payload=b"{}", state="running", attempts=1,
            created_at=now,
        )).inserted_primary_key[0])
    return workflow_id, work_id, job_id, 1


def end_job(db: Engine, job_id: int, state: str = "finished") -> None:
    """Mark the job terminal: tokens it holds are refused from now on."""
    with db.begin() as conn:
        conn.execute(update(tables.jobs).where(tables.jobs.c.id == job_id).values(state=state))
