"""Routes: jobs (get one, its logs)."""

from __future__ import annotations

import json

from fastapi import APIRouter
from sqlalchemy import select

from tasklift.db import queries as q
from tasklift.service.access import visible_job
from tasklift.service.deps import EngineDep, IdPath, PrincipalDep
from tasklift.service.routes.works import job_public
from tasklift.service.schemas import JobPublic, LogsPublic

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}")
def get_job(job_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> JobPublic:
    """One job: kwargs, state, result, error and traceback, timestamps."""
    with engine.db.connect() as conn:
        row = visible_job(conn, principal, job_id)
        options = conn.execute(
            select(q.works.c.options).where(q.works.c.id == row["work_id"])
        ).scalar()
    return job_public(row, json.loads(options or "{}").get("serializer", "json"))


@router.get("/{job_id}/logs")
def get_logs(job_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> LogsPublic:
    """The job's captured stdout and stderr (head and tail kept when long)."""
    with engine.db.connect() as conn:
        row = visible_job(conn, principal, job_id)
    return LogsPublic(job_id=job_id, stdout=row["stdout"] or "", stderr=row["stderr"] or "")
