"""Pages: one work (``/works/{id}``: jobs, filters, retry and cancel) and one job (``/jobs/{id}``).

Job tables are pages of at most :data:`PAGE_SIZE` rows found by index; the duration histogram
uses a fixed-size sample, so a work with a million jobs costs what a small one does.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from tasklift.db import tables
from tasklift.service.access import visible_job, visible_work
from tasklift.service.deps import MAX_ID, EngineDep, IdPath, UserDep
from tasklift.service.web import queries
from tasklift.service.web.plots import histogram_svg, progress_svg
from tasklift.service.web.present import (
    decode_json,
    first_line,
    kwargs_of,
    kwargs_summary,
    options_of,
    pretty,
    tail,
)
from tasklift.service.web.routing import WebRoute, is_partial, render
from tasklift.states import JOB_TERMINAL, JobState, WorkState

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(route_class=WebRoute, include_in_schema=False)

PAGE_SIZE = 50

Filter = Literal["all", "failed", "running", "waiting", "finished", "cancelled"]
FILTER_STATES: dict[str, tuple[str, ...]] = {
    "failed": (JobState.FAILED.value,),
    "running": queries.RUNNING,
    "waiting": queries.WAITING,
    "finished": (JobState.FINISHED.value,),
    "cancelled": (
        JobState.CANCELLED.value,
        JobState.UPSTREAM_FAILED.value,
        JobState.SKIPPED.value,
    ),
}
TERMINAL = {s.value for s in JOB_TERMINAL}


def _workflow_head(conn: Any, workflow_id: int) -> dict[str, Any]:
    w = tables.workflows
    row = (
        conn.execute(select(w.c.id, w.c.name, w.c.status).where(w.c.id == workflow_id))
        .mappings()
        .first()
    )
    return dict(row) if row else {"id": workflow_id, "name": "?", "status": "?"}


def _job_row(row: dict[str, Any], serializer: str) -> dict[str, Any]:
    started, finished = row["started_at"], row["finished_at"]
    row["summary"] = kwargs_summary(row["payload_head"], serializer)
    row["duration"] = finished - started if started is not None and finished is not None else None
    if row["duration"] is None and started is not None and row["state"] == "running":
        row["duration"] = time.time() - started
    error = first_line(row["error_head"])
    row["error_line"] = f"{row['error_type']}: {error}" if row["error_type"] else error
    return row


@router.get("/works/{work_id}")
def work_page(
    request: Request,
    work_id: IdPath,
    engine: EngineDep,
    user: UserDep,
    state: Filter = "all",
    page: Annotated[int, Query(ge=1, le=MAX_ID)] = 1,
    after: Annotated[int, Query(ge=-1, le=MAX_ID)] = -1,
) -> Response:
    """One work: counters, retry/cancel buttons, a page of jobs, the duration histogram."""
    with engine.db.connect() as conn:
        work = visible_work(conn, user, work_id)
        workflow = _workflow_head(conn, work["workflow_id"])
        n_running = queries.running_by_work(conn, [work_id]).get(work_id, 0)
        prev_url = next_url = None
        base = f"/works/{work_id}?"
        if state == "all":
            pages = max(1, math.ceil(work["n_jobs"] / PAGE_SIZE))
            page = min(page, pages)
            rows = queries.jobs_on_page(conn, work_id, page, PAGE_SIZE)
            if page > 1:
                prev_url = base + urlencode({"page": page - 1})
            if page < pages:
                next_url = base + urlencode({"page": page + 1})
        else:
            pages = 0
            found = queries.jobs_in_state(
                conn, work_id, FILTER_STATES[state], after=after, size=PAGE_SIZE
            )
            rows = found.rows
            if found.prev_after is not None:
                prev_url = base + urlencode({"state": state, "after": found.prev_after})
            if found.next_after is not None:
                next_url = base + urlencode({"state": state, "after": found.next_after})
        durations, sampled = queries.duration_sample(conn, work_id, work["n_jobs"])
    options = options_of(work)
    serializer = options.serializer
    n_done = work["n_finished"] + work["n_failed"] + work["n_cancelled"]
    counts = {
        "all": work["n_jobs"],
        "failed": work["n_failed"],
        "running": n_running,
        "waiting": max(0, work["n_jobs"] - n_done - n_running),
        "finished": work["n_finished"],
        "cancelled": work["n_cancelled"],
    }
    running = work["status"] == WorkState.RUNNING.value
    context = {
        "user": user,
        "work": work,
        "workflow": workflow,
        "options": options,
        "counts": counts,
        "state": state,
        "rows": [_job_row(r, serializer) for r in rows],
        "page": page,
        "pages": pages,
        "prev_url": prev_url,
        "next_url": next_url,
        "bar": progress_svg(
            work["n_finished"], work["n_failed"], work["n_cancelled"], work["n_jobs"]
        ),
        "histogram": histogram_svg(
            durations, title=f"durations of {len(durations)} jobs of work {work_id}"
        ),
        "n_durations": len(durations),
        "sampled": sampled,
        "elapsed": (work["finished_at"] or time.time()) - work["created_at"],
        "running": running,
        "can_retry": work["n_failed"] > 0,
        "can_cancel": running,
        "now": time.time(),
    }
    if is_partial(request):
        return render(request, "_work_live.html", context)
    return render(request, "work.html", context)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: IdPath, engine: EngineDep, user: UserDep) -> Response:
    """One job: kwargs, result, traceback, logs, attempt history and timestamps."""
    with engine.db.connect() as conn:
        job = visible_job(conn, user, job_id)
        k = tables.works
        work = dict(
            conn.execute(
                select(k.c.id, k.c.name, k.c.seq, k.c.workflow_id, k.c.options, k.c.status).where(
                    k.c.id == job["work_id"]
                )
            )
            .mappings()
            .one()
        )
        workflow = _workflow_head(conn, work["workflow_id"])
        history = queries.attempts_of(conn, job_id)
    serializer = options_of(work).serializer
    final = {
        "attempt": job["attempts"],
        "state": job["state"],
        "error_type": job["error_type"],
        "error_message": job["error_message"],
        "started_at": job["started_at"],
        "finished_at": job["finished_at"],
        "final": True,
    }
    for a in history:
        a["final"] = False
    if job["attempts"] or job["state"] != JobState.PENDING.value:
        history.append(final)
    for a in history:
        a["error_line"] = first_line(a["error_message"])
        a["duration"] = (
            a["finished_at"] - a["started_at"]
            if a["started_at"] is not None and a["finished_at"] is not None
            else None
        )
    stdout, stdout_cut = tail(job["stdout"])
    stderr, stderr_cut = tail(job["stderr"])
    started, finished = job["started_at"], job["finished_at"]
    result = decode_json(job["result"], serializer)
    context = {
        "user": user,
        "job": job,
        "work": work,
        "workflow": workflow,
        "kwargs": pretty(kwargs_of(job["payload"], serializer), job["payload"], serializer),
        "result": pretty(result, job["result"], serializer) if job["result"] is not None else None,
        "traceback": tail(job["traceback"])[0],
        "stdout": stdout,
        "stdout_cut": stdout_cut,
        "stderr": stderr,
        "stderr_cut": stderr_cut,
        "history": history,
        "duration": finished - started if started is not None and finished is not None else None,
        "waited": started - job["created_at"] if started is not None else None,
        "running": job["state"] not in TERMINAL,
        "now": time.time(),
    }
    if is_partial(request):
        return render(request, "_job_live.html", context)
    return render(request, "job.html", context)
