"""Read-only queries behind the web pages: functions taking a connection, never committing.

Every query is bounded by what a page shows: a page of workflows with the counters of their
works (maintained on write, never counted from jobs), a page of jobs found through the
``(work_id, idx)`` and ``(work_id, state)`` indexes, and a fixed-size sample of durations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, desc, func, select

from tasklift.db import tables
from tasklift.service.principal import Principal
from tasklift.states import JobState, WorkState

__all__ = [
    "JobPage",
    "Totals",
    "attempts_of",
    "duration_sample",
    "jobs_in_state",
    "jobs_on_page",
    "list_workflows",
    "owners",
    "running_by_work",
    "windows",
    "workflow_totals",
    "works_of",
]

logger = logging.getLogger(__name__)

workflows, works, jobs, attempts = tables.workflows, tables.works, tables.jobs, tables.attempts

RUNNING = (JobState.QUEUED.value, JobState.RUNNING.value)
"""Job states shown as "running": handed to a backend and not ended (the engine stores
``queued`` when it hands a job out; a backend's own queue is not visible here)."""

WAITING = (JobState.PENDING.value, JobState.LOST.value)
"""Job states shown as "waiting": not handed out yet, or lost and about to be handed out again."""

MAX_WORKS = 1000
"""A workflow page shows at most this many works (in submission order)."""


@dataclass
class Totals:
    """Counters of one workflow, summed from its works' counters."""

    n_works: int = 0
    works_by_status: dict[str, int] = field(default_factory=dict)
    n_jobs: int = 0
    n_finished: int = 0
    n_failed: int = 0
    n_cancelled: int = 0
    n_running: int = 0

    @property
    def n_done(self) -> int:
        """Jobs in a terminal state."""
        return self.n_finished + self.n_failed + self.n_cancelled

    @property
    def n_waiting(self) -> int:
        """Jobs neither terminal nor running."""
        return max(0, self.n_jobs - self.n_done - self.n_running)

    @property
    def percent(self) -> float:
        """Share of jobs that ended, 0-100 (100 for a workflow without jobs)."""
        return 100.0 * self.n_done / self.n_jobs if self.n_jobs else 100.0


def _visible(principal: Principal, owner: str | None) -> list[ColumnElement[bool]]:
    if not principal.is_admin:
        return [workflows.c.owner == principal.user]
    return [workflows.c.owner == owner] if owner else []


LIST_COLUMNS = (
    workflows.c.id,
    workflows.c.name,
    workflows.c.owner,
    workflows.c.status,
    workflows.c.function,
    workflows.c.backend,
    workflows.c.created_at,
    workflows.c.finished_at,
)


def list_workflows(
    conn: Connection,
    principal: Principal,
    *,
    status: str | None,
    owner: str | None,
    name: str | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """A page of the workflows ``principal`` may see, newest first, and how many match.

    Args:
        conn: an open connection.
        principal: who is looking; non-admins see their own workflows only.
        status: keep workflows in this state.
        owner: admins only: keep this user's workflows.
        name: keep workflows whose name contains this text.
        limit: page size.
        offset: rows to skip.

    Returns:
        The page's rows (without the large columns) and the number of matching workflows.
    """
    conditions = _visible(principal, owner)
    if status:
        conditions.append(workflows.c.status == status)
    if name:
        conditions.append(workflows.c.name.contains(name, autoescape=True))
    rows = conn.execute(
        select(*LIST_COLUMNS)
        .where(*conditions)
        .order_by(desc(workflows.c.id))
        .limit(limit)
        .offset(offset)
    ).mappings()
    page = [dict(r) for r in rows]
    count = conn.execute(select(func.count()).select_from(workflows).where(*conditions)).scalar()
    return page, int(count or 0)


def workflow_totals(conn: Connection, workflow_ids: list[int]) -> dict[int, Totals]:
    """Counters of each workflow in ``workflow_ids`` (missing ids get empty totals)."""
    out = {wf: Totals() for wf in workflow_ids}
    if not workflow_ids:
        return out
    k = works
    rows = conn.execute(
        select(
            k.c.workflow_id,
            k.c.status,
            func.count(),
            func.sum(k.c.n_jobs),
            func.sum(k.c.n_finished),
            func.sum(k.c.n_failed),
            func.sum(k.c.n_cancelled),
        )
        .where(k.c.workflow_id.in_(workflow_ids))
        .group_by(k.c.workflow_id, k.c.status)
    )
    for wf, status, n, n_jobs, n_fin, n_fail, n_canc in rows:
        t = out[int(wf)]
        t.n_works += int(n)
        t.works_by_status[str(status)] = int(n)
        t.n_jobs += int(n_jobs or 0)
        t.n_finished += int(n_fin or 0)
        t.n_failed += int(n_fail or 0)
        t.n_cancelled += int(n_canc or 0)
    running = conn.execute(
        select(k.c.workflow_id, func.count())
        .select_from(jobs.join(k, k.c.id == jobs.c.work_id))
        .where(
            k.c.workflow_id.in_(workflow_ids),
            k.c.status == WorkState.RUNNING.value,
            jobs.c.state.in_(RUNNING),
        )
        .group_by(k.c.workflow_id)
    )
    for wf, n in running:
        out[int(wf)].n_running = int(n)
    return out


def owners(conn: Connection, limit: int = 500) -> list[str]:
    """Users who own workflows (for the admins' user filter)."""
    rows = conn.execute(
        select(workflows.c.owner).distinct().order_by(workflows.c.owner).limit(limit)
    )
    return [str(r[0]) for r in rows]


WORK_COLUMNS = (
    works.c.id,
    works.c.workflow_id,
    works.c.seq,
    works.c.name,
    works.c.function,
    works.c.status,
    works.c.options,
    works.c.n_jobs,
    works.c.n_finished,
    works.c.n_failed,
    works.c.n_cancelled,
    works.c.n_reused,
    works.c.created_at,
    works.c.finished_at,
)


def works_of(conn: Connection, workflow_id: int, limit: int = MAX_WORKS) -> list[dict[str, Any]]:
    """The works of a workflow in submission order (at most ``limit``)."""
    rows = conn.execute(
        select(*WORK_COLUMNS)
        .where(works.c.workflow_id == workflow_id)
        .order_by(works.c.seq)
        .limit(limit)
    ).mappings()
    return [dict(r) for r in rows]


def running_by_work(conn: Connection, work_ids: list[int]) -> dict[int, int]:
    """Running jobs (:data:`RUNNING`) per work, via the state index (few: bounded by the
    backends' capacity)."""
    if not work_ids:
        return {}
    rows = conn.execute(
        select(jobs.c.work_id, func.count())
        .where(jobs.c.work_id.in_(work_ids), jobs.c.state.in_(RUNNING))
        .group_by(jobs.c.work_id)
    )
    return {int(w): int(n) for w, n in rows}


JOB_COLUMNS = (
    jobs.c.id,
    jobs.c.idx,
    jobs.c.key,
    func.substr(jobs.c.payload, 1, 600).label("payload_head"),
    jobs.c.state,
    jobs.c.attempts,
    jobs.c.started_at,
    jobs.c.finished_at,
    jobs.c.backend_handle,
    jobs.c.error_type,
    func.substr(jobs.c.error_message, 1, 400).label("error_head"),
    jobs.c.reused_from,
)
"""Columns of a job table row: heads of the payload and error only, never results or logs."""


@dataclass
class JobPage:
    """One page of a work's jobs and where the neighbouring pages start."""

    rows: list[dict[str, Any]]
    prev_after: int | None = None
    """``after=`` of the previous page (-1: the first page), ``None``: no previous page."""
    next_after: int | None = None
    """``after=`` of the next page, ``None``: no next page."""


def jobs_on_page(conn: Connection, work_id: int, page: int, size: int) -> list[dict[str, Any]]:
    """Jobs ``(page-1)*size .. page*size-1`` of a work (``idx`` numbers them from 0, no gaps)."""
    start = (page - 1) * size
    rows = conn.execute(
        select(*JOB_COLUMNS)
        .where(jobs.c.work_id == work_id, jobs.c.idx >= start, jobs.c.idx < start + size)
        .order_by(jobs.c.idx)
        .limit(size)  # steers PostgreSQL to an ordered index scan (its row estimate is poor)
    ).mappings()
    return [dict(r) for r in rows]


def jobs_in_state(
    conn: Connection, work_id: int, states: tuple[str, ...], *, after: int = -1, size: int
) -> JobPage:
    """A page of a work's jobs in ``states``: the first ``size`` with ``idx > after``.

    Keyset pages cost the same on the last page as on the first.
    """
    where = [jobs.c.work_id == work_id, jobs.c.state.in_(states)]
    stmt = (
        select(*JOB_COLUMNS).where(*where, jobs.c.idx > after).order_by(jobs.c.idx).limit(size + 1)
    )
    found = [dict(r) for r in conn.execute(stmt).mappings()]
    page = JobPage(found[:size])
    if len(found) > size:
        page.next_after = found[size - 1]["idx"]
    if after >= 0:
        page.prev_after = _after_for_page_before(conn, where, after + 1, size)
    return page


def _after_for_page_before(
    conn: Connection, where: list[ColumnElement[bool]], first_idx: int, size: int
) -> int:
    """The ``after=`` that starts the page ending just before ``first_idx`` (-1: the first)."""
    found = conn.execute(
        select(jobs.c.idx)
        .where(*where, jobs.c.idx < first_idx)
        .order_by(desc(jobs.c.idx))
        .limit(size + 1)
    ).all()
    return int(found[size][0]) if len(found) > size else -1


def windows(n: int, limit: int, n_windows: int = 40) -> list[tuple[int, int]]:
    """Evenly spread ``[start, end]`` index windows covering about ``limit`` of ``n`` items."""
    if n <= limit:
        return [(0, max(0, n - 1))]
    width = max(1, limit // n_windows)
    last = n - width
    return [
        (round(i * last / (n_windows - 1)), round(i * last / (n_windows - 1)) + width - 1)
        for i in range(n_windows)
    ]


def duration_sample(
    conn: Connection, work_id: int, n_jobs: int, limit: int = 1000
) -> tuple[list[float], bool]:
    """Run times of the work's ended jobs: all of them, or an even sample of about ``limit``.

    A sample is read as 20 short ranges of ``idx``, one small ordered index scan each, which
    keeps the plan (and the time) the same whatever the database's statistics say.

    Returns:
        The durations in seconds and whether they are a sample (large works).
    """
    stmt = (
        select(jobs.c.finished_at - jobs.c.started_at)
        .where(
            jobs.c.work_id == work_id,
            jobs.c.idx.between(bindparam("first"), bindparam("last")),
            jobs.c.started_at.is_not(None),
            jobs.c.finished_at.is_not(None),
        )
        .order_by(jobs.c.idx)
        .limit(bindparam("size"))
    )
    spans = windows(n_jobs, limit, n_windows=20)
    out: list[float] = []
    for first, last in spans:
        rows = conn.execute(stmt, {"first": first, "last": last, "size": last - first + 1})
        out.extend(max(0.0, float(r[0])) for r in rows)
    return out, n_jobs > limit


def attempts_of(conn: Connection, job_id: int) -> list[dict[str, Any]]:
    """The earlier (failed) attempts of a job, oldest first."""
    rows = conn.execute(
        select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.attempt)
    ).mappings()
    return [dict(r) for r in rows]
