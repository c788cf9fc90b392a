"""Pages: the workflows table (``/``), one workflow (``/workflows/{id}``) and its convergence.

Each page is also served as its dynamic part alone (``?partial=1``), which the page's script
polls while something runs.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response

from tasklift.service.access import visible_workflow
from tasklift.service.deps import EngineDep, IdPath, UserDep
from tasklift.service.web import queries
from tasklift.service.web.convergence import convergence
from tasklift.service.web.dag import MAX_NODES, dag_svg, workflow_edges
from tasklift.service.web.plots import convergence_svg, progress_svg
from tasklift.service.web.present import decode_json, options_of, pretty
from tasklift.service.web.routing import WebRoute, is_partial, render
from tasklift.states import WorkflowState, WorkState

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(route_class=WebRoute, include_in_schema=False)

PAGE_SIZE = 50
WORKFLOW_STATES = [s.value for s in WorkflowState]
RUNNING = WorkflowState.RUNNING.value


@router.get("/")
def workflows_page(
    request: Request,
    engine: EngineDep,
    user: UserDep,
    status: Annotated[str | None, Query(max_length=20)] = None,
    owner: Annotated[str | None, Query(alias="user", max_length=200)] = None,
    name: Annotated[str | None, Query(alias="q", max_length=200)] = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Response:
    """The workflows the user may see, newest first, with filters and pages."""
    status = status if status in WORKFLOW_STATES else None
    owner = (owner or "").strip() or None
    name = (name or "").strip() or None
    with engine.db.connect() as conn:
        rows, count = queries.list_workflows(
            conn,
            user,
            status=status,
            owner=owner,
            name=name,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
        totals = queries.workflow_totals(conn, [r["id"] for r in rows])
        users = queries.owners(conn) if user.is_admin else []
    for row in rows:
        t = totals[row["id"]]
        row["totals"] = t
        row["bar"] = progress_svg(t.n_finished, t.n_failed, t.n_cancelled, t.n_jobs)
    filters = {"status": status, "user": owner if user.is_admin else None, "q": name}
    base = {k: v for k, v in filters.items() if v}
    pages = max(1, math.ceil(count / PAGE_SIZE))
    context = {
        "user": user,
        "rows": rows,
        "count": count,
        "page": page,
        "pages": pages,
        "prev_url": "/?" + urlencode({**base, "page": page - 1}) if page > 1 else None,
        "next_url": "/?" + urlencode({**base, "page": page + 1}) if page < pages else None,
        "filters": filters,
        "states": WORKFLOW_STATES,
        "users": users,
        "running": any(r["status"] == RUNNING for r in rows),
        "now": time.time(),
    }
    if is_partial(request):
        return render(request, "_workflows_live.html", context)
    return render(request, "workflows.html", context)


@router.get("/workflows/{workflow_id}")
def workflow_page(
    request: Request, workflow_id: IdPath, engine: EngineDep, user: UserDep
) -> Response:
    """One workflow: header, DAG of its works, works table, return value or error."""
    with engine.db.connect() as conn:
        workflow = visible_workflow(conn, user, workflow_id)
        works = queries.works_of(conn, workflow_id)
        totals = queries.workflow_totals(conn, [workflow_id])[workflow_id]
        running = queries.running_by_work(
            conn, [w["id"] for w in works if w["status"] == WorkState.RUNNING.value]
        )
        edges = workflow_edges(conn, workflow_id)
    for w in works:
        w["n_running"] = running.get(w["id"], 0)
        w["bar"] = progress_svg(w["n_finished"], w["n_failed"], w["n_cancelled"], w["n_jobs"])
        w["backend"] = options_of(w).backend or workflow["backend"]
    now = time.time()
    end = workflow["finished_at"] or now
    result = decode_json(workflow["result"])
    arguments = decode_json(workflow["arguments"])
    context = {
        "user": user,
        "workflow": workflow,
        "works": works,
        "totals": totals,
        "bar": progress_svg(totals.n_finished, totals.n_failed, totals.n_cancelled, totals.n_jobs),
        "elapsed": end - workflow["created_at"],
        "dag": dag_svg(works, edges),
        "dag_cut": len(works) > MAX_NODES,
        "result": pretty(result, workflow["result"]) if workflow["result"] is not None else None,
        "arguments": pretty(arguments) if arguments not in (None, {}, []) else None,
        "running": workflow["status"] == RUNNING
        or any(w["status"] == WorkState.RUNNING.value for w in works),
        "now": now,
    }
    if is_partial(request):
        return render(request, "_workflow_live.html", context)
    return render(request, "workflow.html", context)


@router.get("/workflows/{workflow_id}/convergence")
def convergence_page(
    request: Request,
    workflow_id: IdPath,
    engine: EngineDep,
    user: UserDep,
    field: Annotated[str | None, Query(max_length=200)] = None,
    mode: Literal["max", "min"] = "min",
) -> Response:
    """Values per job and best so far per iteration (work), for numeric results."""
    with engine.db.connect() as conn:
        workflow = visible_workflow(conn, user, workflow_id)
        works = queries.works_of(conn, workflow_id)
        data = convergence(conn, works, field=(field or "").strip() or None, mode=mode)
    label = data.field or "result"
    title = f"{label} per job and best so far ({mode}) per iteration of workflow {workflow_id}"
    base = {"field": data.field} if data.field else {}
    context = {
        "user": user,
        "workflow": workflow,
        "data": data,
        "plot": convergence_svg(
            data.points,
            [(it.first_x, it.last_x, it.best_so_far) for it in data.iterations],
            title=title,
            value_label=label,
        ),
        "best": data.iterations[-1].best_so_far if data.iterations else None,
        "mode_urls": {
            m: f"/workflows/{workflow_id}/convergence?" + urlencode({**base, "mode": m})
            for m in ("min", "max")
        },
        "running": workflow["status"] == RUNNING
        or any(w["status"] == WorkState.RUNNING.value for w in works),
        "now": time.time(),
    }
    if is_partial(request):
        return render(request, "_convergence_live.html", context)
    return render(request, "convergence.html", context)
