"""Ownership checks shared by the routes: another user's workflow is a 404, not a 403."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from tasklift.db import queries as q
from tasklift.errors import NotFoundError, PermissionDeniedError
from tasklift.service.principal import Principal

__all__ = ["visible_job", "visible_work", "visible_workflow"]


def visible_workflow(conn: Connection, principal: Principal, workflow_id: int) -> dict[str, Any]:
    """The workflow row, if ``principal`` may see it; else :class:`NotFoundError`."""
    row = (
        conn.execute(select(q.workflows).where(q.workflows.c.id == workflow_id)).mappings().first()
    )
    if row is None or not principal.can_see(row["owner"]):
        raise NotFoundError(f"workflow {workflow_id} not found")
    if principal.kind == "job" and (
        principal.work_id is not None or principal.workflow_id != workflow_id
    ):
        raise PermissionDeniedError("this job token is scoped to another workflow")
    return dict(row)


def visible_work(conn: Connection, principal: Principal, work_id: int) -> dict[str, Any]:
    """The work row, if ``principal`` may see its workflow; else :class:`NotFoundError`."""
    row = conn.execute(select(q.works).where(q.works.c.id == work_id)).mappings().first()
    if row is None:
        raise NotFoundError(f"work {work_id} not found")
    owner = conn.execute(
        select(q.workflows.c.owner).where(q.workflows.c.id == row["workflow_id"])
    ).scalar()
    if owner is None or not principal.can_see(owner):
        raise NotFoundError(f"work {work_id} not found")
    if principal.kind == "job" and (
        principal.workflow_id != row["workflow_id"] or principal.work_id is not None
    ):
        raise PermissionDeniedError("this job token is scoped to another work")
    return dict(row)


def visible_job(conn: Connection, principal: Principal, job_id: int) -> dict[str, Any]:
    """The job row, if ``principal`` may see its workflow; else :class:`NotFoundError`."""
    row = conn.execute(select(q.jobs).where(q.jobs.c.id == job_id)).mappings().first()
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    visible_work(conn, principal, row["work_id"])
    return dict(row)
