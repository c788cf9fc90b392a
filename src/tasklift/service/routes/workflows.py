"""Routes: workflows (create, list, get, cancel, finish, their works)."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from sqlalchemy import desc, func, select

from tasklift.db import tables
from tasklift.db.workflows import workflow_totals
from tasklift.db.works import running_work_ids
from tasklift.errors import ConflictError, PermissionDeniedError, SubmissionError
from tasklift.records import WorkOptions
from tasklift.service.access import visible_workflow
from tasklift.service.deps import MAX_ID, EngineDep, IdPath, PrincipalDep, UserDep
from tasklift.service.routes.rows import columns_for
from tasklift.service.routes.works import work_public
from tasklift.service.schemas import (
    DagPublic,
    EdgePublic,
    WorkflowCreate,
    WorkflowFinish,
    WorkflowPublic,
    WorkflowsPublic,
    WorksPublic,
)
from tasklift.states import WORKFLOW_TERMINAL, WorkflowState
from tasklift.submission import WorkCode, build_submission

router = APIRouter(prefix="/workflows", tags=["workflows"])


def _decode(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _dump(name: str, value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # e.g. integers beyond 64 bits
        raise SubmissionError(f"{name} cannot be stored as JSON: {exc}") from None


WORKFLOW_COUNTS = ("n_works", "n_jobs", "n_finished", "n_failed", "n_cancelled")
"""The job counters of a workflow's answer (sums over its works)."""


def workflow_public(row: dict[str, Any], totals: dict[str, Any] | None = None) -> WorkflowPublic:
    """Turn a workflow row (plus optional counters) into its API form."""
    counts = {k: int((totals or {}).get(k) or 0) for k in WORKFLOW_COUNTS}
    decoded = {"result": _decode(row["result"]), "arguments": _decode(row["arguments"])}
    columns = columns_for(WorkflowPublic, row, without=(*WORKFLOW_COUNTS, *decoded, "token"))
    return WorkflowPublic(**columns | decoded | counts | {"fresh": bool(row["fresh"])})


def _visible(engine: Any, who: Any, workflow_id: int) -> dict[str, Any]:
    """The workflow's row, if ``who`` may see it (else NotFoundError)."""
    with engine.db.connect() as conn:
        return visible_workflow(conn, who, workflow_id)


def _works_of(conn: Any, workflow_id: int) -> list[dict[str, Any]]:
    """The rows of a workflow's works in submission order."""
    works = tables.works
    stmt = select(works).where(works.c.workflow_id == workflow_id).order_by(works.c.seq)
    return [dict(r) for r in conn.execute(stmt).mappings()]


_STORED_AS_GIVEN = {
    "parent_id", "name", "function", "source_dir", "archive_sha", "archive_size", "init_env",
    "backend", "fresh",
}  # fmt: skip
"""The fields of a workflow's request stored as they came."""


@router.post("", status_code=201)
def create_workflow(
    body: WorkflowCreate, request: Request, engine: EngineDep, user: PrincipalDep
) -> WorkflowPublic:
    """Register a workflow run owned by the caller (and start it here when ``remote``).

    Every check comes before the workflow is stored: a refused request creates nothing. A
    remote workflow's job token may create sub-workflows of its own workflow only; the answer
    then carries a workflow runner token for the sub-workflow (``token``), the one its works
    and its end are reported with.
    """
    if user.kind == "job" and (body.parent_id is None or body.parent_id != user.workflow_id):
        raise PermissionDeniedError("a job token can only create sub-workflows of its workflow")
    payload = _check_remote(body, engine) if body.remote else None
    arguments = _dump("arguments", body.arguments)
    if body.parent_id is not None:
        with engine.db.connect() as conn:
            visible_workflow(conn, user, body.parent_id)
    workflow_id = engine.create_workflow(
        **body.model_dump(include=_STORED_AS_GIVEN),
        owner=user.user,
        arguments=arguments,
        client_host=None,
        client_pid=None,
    )
    if payload is not None:
        try:
            _start_remote(body, payload, workflow_id, engine, str(request.base_url).rstrip("/"))
        except BaseException as exc:  # never leave a workflow running that nothing runs
            engine.finish_workflow(
                workflow_id, WorkflowState.FAILED, None, f"could not start the workflow: {exc}"
            )
            raise
    with engine.db.connect() as conn:  # just created for this caller: no scope check to pass
        row = conn.execute(select(tables.workflows).where(tables.workflows.c.id == workflow_id))
        public = workflow_public(dict(row.mappings().one()))
    if user.kind == "job":
        public.token = request.app.state.auth.issue_job_token(
            user=user.user, workflow_id=workflow_id, holder=user.holder
        )
    return public


def _check_remote(body: WorkflowCreate, engine: Any) -> bytes:
    """Check a remote workflow's request; return its job's payload."""
    if body.archive_sha is None:
        raise SubmissionError("a remote workflow needs its archive (archive_sha)")
    if not Path(engine.archive_file(body.archive_sha)).exists():
        raise SubmissionError(
            f"archive {body.archive_sha[:12]} is not on this server: PUT it first"
        )
    args = body.arguments if isinstance(body.arguments, dict) else {}
    if set(args) - {"args", "kwargs"}:
        raise SubmissionError("remote workflow arguments are {'args': [...], 'kwargs': {...}}")
    return _dump("arguments", {"args": args.get("args") or [], "kwargs": args.get("kwargs") or {}})


def _start_remote(
    body: WorkflowCreate, payload: bytes, workflow_id: IdPath, engine: Any, url: str
) -> None:
    """Queue the one job that runs the workflow function (its works come back via the API)."""
    sha = body.archive_sha
    assert sha is not None
    key = hashlib.sha256(payload).hexdigest()
    options = WorkOptions(
        retries=0, backend=body.backend, init_env=body.init_env, kind="workflow", service_url=url
    )
    cache_dir = str(engine.settings.cache_dir)
    code = WorkCode(body.name, body.function, body.script, sha, engine.archive_file(sha), cache_dir)
    # its own memo key: the workflow's job never shares a result
    submission = build_submission(
        workflow_id, code, options, [(key, payload)], memo_key=key, reuse=False
    )
    engine.submit_work(submission)


@router.get("")
def list_workflows(
    engine: EngineDep,
    user: UserDep,
    status: Annotated[str | None, Query(max_length=20)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    owner: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> WorkflowsPublic:
    """Workflows the caller may see, newest first; admins may filter by owner."""
    w = tables.workflows
    conditions = []
    if not user.is_admin:
        conditions.append(w.c.owner == user.user)
    elif owner:
        conditions.append(w.c.owner == owner)
    if status:
        conditions.append(w.c.status == status)
    if name:
        conditions.append(w.c.name.contains(name, autoescape=True))
    totals = workflow_totals()
    stmt = (
        select(
            w,
            *[totals.c[c] for c in WORKFLOW_COUNTS],
        )
        .outerjoin(totals, totals.c.workflow_id == w.c.id)
        .where(*conditions)
        .order_by(desc(w.c.id))
        .limit(limit)
        .offset(offset)
    )
    with engine.db.connect() as conn:
        rows = [dict(r) for r in conn.execute(stmt).mappings()]
        count = conn.execute(select(func.count()).select_from(w).where(*conditions)).scalar()
    return WorkflowsPublic(data=[workflow_public(r, r) for r in rows], count=int(count or 0))


@router.get("/{workflow_id}")
def get_workflow(workflow_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> WorkflowPublic:
    """One workflow with its job counters."""
    with engine.db.connect() as conn:
        row = visible_workflow(conn, principal, workflow_id)
        totals = workflow_totals()
        counts = (
            conn.execute(select(totals).where(totals.c.workflow_id == workflow_id))
            .mappings()
            .first()
        )
    return workflow_public(row, dict(counts) if counts else None)


@router.get("/{workflow_id}/works")
def list_works(workflow_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> WorksPublic:
    """The works of a workflow in submission order."""
    with engine.db.connect() as conn:
        visible_workflow(conn, principal, workflow_id)
        rows = _works_of(conn, workflow_id)
    return WorksPublic(data=[work_public(r) for r in rows], count=len(rows))


@router.get("/{workflow_id}/dag")
def get_dag(workflow_id: IdPath, engine: EngineDep, principal: PrincipalDep) -> DagPublic:
    """The works of a workflow and their edges: data-flow inputs, else submission order."""
    from tasklift.db.tables import edges

    with engine.db.connect() as conn:
        visible_workflow(conn, principal, workflow_id)
        rows = _works_of(conn, workflow_id)
        ids = [r["id"] for r in rows]
        data = conn.execute(select(edges).where(edges.c.work_id.in_(ids))).mappings().all()
        children = (
            conn.execute(
                select(tables.workflows.c.id).where(tables.workflows.c.parent_id == workflow_id)
            )
            .scalars()
            .all()
        )
    out = [
        EdgePublic(
            work_id=e["work_id"],
            upstream_work_id=e["upstream_work_id"],
            arg=e["arg"],
            mode=e["mode"],
        )
        for e in data
    ]
    with_inputs = {e.work_id for e in out}
    for before, after in itertools.pairwise(ids):
        if after not in with_inputs:
            out.append(EdgePublic(work_id=after, upstream_work_id=before, arg="", mode="order"))
    return DagPublic(
        works=[work_public(r) for r in rows], edges=out, children=[int(c) for c in children]
    )


@router.post("/{workflow_id}/cancel")
def cancel_workflow(workflow_id: IdPath, engine: EngineDep, user: UserDep) -> WorkflowPublic:
    """Mark the workflow cancelled, then cancel every work of it still running.

    The mark comes first: a client whose work ends cancelled finds the workflow cancelled (and
    by whom) when it reports the end of its workflow function, not a plain work failure.
    """
    row = _visible(engine, user, workflow_id)
    if row["status"] not in {s.value for s in WORKFLOW_TERMINAL}:
        engine.finish_workflow(
            workflow_id, WorkflowState.CANCELLED, None, f"cancelled by {user.user}"
        )  # marks it, then cancels its running works
    with engine.db.connect() as conn:  # an ended workflow may still have works running
        running = running_work_ids(conn, workflow_id)
    for work_id in running:
        engine.cancel_work(int(work_id))
    return get_workflow(workflow_id, engine, user)


@router.post("/{workflow_id}/finish")
def finish_workflow(
    workflow_id: IdPath, body: WorkflowFinish, engine: EngineDep, principal: PrincipalDep
) -> WorkflowPublic:
    """Store the workflow function's return value or error (once)."""
    row = _visible(engine, principal, workflow_id)
    if row["status"] in {s.value for s in WORKFLOW_TERMINAL}:
        raise ConflictError(f"workflow {workflow_id} already ended ({row['status']})")
    engine.finish_workflow(
        workflow_id,
        WorkflowState(body.status),
        orjson.dumps(body.result) if body.status == "finished" else None,
        body.error,
    )
    return get_workflow(workflow_id, engine, principal)
