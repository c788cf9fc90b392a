"""Routes: jobs (get one, its logs) and the job API of remote job runners (spec, heartbeat,
outcome), which only the job's own token may call."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import select, update

from tasklift.db import dataflow, tables
from tasklift.errors import ConflictError, NotFoundError, PermissionDeniedError, SubmissionError
from tasklift.records import JobSpec, Outcome, WorkOptions
from tasklift.service.access import visible_job
from tasklift.service.deps import EngineDep, IdPath, PrincipalDep
from tasklift.service.principal import Principal
from tasklift.service.routes.works import job_public
from tasklift.service.schemas import JobPublic, JobSpecPublic, LogsPublic, OutcomeIn
from tasklift.submission import runner_spec, spec_from_row

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}")
def get_job(job_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> JobPublic:
    """One job: kwargs, state, result, error and traceback, timestamps."""
    with engine.db.connect() as conn:
        row = visible_job(conn, principal, job_id)
        options = conn.execute(
            select(tables.works.c.options).where(tables.works.c.id == row["work_id"])
        ).scalar()
    return job_public(row, WorkOptions.from_json(options).serializer)


@router.get("/{job_id}/logs")
def get_logs(job_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> LogsPublic:
    """The job's captured stdout and stderr (head and tail kept when long)."""
    with engine.db.connect() as conn:
        row = visible_job(conn, principal, job_id)
    return LogsPublic(job_id=job_id, stdout=row["stdout"] or "", stderr=row["stderr"] or "")


def _own_job(engine: Any, principal: Principal, job_id: int) -> dict[str, Any]:
    """The job row, for the job token of this very job (or of its work); else 403/404."""
    if principal.kind != "job":
        raise PermissionDeniedError("only the job's own runner (its job token) may do this")
    with engine.db.connect() as conn:
        row = conn.execute(select(tables.jobs).where(tables.jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"job {job_id} not found")
        work = (
            conn.execute(select(tables.works).where(tables.works.c.id == row["work_id"]))
            .mappings()
            .one()
        )
    if (
        principal.work_id != row["work_id"]
        or principal.workflow_id != work["workflow_id"]
        or principal.job_id not in (None, job_id)
    ):
        raise PermissionDeniedError("this job token is scoped to another job")
    return {"job": dict(row), "work": dict(work)}


@router.get("/{job_id}/spec")
def get_spec(job_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> JobSpecPublic:
    """The job's function, archive and inputs (upstream results filled in), for its runner."""
    found = _own_job(engine, principal, job_id)
    job, work = found["job"], found["work"]
    options = WorkOptions.from_json(work["options"])
    spec = JobSpec(job_id, int(job["attempts"]) or 1, job["payload"])
    with engine.db.connect() as conn:
        [spec] = dataflow.resolve_payloads(conn, [spec])
    engine.note_heartbeat(job_id)  # fetching its spec is the runner's first sign of life
    return JobSpecPublic(
        **runner_spec(spec_from_row(work, options=options), spec),
        attempt=spec.attempt,
        init_env=options.init_env,
        resources=options.resources,
        heartbeat_interval=engine.settings.heartbeat_interval,
    )


@router.post("/{job_id}/heartbeat", status_code=204)
def heartbeat(
    job_id: IdPath,
    engine: EngineDep,
    principal: PrincipalDep,
    attempt: int | None = Query(default=None, ge=1, le=1000),
) -> None:
    """The runner of this job is alive (409: this attempt is no longer wanted: stop)."""
    _own_job(engine, principal, job_id)
    if attempt is not None and not engine.is_active(job_id, attempt):
        raise ConflictError(
            f"job {job_id} attempt {attempt} is not running here (cancelled, timed out, lost, "
            "or superseded by a retry)"
        )
    now = engine.note_heartbeat(job_id)
    with engine.db.begin() as conn:  # kept for the web pages and for a restarted engine
        conn.execute(update(tables.jobs).where(tables.jobs.c.id == job_id).values(heartbeat_at=now))


@router.post("/{job_id}/outcome")
def post_outcome(
    job_id: IdPath, body: OutcomeIn, engine: EngineDep, principal: PrincipalDep
) -> dict[str, Any]:
    """Record the end of one attempt (stored first, then announced on the bus)."""
    _own_job(engine, principal, job_id)
    if not engine.is_active(job_id, body.attempt):
        raise ConflictError(
            f"job {job_id} attempt {body.attempt} is not running here (already reported, "
            "cancelled, or superseded by a retry)"
        )
    try:
        result = base64.b64decode(body.result, validate=True) if body.result else None
    except (binascii.Error, ValueError):
        raise SubmissionError("result is not valid base64") from None
    engine.record_outcomes(
        [
            Outcome(
                job_id,
                body.attempt,
                ok=body.ok,
                result=result,
                error_type=body.error_type,
                error_message=body.error_message,
                traceback=body.traceback,
                retryable=body.retryable,
                skipped=body.skipped,
                started_at=body.started_at,
                finished_at=body.finished_at,
                stdout=body.stdout,
                stderr=body.stderr,
            )
        ],
        hold=False,  # a database error answers 5xx: the runner retries, or spools the outcome
    )
    return {"job_id": job_id, "accepted": True}
