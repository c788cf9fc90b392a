"""Routes: works (bulk create with all jobs, get, cancel, retry failed, jobs, results)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from tasklift.bus.base import work_destination
from tasklift.db import queries as q
from tasklift.engine.dataflow import Ref
from tasklift.engine.specs import WorkSpec
from tasklift.errors import SubmissionError
from tasklift.service.access import visible_work, visible_workflow
from tasklift.service.deps import MAX_ID, EngineDep, IdPath, PrincipalDep
from tasklift.service.schemas import (
    JobPublic,
    JobsPublic,
    ResultPublic,
    ResultsPage,
    WorkCreate,
    WorkPublic,
)
from tasklift.states import WORK_TERMINAL, WorkflowState

router = APIRouter(prefix="/works", tags=["works"])

MAX_WAIT = 30.0
RECHECK = 0.5


def work_public(row: dict[str, Any]) -> WorkPublic:
    """Turn a work row into its API form."""
    return WorkPublic(
        id=row["id"],
        workflow_id=row["workflow_id"],
        seq=row["seq"],
        name=row["name"],
        function=row["function"],
        script=row["script"],
        archive_sha=row["archive_sha"],
        status=row["status"],
        options=json.loads(row["options"]),
        n_jobs=row["n_jobs"],
        n_finished=row["n_finished"],
        n_failed=row["n_failed"],
        n_cancelled=row["n_cancelled"],
        n_reused=row["n_reused"],
        n_skipped=row.get("n_skipped", 0),
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )


def _json_or_none(data: bytes | None, serializer: str) -> Any:
    if data is None or serializer != "json":
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def job_public(row: dict[str, Any], serializer: str) -> JobPublic:
    """Turn a job row into its API form (kwargs and result decoded for JSON works)."""
    call = _json_or_none(row["payload"], serializer)
    kwargs = call.get("kwargs") if isinstance(call, dict) and "args" not in call else call
    return JobPublic(
        id=row["id"],
        work_id=row["work_id"],
        idx=row["idx"],
        key=row["key"],
        state=row["state"],
        attempts=row["attempts"],
        kwargs=kwargs,
        result=_json_or_none(row["result"], serializer),
        error_type=row["error_type"],
        error_message=row["error_message"],
        traceback=row["traceback"],
        backend_handle=row["backend_handle"],
        reused_from=row["reused_from"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


@router.post("", status_code=201)
def create_work(body: WorkCreate, engine: EngineDep, principal: PrincipalDep) -> WorkPublic:
    """Store a work with all its jobs in one transaction and queue them."""
    with engine.db.connect() as conn:
        workflow = visible_workflow(conn, principal, body.workflow_id)
    if workflow["status"] != WorkflowState.RUNNING.value:
        raise SubmissionError(f"workflow {body.workflow_id} is {workflow['status']}: no new works")
    jobs: list[tuple[str, bytes]] = []
    refs = [[Ref(r.arg, r.work_id, r.idx, r.mode) for r in job.refs] for job in body.jobs]
    if any(refs) and body.serializer != "json":
        raise SubmissionError("inputs from other works need serializer 'json'")
    when: bytes | None = None
    if body.when is not None:
        try:
            when = base64.b64decode(body.when, validate=True)
        except (binascii.Error, ValueError):
            raise SubmissionError("when is not valid base64") from None
        if not body.when_arg:
            raise SubmissionError("when needs when_arg (the input it tests)")
    seen: set[str] = set()
    for i, job in enumerate(body.jobs):
        try:
            payload = base64.b64decode(job.payload, validate=True)
        except (binascii.Error, ValueError):
            raise SubmissionError(f"jobs[{i}].payload is not valid base64") from None
        if body.serializer == "json":
            try:
                orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise SubmissionError(f"jobs[{i}].payload is not JSON") from None
        if job.key in seen:
            raise SubmissionError(f"jobs[{i}] repeats key {job.key[:12]}", key=job.key)
        seen.add(job.key)
        jobs.append((job.key, payload))
    sha = workflow["archive_sha"]
    backend = body.backend or workflow["backend"] or "local"
    init_env = body.init_env if body.init_env is not None else workflow["init_env"]
    spec = WorkSpec(
        work_id=0,
        name=body.name,
        function=body.function,
        script=body.script,
        archive_sha=sha,
        archive_file=engine.archive_file(sha) if sha else None,
        cache_dir=str(engine.settings.cache_dir),
        serializer=body.serializer,
        timeout=body.timeout,
        retries=body.retries,
        init_env=init_env,
        backend=backend,
        resources=body.resources,
        when=when,
        when_arg=body.when_arg,
    )
    # memo reuse never crosses users: the owner is part of the key
    memo_key = hashlib.sha256(
        f"{workflow['owner']}|{sha}|{body.function}|{body.script}|{body.serializer}".encode()
    ).hexdigest()
    options = json.dumps(
        {
            "map_results": body.map_results,
            "retries": body.retries,
            "timeout": body.timeout,
            "resources": body.resources,
            "backend": backend,
            "init_env": init_env,
            "min_success": body.min_success,
            "serializer": body.serializer,
            "when_arg": body.when_arg,
        }
    )
    _, record = engine.submit_work(
        workflow_id=body.workflow_id,
        spec=spec,
        memo_key=memo_key,
        options=options,
        min_success=body.min_success,
        jobs=jobs,
        reuse=body.reuse and not workflow["fresh"],
        refs=refs if any(refs) else None,
    )
    return work_public(engine.work_row(record.work_id))


@router.get("/{work_id}")
def get_work(work_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> WorkPublic:
    """One work with its counters."""
    with engine.db.connect() as conn:
        return work_public(visible_work(conn, principal, work_id))


@router.post("/{work_id}/cancel")
def cancel_work(work_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> WorkPublic:
    """Cancel the work's queued and running jobs."""
    with engine.db.connect() as conn:
        visible_work(conn, principal, work_id)
    engine.cancel_work(work_id)
    return work_public(engine.work_row(work_id))


@router.post("/{work_id}/retry")
def retry_work(work_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> WorkPublic:
    """Run the work's failed jobs again (finished jobs are left alone)."""
    with engine.db.connect() as conn:
        visible_work(conn, principal, work_id)
    engine.retry_failed(work_id)
    return work_public(engine.work_row(work_id))


@router.get("/{work_id}/jobs")
def list_jobs(
    work_id: IdPath,
    engine: EngineDep,
    principal: PrincipalDep,
    state: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> JobsPublic:
    """A page of the work's jobs in submission order, optionally of one state."""
    j = q.jobs
    with engine.db.connect() as conn:
        work = visible_work(conn, principal, work_id)
        conditions = [j.c.work_id == work_id]
        if state:
            conditions.append(j.c.state == state)
        rows = (
            conn.execute(select(j).where(*conditions).order_by(j.c.idx).limit(limit).offset(offset))
            .mappings()
            .all()
        )
        count = conn.execute(select(func.count()).select_from(j).where(*conditions)).scalar()
    serializer = json.loads(work["options"]).get("serializer", "json")
    return JobsPublic(data=[job_public(dict(r), serializer) for r in rows], count=int(count or 0))


@router.get("/{work_id}/results")
async def list_results(
    work_id: IdPath,
    engine: EngineDep,
    principal: PrincipalDep,
    since: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0.0,
) -> ResultsPage:
    """Results that ended after cursor ``since``; with ``wait``, hold until one arrives.

    A client that reconnects passes its last cursor and gets everything it missed.
    """

    def fetch() -> tuple[list[q.ResultRecord], dict[str, Any]]:
        with engine.db.connect() as conn:
            work = visible_work(conn, principal, work_id)
            return q.result_records(conn, work_id, since, limit), work

    records, work = await run_in_threadpool(fetch)
    if not records and wait > 0 and work["status"] not in {s.value for s in WORK_TERMINAL}:
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()
        sub = engine.bus.subscribe(
            work_destination(work_id), lambda _m: loop.call_soon_threadsafe(arrived.set)
        )
        try:
            deadline = loop.time() + wait
            records, work = await run_in_threadpool(fetch)  # closes the subscribe race
            while not records and loop.time() < deadline:
                # woken by this process's bus; re-read now and then for results that another
                # engine committed (it announces them on its own bus)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), min(RECHECK, deadline - loop.time()))
                arrived.clear()
                records, work = await run_in_threadpool(fetch)
                if work["status"] in {s.value for s in WORK_TERMINAL}:
                    break
        finally:
            sub.close()
    cursor = records[-1].done_seq if records else since
    done = work["status"] in {s.value for s in WORK_TERMINAL} and cursor >= work["last_seq"]
    return ResultsPage(
        data=[
            ResultPublic(
                job_id=r.job_id,
                idx=r.idx,
                state=r.state,
                result=base64.b64encode(r.result).decode() if r.result is not None else None,
                error_type=r.error_type,
                error_message=r.error_message,
                traceback=r.traceback,
                attempts=r.attempts,
                done_seq=r.done_seq,
            )
            for r in records
        ],
        cursor=cursor,
        done=done,
    )
