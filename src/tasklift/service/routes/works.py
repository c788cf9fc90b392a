"""Routes: works (bulk create with all jobs, optionally streaming its results; get, cancel,
retry failed, jobs, results with long polling)."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from tasklift.db import tables
from tasklift.db.dataflow import Ref
from tasklift.errors import SubmissionError
from tasklift.records import WorkOptions
from tasklift.service.access import WorkflowFacts, check_workflow_access, visible_work
from tasklift.service.deps import MAX_ID, EngineDep, FactsDep, IdPath, PrincipalDep
from tasklift.service.principal import Principal
from tasklift.service.routes.rows import columns_for
from tasklift.service.schemas import (
    JobPublic,
    JobsPublic,
    ResultsPage,
    WorkCreate,
    WorkPublic,
)
from tasklift.service.waiting import ResultFollower, ResultWaiter, page_dict, read_results
from tasklift.states import WORK_TERMINAL
from tasklift.submission import WorkCode, build_submission

if TYPE_CHECKING:
    from tasklift.engine.engine import Engine, WorkRecord

router = APIRouter(prefix="/works", tags=["works"])

MAX_WAIT = 30.0
"""Longest ``wait`` a request may ask for (seconds)."""
RESULTS_PAGE = 1000
NDJSON = "application/x-ndjson"
_TERMINAL = frozenset(s.value for s in WORK_TERMINAL)


def work_public(row: dict[str, Any]) -> WorkPublic:
    """Turn a work row into its API form."""
    return WorkPublic(
        **columns_for(WorkPublic, row, without=("options", "n_skipped")),
        options=WorkOptions.from_json(row["options"]).to_dict(),
        n_skipped=row.get("n_skipped", 0),
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
        **columns_for(JobPublic, row, without=("kwargs", "result")),
        kwargs=kwargs,
        result=_json_or_none(row["result"], serializer),
    )


def _decode_when(body: WorkCreate) -> bytes | None:
    """The ``when=`` predicate (base64 in the body), checked to come with its input."""
    if body.when is None:
        return None
    try:
        when = base64.b64decode(body.when, validate=True)
    except (binascii.Error, ValueError):
        raise SubmissionError("when is not valid base64") from None
    if not body.when_arg:
        raise SubmissionError("when needs when_arg (the input it tests)")
    return when


def _decode_jobs(body: WorkCreate) -> list[tuple[str, bytes]]:
    """The jobs' keys and payloads (base64 in the body; JSON for a JSON work; keys unique)."""
    jobs: list[tuple[str, bytes]] = []
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
    return jobs


def _create(
    body: WorkCreate,
    engine: Engine,
    facts: WorkflowFacts,
    principal: Principal,
    on_stored: Callable[[WorkRecord], None] | None,
) -> WorkRecord:
    """Check, store and queue the work (runs in a worker thread).

    The workflow's owner and set-up come from ``facts`` (they never change); whether it still
    runs is checked by the store transaction itself.
    """
    workflow = facts.get(body.workflow_id)
    check_workflow_access(principal, body.workflow_id, workflow and workflow["owner"])
    assert workflow is not None  # checked above
    refs = [[Ref(r.arg, r.work_id, r.idx, r.mode) for r in job.refs] for job in body.jobs]
    if any(refs) and body.serializer != "json":
        raise SubmissionError("inputs from other works need serializer 'json'")
    when = _decode_when(body)
    jobs = _decode_jobs(body)
    sha = workflow["archive_sha"]
    options = WorkOptions(
        map_results=body.map_results,
        retries=body.retries,
        timeout=body.timeout,
        resources=body.resources,
        backend=body.backend or workflow["backend"] or "local",
        init_env=body.init_env if body.init_env is not None else workflow["init_env"],
        min_success=body.min_success,
        serializer=body.serializer,
        when_arg=body.when_arg,
    )
    archive_file = engine.archive_file(sha) if sha else None
    cache_dir = str(engine.settings.cache_dir)
    code = WorkCode(body.name, body.function, body.script, sha, archive_file, cache_dir)
    submission = build_submission(
        body.workflow_id, code, options, jobs,
        when=when,
        owner=workflow["owner"],  # memo reuse never crosses users
        reuse=body.reuse and not workflow["fresh"],
        refs=refs,
        require_running=True,
    )  # fmt: skip
    _, record = engine.submit_work(submission, on_stored)
    return record


def _create_public(
    body: WorkCreate, engine: Engine, facts: WorkflowFacts, principal: Principal
) -> WorkPublic:
    record = _create(body, engine, facts, principal, None)
    return work_public(engine.work_row(record.work_id))


@router.post(
    "",
    status_code=201,
    response_model=WorkPublic,
    responses={
        201: {
            "content": {NDJSON: {}},
            "description": "With ``wait``: the work, then results pages (one JSON per line).",
        }
    },
)
async def create_work(
    body: WorkCreate,
    engine: EngineDep,
    facts: FactsDep,
    principal: PrincipalDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0.0,
) -> Response:
    """Store a work with all its jobs in one transaction and queue them.

    With ``wait`` (seconds), the answer is ``application/x-ndjson``: on the first line the new
    work's ``id``, ``workflow_id``, ``n_jobs`` and ``n_reused`` (``GET /works/{id}`` has the
    rest), then a ``ResultsPage`` line each time results are in (as the results endpoint gives
    them), until one says ``done`` or ``wait`` has passed; continue from its ``cursor`` with
    ``GET /works/{id}/results``. One request then both creates a work and brings its results.
    """
    if wait <= 0:
        work = await run_in_threadpool(_create_public, body, engine, facts, principal)
        return Response(work.model_dump_json(), status_code=201, media_type="application/json")
    loop = asyncio.get_running_loop()
    waiters: list[ResultWaiter] = []

    def listen(record: WorkRecord) -> None:  # before any job of the work can end
        waiters.append(ResultWaiter(engine, record.work_id, loop))

    try:
        record = await run_in_threadpool(_create, body, engine, facts, principal, listen)
    except BaseException:
        for waiter in waiters:
            waiter.close()
        raise
    [waiter] = waiters
    follower = ResultFollower(engine, waiter, record.work_id, 0, RESULTS_PAGE)
    follower.n_jobs = record.n_jobs
    created = {
        "id": record.work_id,
        "workflow_id": body.workflow_id,
        "n_jobs": record.n_jobs,
        "n_reused": record.n_reused,
    }
    return StreamingResponse(
        _stream(created, follower, loop.time() + wait),
        status_code=201,
        media_type=NDJSON,
        background=BackgroundTask(_close, waiter),  # also when the stream never started
    )


async def _close(waiter: ResultWaiter) -> None:
    waiter.close()  # on the event loop: a plain function would cost a worker thread


async def _stream(
    created: dict[str, Any], follower: ResultFollower, deadline: float
) -> AsyncIterator[bytes]:
    """The lines of a ``create_work`` answer with ``wait``."""
    try:
        yield orjson.dumps(created) + b"\n"
        # reused jobs are stored ended, never announced: read them; the rest is announced
        read = created["n_reused"] > 0
        while True:
            # a page, or nothing: the work is done or the deadline passed
            records = await follower.next_page(deadline, read_first=read)
            read = False
            yield orjson.dumps(page_dict(records, follower.cursor, follower.done)) + b"\n"
            if follower.done or not records:
                return
            if follower.took_all():  # tell the client it need not ask again
                records = await follower.check_done()
                if records or follower.done:
                    page = page_dict(records, follower.cursor, follower.done)
                    yield orjson.dumps(page) + b"\n"
                if follower.done:
                    return
    finally:
        follower.waiter.close()


@router.get("/{work_id}")
def get_work(work_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> WorkPublic:
    """One work with its counters."""
    with engine.db.connect() as conn:
        return work_public(visible_work(conn, principal, work_id))


def _act(
    work_id: int, engine: Engine, principal: Principal, act: Callable[[int], Any]
) -> WorkPublic:
    """Run ``act`` on a work the caller may see; answer the work as it is then."""
    with engine.db.connect() as conn:
        visible_work(conn, principal, work_id)
    act(work_id)
    return work_public(engine.work_row(work_id))


@router.post("/{work_id}/cancel")
def cancel_work(work_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> WorkPublic:
    """Cancel the work's queued and running jobs."""
    return _act(work_id, engine, principal, engine.cancel_work)


@router.post("/{work_id}/retry")
def retry_work(work_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> WorkPublic:
    """Run the work's failed jobs again (finished jobs are left alone)."""
    return _act(work_id, engine, principal, engine.retry_failed)


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
    j = tables.jobs
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
    serializer = WorkOptions.from_json(work["options"]).serializer
    return JobsPublic(data=[job_public(dict(r), serializer) for r in rows], count=int(count or 0))


@router.get("/{work_id}/results", response_model=ResultsPage)
async def list_results(
    work_id: IdPath,
    engine: EngineDep,
    principal: PrincipalDep,
    since: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = RESULTS_PAGE,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0.0,
) -> Response:
    """Results that ended after cursor ``since``; with ``wait``, hold until one arrives.

    A client that reconnects passes its last cursor and gets everything it missed. A waiting
    request wakes when the engine announces the work's results (see ``service.waiting``).
    """
    loop = asyncio.get_running_loop()
    waiter = ResultWaiter(engine, work_id, loop) if wait > 0 else None
    try:
        records, work = await run_in_threadpool(
            read_results, engine, work_id, since, limit, principal
        )
        cursor = records[-1].done_seq if records else since
        done = work["status"] in _TERMINAL and cursor >= work["last_seq"]
        if waiter is not None and not records and not done:
            follower = ResultFollower(engine, waiter, work_id, since, limit)
            follower.n_jobs = int(work["n_jobs"])
            records = await follower.next_page(loop.time() + wait, read_first=False)
            if records and follower.took_all() and not follower.done and len(records) < limit:
                follower.limit = limit - len(records)
                records += await follower.check_done()
            cursor, done = follower.cursor, follower.done
    finally:
        if waiter is not None:
            waiter.close()
    return Response(orjson.dumps(page_dict(records, cursor, done)), media_type="application/json")
