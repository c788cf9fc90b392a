"""Workflow rows: start, end, and the job counters summed over a workflow's works.
Functions take a connection and never commit (callers own the transaction)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from tasklift.db.tables import workflows, works
from tasklift.states import WorkflowState

__all__ = ["WORKFLOW_COUNTS", "finish_workflow", "insert_workflow", "workflow_totals"]


def insert_workflow(conn: Connection, **values: Any) -> int:
    """Insert a workflow row and return its id."""
    values.setdefault("created_at", time.time())
    values.setdefault("status", WorkflowState.RUNNING.value)
    return int(conn.execute(insert(workflows).values(**values)).inserted_primary_key[0])


def finish_workflow(
    conn: Connection, workflow_id: int, status: str, result: bytes | None, error: str | None
) -> None:
    """Store a workflow's end: status, return value or error."""
    conn.execute(
        update(workflows)
        .where(workflows.c.id == workflow_id)
        .values(status=status, result=result, error=error, finished_at=time.time())
    )


WORKFLOW_COUNTS = ("n_works", "n_jobs", "n_finished", "n_failed", "n_cancelled", "n_skipped")
"""The job counters of a workflow, summed over its works (:func:`workflow_totals`)."""


def workflow_totals() -> Any:
    """A subquery of every workflow's :data:`WORKFLOW_COUNTS` by ``workflow_id``."""
    return (
        select(
            works.c.workflow_id,
            func.count().label("n_works"),
            *(func.sum(works.c[name]).label(name) for name in WORKFLOW_COUNTS[1:]),
        )
        .group_by(works.c.workflow_id)
        .subquery()
    )
