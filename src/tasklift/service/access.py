"""Ownership checks shared by the routes: another user's workflow is a 404, not a 403.

Also owns :class:`OwnerLookup` (the user a workflow's jobs belong to) and
:class:`WorkflowFacts`, the columns of a workflow that never change once it is created, kept in
memory so that adding a work needs no extra read of its workflow.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select
from sqlalchemy import Engine as DBEngine

from tasklift.db import tables
from tasklift.errors import ConfigError, NotFoundError, PermissionDeniedError
from tasklift.service.principal import Principal

if TYPE_CHECKING:
    from tasklift.engine.engine import Engine

__all__ = [
    "OwnerLookup",
    "WorkflowFacts",
    "check_workflow_access",
    "visible_job",
    "visible_work",
    "visible_workflow",
]

IMMUTABLE = ("id", "owner", "archive_sha", "backend", "init_env", "fresh")
"""The workflow columns nothing updates after the workflow is created."""


def visible_workflow(conn: Connection, principal: Principal, workflow_id: int) -> dict[str, Any]:
    """The workflow row, if ``principal`` may see it; else :class:`NotFoundError`."""
    row = (
        conn.execute(select(tables.workflows).where(tables.workflows.c.id == workflow_id))
        .mappings()
        .first()
    )
    check_workflow_access(principal, workflow_id, None if row is None else row["owner"])
    return dict(row)  # type: ignore[arg-type]  # checked above


def check_workflow_access(principal: Principal, workflow_id: int, owner: str | None) -> None:
    """Raise unless ``principal`` may use workflow ``workflow_id`` (``owner`` None: no such)."""
    if owner is None or not principal.can_see(owner):
        raise NotFoundError(f"workflow {workflow_id} not found")
    if principal.kind == "job" and (
        principal.work_id is not None or principal.workflow_id != workflow_id
    ):
        raise PermissionDeniedError("this job token is scoped to another workflow")


class OwnerLookup:
    """The owner of a workflow id, read once from the database (owners never change)."""

    MAX = 10_000

    def __init__(self, db: Callable[[], DBEngine]) -> None:
        self._db = db
        self._owners: dict[int, str] = {}
        self._lock = threading.Lock()

    def __call__(self, workflow_id: int) -> str:
        """The owner of ``workflow_id``."""
        name = self._owners.get(workflow_id)
        if name is not None:
            return name
        with self._db().connect() as conn:
            found = conn.execute(
                select(tables.workflows.c.owner).where(tables.workflows.c.id == workflow_id)
            ).scalar()
        if found is None:
            raise ConfigError(f"workflow {workflow_id} vanished before its jobs started")
        with self._lock:
            if len(self._owners) >= self.MAX:
                self._owners.clear()
            self._owners[workflow_id] = str(found)
        return str(found)


class WorkflowFacts:
    """The immutable columns (:data:`IMMUTABLE`) of recently used workflows of one engine.

    A workflow's status changes, so it is never taken from here: the store transaction of a
    new work checks it (``Engine.submit_work(require_running=True)``).
    """

    MAX = 10_000

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._rows: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, workflow_id: int) -> dict[str, Any] | None:
        """The workflow's immutable columns, read once; None if there is no such workflow."""
        with self._lock:
            row = self._rows.get(workflow_id)
            if row is not None:
                self._rows.move_to_end(workflow_id)
                return row
        columns = [getattr(tables.workflows.c, name) for name in IMMUTABLE]
        with self._engine.transaction() as conn:
            found = conn.execute(
                select(*columns).where(tables.workflows.c.id == workflow_id)
            ).first()
        if found is None:
            return None
        row = dict(zip(IMMUTABLE, found, strict=True))
        with self._lock:
            self._rows[workflow_id] = row
            if len(self._rows) > self.MAX:
                self._rows.popitem(last=False)
        return row


def visible_work(conn: Connection, principal: Principal, work_id: int) -> dict[str, Any]:
    """The work row, if ``principal`` may see its workflow; else :class:`NotFoundError`."""
    row = conn.execute(select(tables.works).where(tables.works.c.id == work_id)).mappings().first()
    if row is None:
        raise NotFoundError(f"work {work_id} not found")
    owner = conn.execute(
        select(tables.workflows.c.owner).where(tables.workflows.c.id == row["workflow_id"])
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
    row = conn.execute(select(tables.jobs).where(tables.jobs.c.id == job_id)).mappings().first()
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    visible_work(conn, principal, row["work_id"])
    return dict(row)
