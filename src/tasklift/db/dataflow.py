"""Data-flow between works: job dependencies, release on upstream success, failure and skip
propagation, and filling a job's inputs from its upstream results at dispatch.

Functions take a connection and never commit (the engine owns the transaction). Job states
change through :func:`tasklift.db.jobs.transition`.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, insert, select, update

from tasklift.db.jobs import transition
from tasklift.db.tables import deps, edges, jobs, works
from tasklift.db.works import WorkCounts, bump_work_counters, reopen_work, set_work_status, state_of
from tasklift.errors import SubmissionError
from tasklift.records import JobSpec, ResultRecord, WorkOptions
from tasklift.states import WORK_TERMINAL, JobState, WorkState

__all__ = [
    "Ref",
    "cascade",
    "end_jobs",
    "register",
    "release",
    "reopen_downstream",
    "resolve_payloads",
]

_BROKEN = {JobState.FAILED.value, JobState.UPSTREAM_FAILED.value, JobState.CANCELLED.value}


@dataclass(frozen=True)
class Ref:
    """One input of one job: argument ``arg`` (``#3`` = 4th positional) comes from ``work_id``.

    ``idx`` names the upstream job (``each``/``job``); ``None`` means all its jobs (``all``).
    """

    arg: str
    work_id: int
    idx: int | None
    mode: str  # each | job | all


def register(
    conn: Connection,
    workflow_id: int,
    work_id: int,
    job_ids: Sequence[int],
    refs: Sequence[Sequence[Ref]],
) -> tuple[dict[int, int], dict[int, tuple[str, str]]]:
    """Store the jobs' dependencies and the work's edges.

    Returns:
        ``({job: upstream jobs still running}, {job: (state, message)})`` — the second for
        jobs that can never run because an input already failed or was skipped.

    Raises:
        SubmissionError: an upstream work of another workflow, or a missing upstream job.
    """
    by_idx = _upstream_jobs(conn, workflow_id, refs)
    dep_rows: list[dict[str, Any]] = []
    edge_set: set[tuple[int, str, str]] = set()
    waiting: dict[int, int] = {}
    blocked: dict[int, tuple[str, str]] = {}
    for job_id, job_refs in zip(job_ids, refs, strict=True):
        n_wait = 0
        for ref in job_refs:
            edge_set.add((ref.work_id, ref.arg, ref.mode))
            for up_id, state, error_type, message in _chosen(ref, by_idx[ref.work_id]):
                dep_rows.append(
                    {
                        "job_id": job_id,
                        "upstream_job_id": up_id,
                        "arg": ref.arg,
                        "mode": "all" if ref.idx is None else "one",
                    }
                )
                if state == JobState.FINISHED.value:
                    continue
                if job_id not in blocked:
                    found = _blocked_by(up_id, state, error_type, message)
                    if found is not None:
                        blocked[job_id] = found
                n_wait += 1
        if n_wait:
            waiting[job_id] = n_wait
    _store_links(conn, work_id, dep_rows, edge_set, waiting)
    return waiting, blocked


_UpstreamJob = tuple[int, str, str | None, str | None]
"""``(job id, state, error type, error message)`` of an upstream job."""


def _upstream_jobs(
    conn: Connection, workflow_id: int, refs: Sequence[Sequence[Ref]]
) -> dict[int, list[_UpstreamJob]]:
    """The jobs of every upstream work, by work id, in index order (checked to exist and to
    belong to ``workflow_id``)."""
    upstream_works = sorted({r.work_id for job_refs in refs for r in job_refs})
    found = dict(
        conn.execute(
            select(works.c.id, works.c.workflow_id).where(works.c.id.in_(upstream_works))
        ).all()
    )
    for upstream in upstream_works:
        if upstream not in found:
            raise SubmissionError(f"work {upstream} passed as an input does not exist")
        if found[upstream] != workflow_id:
            raise SubmissionError(
                f"work {upstream} belongs to another workflow; a work can only take inputs "
                "from works of its own workflow"
            )
    by_idx: dict[int, list[_UpstreamJob]] = {}
    for upstream in upstream_works:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.state, jobs.c.error_type, jobs.c.error_message)
            .where(jobs.c.work_id == upstream)
            .order_by(jobs.c.idx)
        ).all()
        by_idx[upstream] = [(int(r[0]), r[1], r[2], r[3]) for r in rows]
    return by_idx


def _chosen(ref: Ref, upstream_jobs: list[_UpstreamJob]) -> list[_UpstreamJob]:
    """The upstream jobs one input takes: the one it names, or all of them."""
    if ref.idx is None:
        return upstream_jobs
    if not 0 <= ref.idx < len(upstream_jobs):
        raise SubmissionError(
            f"input {ref.arg!r} names job {ref.idx} of work {ref.work_id}, which has "
            f"{len(upstream_jobs)} jobs"
        )
    return [upstream_jobs[ref.idx]]


def _blocked_by(
    up_id: int, state: str, error_type: str | None, message: str | None
) -> tuple[str, str] | None:
    """``(state, message)`` a job whose upstream job is in ``state`` ends with before it runs
    (``None``: that upstream job may still succeed)."""
    if state in _BROKEN:
        return (
            JobState.UPSTREAM_FAILED.value,
            f"upstream job {up_id} {state}: {error_type}: {message}",
        )
    if state == JobState.SKIPPED.value:
        return JobState.SKIPPED.value, f"upstream job {up_id} skipped"
    return None


def _store_links(
    conn: Connection,
    work_id: int,
    dep_rows: list[dict[str, Any]],
    edge_set: set[tuple[int, str, str]],
    waiting: dict[int, int],
) -> None:
    """Insert the job dependencies and work edges; note how many inputs each job waits for."""
    for start in range(0, len(dep_rows), 5000):
        conn.execute(insert(deps), dep_rows[start : start + 5000])
    if edge_set:
        conn.execute(
            insert(edges),
            [
                {"work_id": work_id, "upstream_work_id": w, "arg": a, "mode": m}
                for w, a, m in sorted(edge_set)
            ],
        )
    if waiting:
        conn.execute(
            update(jobs).where(jobs.c.id == bindparam("_id")).values(n_waiting=bindparam("_n")),
            [{"_id": j, "_n": n} for j, n in waiting.items()],
        )


def release(conn: Connection, finished: Sequence[int]) -> list[tuple[int, int, int, bytes]]:
    """Count finished upstream jobs off their dependents; return those now ready to run.

    Returns ``(work id, job id, idx, payload)`` of pending jobs that wait for nothing now.
    """
    rows = (
        conn.execute(select(deps.c.job_id).where(deps.c.upstream_job_id.in_(list(finished))))
        .scalars()
        .all()
    )
    if not rows:
        return []
    counts = Counter(int(r) for r in rows)
    conn.execute(
        update(jobs)
        .where(jobs.c.id == bindparam("_id"))
        .values(n_waiting=jobs.c.n_waiting - bindparam("_k")),
        [{"_id": j, "_k": k} for j, k in counts.items()],
    )
    ready = conn.execute(
        select(jobs.c.work_id, jobs.c.id, jobs.c.idx, jobs.c.payload).where(
            jobs.c.id.in_(list(counts)),
            jobs.c.n_waiting == 0,
            jobs.c.state == JobState.PENDING.value,
        )
    ).all()
    return [(int(w), int(j), int(i), p) for w, j, i, p in ready]


def cascade(
    conn: Connection, origins: dict[int, tuple[str, str]]
) -> tuple[list[tuple[int, ResultRecord]], dict[int, WorkState]]:
    """End the pending dependents of ended-without-success jobs, transitively.

    ``origins`` maps a job id to ``(its terminal state, its error text)``. A dependent of a
    failed or cancelled job becomes ``upstream_failed``; of a skipped one, ``skipped``.

    Returns:
        ``[(work id, record)]`` to publish, and the new state of every work touched.
    """
    published: list[tuple[int, ResultRecord]] = []
    states: dict[int, WorkState] = {}
    frontier = dict(origins)
    while frontier:
        rows = conn.execute(
            select(deps.c.job_id, deps.c.upstream_job_id).where(
                deps.c.upstream_job_id.in_(list(frontier))
            )
        ).all()
        cause: dict[int, int] = {}
        for job_id, up in rows:
            cause.setdefault(int(job_id), int(up))
        if not cause:
            break
        open_rows = conn.execute(
            select(jobs.c.id, jobs.c.work_id, jobs.c.idx, jobs.c.attempts)
            .where(jobs.c.id.in_(list(cause)), jobs.c.state == JobState.PENDING.value)
            .order_by(jobs.c.work_id, jobs.c.idx)
        ).all()
        per_work: dict[int, list[tuple[int, int, int, str, str]]] = defaultdict(list)
        next_frontier: dict[int, tuple[str, str]] = {}
        for job_id, work_id, idx, attempts in open_rows:
            up = cause[int(job_id)]
            up_state, up_error = frontier[up]
            state = (
                JobState.SKIPPED.value
                if up_state == JobState.SKIPPED.value
                else JobState.UPSTREAM_FAILED.value
            )
            message = (
                f"upstream job {up} was skipped"
                if state == JobState.SKIPPED.value
                else f"upstream job {up} {up_state}: {up_error}"
            )
            per_work[int(work_id)].append((int(job_id), int(idx), int(attempts), state, message))
            next_frontier[int(job_id)] = (state, message)
        for work_id, ended in per_work.items():
            records, state = end_jobs(conn, work_id, ended)
            published += [(work_id, r) for r in records]
            states[work_id] = state
        frontier = next_frontier
    return published, states


def end_jobs(
    conn: Connection, work_id: int, ended: Sequence[tuple[int, int, int, str, str]]
) -> tuple[list[ResultRecord], WorkState]:
    """End jobs that will never run: ``(job id, idx, attempts, state, message)`` each."""
    n_skip = sum(1 for e in ended if e[3] == JobState.SKIPPED.value)
    counts = bump_work_counters(conn, work_id, 0, len(ended) - n_skip, 0, n_skip)
    seq = counts.last_seq - len(ended) + 1
    rows = []
    records = []
    for offset, (job_id, idx, attempts, state, message) in enumerate(ended):
        error_type = "Skipped" if state == JobState.SKIPPED.value else "UpstreamFailed"
        rows.append((error_type, message, seq + offset))
        records.append(
            ResultRecord(
                job_id, idx, state, None, error_type, message, None, attempts, seq + offset
            )
        )
    transition(
        conn,
        [e[0] for e in ended],
        [e[3] for e in ended],
        columns=("error_type", "error_message", "done_seq"),
        rows=rows,
        values={"finished_at": time.time()},
    )
    return records, _state_of(conn, work_id, counts)


def _state_of(conn: Connection, work_id: int, counts: WorkCounts) -> WorkState:
    options = conn.execute(select(works.c.options).where(works.c.id == work_id)).scalar()
    min_success = WorkOptions.from_json(options).min_success
    state = state_of(counts, min_success)
    if state in WORK_TERMINAL:
        set_work_status(conn, work_id, state.value, finished=True)
    return state


def reopen_downstream(conn: Connection, reopened: Sequence[int]) -> dict[int, int]:
    """Give dependents that ended ``upstream_failed`` another chance (a retried upstream).

    Returns ``{work id: jobs reopened}`` (their counters are lowered, the works run again).
    """
    per_work: Counter[int] = Counter()
    frontier = list(reopened)
    while frontier:
        dependents = (
            conn.execute(
                select(deps.c.job_id).where(deps.c.upstream_job_id.in_(frontier)).distinct()
            )
            .scalars()
            .all()
        )
        rows = conn.execute(
            select(jobs.c.id, jobs.c.work_id).where(
                jobs.c.id.in_(list(dependents)),
                jobs.c.state == JobState.UPSTREAM_FAILED.value,
            )
        ).all()
        frontier = [int(r[0]) for r in rows]
        for job_id, work_id in rows:
            waiting = conn.execute(
                select(deps.c.id)
                .join(jobs, jobs.c.id == deps.c.upstream_job_id)
                .where(deps.c.job_id == job_id, jobs.c.state != JobState.FINISHED.value)
            ).all()
            transition(
                conn,
                [int(job_id)],
                JobState.PENDING,
                only_from={JobState.UPSTREAM_FAILED},
                values={
                    "n_waiting": len(waiting),
                    "attempts": 0,
                    "done_seq": None,
                    "finished_at": None,
                    "error_type": None,
                    "error_message": None,
                },
            )
            per_work[int(work_id)] += 1
    for work_id, n in per_work.items():
        reopen_work(conn, work_id, n)
    return dict(per_work)


def resolve_payloads(conn: Connection, batch: Sequence[JobSpec]) -> list[JobSpec]:
    """Put upstream results in place of the jobs' input references (JSON works only)."""
    rows = conn.execute(
        select(deps.c.job_id, deps.c.arg, deps.c.mode, jobs.c.idx, jobs.c.result)
        .join(jobs, jobs.c.id == deps.c.upstream_job_id)
        .where(deps.c.job_id.in_([j.job_id for j in batch]))
        .order_by(deps.c.job_id, deps.c.arg, jobs.c.idx)
    ).all()
    inputs: dict[int, dict[str, Any]] = defaultdict(dict)
    for job_id, arg, mode, _idx, result in rows:
        value = orjson.loads(result) if result is not None else None
        if mode == "all":
            inputs[int(job_id)].setdefault(arg, []).append(value)
        else:
            inputs[int(job_id)][arg] = value
    out = []
    for job in batch:
        given = inputs.get(job.job_id)
        if not given:
            out.append(job)
            continue
        call = orjson.loads(job.payload)
        for arg, value in given.items():
            if arg.startswith("#"):
                call["args"][int(arg[1:])] = value
            else:
                call.setdefault("kwargs", {})[arg] = value
        out.append(JobSpec(job.job_id, job.attempt, orjson.dumps(call), job.token))
    return out
