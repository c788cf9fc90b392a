"""Job rows: insert, memo look-up, claims, handles, outcomes, retries, requeues, reopening,
cancelling, pending pages, and :func:`transition`, the one place a stored job's state changes.

Every write of ``jobs.state`` after a job's insert goes through :func:`transition` (only along
:data:`tasklift.states.ALLOWED`). Functions take a connection and never commit (callers own the
transaction). The statements on the per-job paths run as driver SQL through :mod:`tasklift.db.hot`.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, select

from tasklift.db import hot
from tasklift.db.tables import attempts, jobs
from tasklift.db.works import bump_work_counters, reopen_work
from tasklift.records import ResultRecord
from tasklift.states import JOB_TERMINAL, SOURCES, IllegalTransition, JobState

__all__ = [
    "cancel_open_jobs",
    "claim_jobs",
    "ended_already",
    "insert_jobs",
    "mark_reused",
    "mark_running",
    "pending_jobs",
    "reopen_failed_jobs",
    "requeue_jobs",
    "set_handles",
    "store_retries",
    "store_terminal",
    "store_unstored_jobs",
    "transition",
]

TERMINAL = sorted(s.value for s in JOB_TERMINAL)
"""The terminal job states, as stored."""


# ------------------------------------------------------------------------- the state writer
def transition(
    conn: Connection,
    job_ids: Sequence[int],
    to: JobState | str | Sequence[JobState | str],
    *,
    only_from: Collection[JobState] | None = None,
    columns: Sequence[str] = (),
    rows: Sequence[Sequence[Any]] = (),
    values: Mapping[str, Any] | None = None,
    add: Mapping[str, int] | None = None,
    match: Mapping[str, Any] | None = None,
    skip_locked: bool = False,
) -> list[int]:
    """Move jobs to state ``to`` (one state for all, or one per job) and write other columns
    with it; return the ids of the jobs moved.

    The statement itself moves a job only from a state :data:`~tasklift.states.ALLOWED` allows
    (:data:`~tasklift.states.SOURCES`), with no read before it. Without ``only_from`` every
    job must move: when one cannot, :class:`~tasklift.states.IllegalTransition` names it and its
    state, and the caller's transaction, rolled back by the exception, loses nothing (the jobs
    that did move go back with it). ``only_from`` (allowed sources only) is a guard instead:
    jobs in other states are left as they are (a claim another engine won, a start recorded
    after the job ended).

    Args:
        columns, rows: per-job values, one tuple per job in ``columns`` order: one statement
            per job (an executemany per target state).
        values: ``column = value`` for every job. ``add``: ``column = column + n``.
        match: ``column = value`` conditions every job must also meet (``only_from`` only).
        skip_locked: PostgreSQL skips jobs another transaction holds (claims; ``only_from``).

    Without ``rows`` the jobs move in bulk: one statement per 1,000 ids. Column names are
    the callers' own (this module's), never input.
    """
    if not job_ids:
        return []
    fixed = (tuple((values or {}).items()), tuple((add or {}).items()))
    guard = tuple((match or {}).items())
    if isinstance(to, str):
        targets: Sequence[JobState | str] = [to] * len(job_ids)
    elif len(to) != len(job_ids):
        raise ValueError(f"{len(to)} target states for {len(job_ids)} jobs")
    else:
        targets = to
    if only_from is not None:
        if len(set(targets)) != 1 or rows:
            raise ValueError("only_from guards a bulk move to one state")
        target = JobState(targets[0])
        sources = frozenset(JobState(s) for s in only_from)
        if not sources <= SOURCES[target]:
            refused = sorted(sources - SOURCES[target])
            raise IllegalTransition([(None, s.value, target.value) for s in refused])
    elif guard or skip_locked:
        raise ValueError("match and skip_locked need only_from")
    if rows or len(set(targets)) > 1:
        if len(rows or targets) != len(job_ids):
            raise ValueError(f"{len(rows)} rows of values for {len(job_ids)} jobs")
        moved = _move_each(conn, job_ids, targets, tuple(columns), rows, fixed)
    else:
        target = JobState(targets[0])
        moved = _move_bulk(conn, job_ids, target, only_from, fixed, guard, skip_locked)
    if only_from is None and len(moved) < len(set(job_ids)):
        _refuse(conn, job_ids, targets, moved)
    return moved


def _move_each(
    conn: Connection,
    job_ids: Sequence[int],
    targets: Sequence[JobState | str],
    columns: tuple[str, ...],
    rows: Sequence[Sequence[Any]],
    fixed: tuple[tuple[tuple[str, Any], ...], tuple[tuple[str, int], ...]],
) -> list[int]:
    """One UPDATE per job, grouped by target state; the ids moved (all of them, or fewer)."""
    tail = tuple(v for _, v in fixed[0]) + tuple(n for _, n in fixed[1])
    groups: dict[JobState | str, list[tuple[Any, ...]]] = defaultdict(list)
    for i, (job_id, target) in enumerate(zip(job_ids, targets, strict=True)):
        groups[target].append((*(rows[i] if rows else ()), *tail, job_id))
    changed = 0
    for target, params in groups.items():
        names = (columns, tuple(c for c, _ in fixed[0]), tuple(c for c, _ in fixed[1]))
        changed += hot.executemany(conn, _each_sql(JobState(target), *names), params)
    return list(job_ids) if changed >= len(job_ids) else []


def _move_bulk(
    conn: Connection,
    job_ids: Sequence[int],
    target: JobState,
    only_from: Collection[JobState] | None,
    fixed: tuple[tuple[tuple[str, Any], ...], tuple[tuple[str, int], ...]],
    guard: tuple[tuple[str, Any], ...],
    skip_locked: bool,
) -> list[int]:
    """One UPDATE ... RETURNING id per 1,000 jobs; the ids moved."""
    sources = tuple(sorted(only_from if only_from is not None else SOURCES[target]))
    names = (
        tuple(c for c, _ in fixed[0]),
        tuple(c for c, _ in fixed[1]),
        tuple(c for c, _ in guard),
    )
    set_params = (*(v for _, v in fixed[0]), *(n for _, n in fixed[1]))
    match_params = tuple(v for _, v in guard)
    postgres = conn.dialect.name == "postgresql"
    lock = "FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE"
    moved: list[int] = []
    for batch in hot.chunks(list(job_ids), 1000):
        if postgres:
            sql = _bulk_sql(target, sources, *names, lock, 0)
            params: tuple[Any, ...] = (list(batch), *set_params, *match_params)
        else:
            sql = _bulk_sql(target, sources, *names, None, len(batch))
            params = (*set_params, *batch, *match_params)
        moved += [int(r[0]) for r in hot.execute(conn, sql, params)]
    return moved


def _set_clause(target: JobState, per_job: tuple[str, ...], added: tuple[str, ...]) -> str:
    sets = [f"state = '{target.value}'", *(f"{c} = ?" for c in per_job)]
    return ", ".join([*sets, *(f"{c} = {c} + ?" for c in added)])


def _states(sources: Collection[JobState]) -> str:
    return ", ".join(f"'{s.value}'" for s in sorted(sources))


@functools.lru_cache(maxsize=128)
def _each_sql(
    target: JobState, columns: tuple[str, ...], fixed: tuple[str, ...], added: tuple[str, ...]
) -> str:
    sets = _set_clause(target, (*columns, *fixed), added)
    return f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({_states(SOURCES[target])})"


@functools.lru_cache(maxsize=128)
def _bulk_sql(
    target: JobState,
    sources: tuple[JobState, ...],
    fixed: tuple[str, ...],
    added: tuple[str, ...],
    matched: tuple[str, ...],
    lock: str | None,
    n_ids: int,
) -> str:
    """The bulk UPDATE on SQLite (``lock`` None: ``id IN (...)``, writers are serialized) or
    PostgreSQL (``lock``: each id looked up on its own, a lateral primary-key probe locking its
    row, and the state checked on the locked rows). Given ``id IN (...) AND state = ...`` in
    one scan, PostgreSQL's planner read every job of that state through the state index, given
    the ids alone it scanned the whole table when it was small: either way a claim cost
    O(queue depth) or O(table), not O(batch) (issue 17, ``bench/queue_depth.py``)."""
    where = "".join(f" AND {c} = ?" for c in matched)
    sets = _set_clause(target, fixed, added)
    if lock is None:
        return (
            f"UPDATE jobs SET {sets} WHERE id IN ({hot.placeholders(n_ids)}) "
            f"AND state IN ({_states(sources)}){where} RETURNING id"
        )
    return (
        "WITH locked AS MATERIALIZED (SELECT j.id, j.state FROM unnest(?::int[]) AS c(id) "
        f"CROSS JOIN LATERAL (SELECT id, state FROM jobs WHERE jobs.id = c.id {lock}) AS j) "
        f"UPDATE jobs SET {sets} "
        f"WHERE id IN (SELECT id FROM locked WHERE state IN ({_states(sources)})){where} "
        "RETURNING id"
    )


def _refuse(
    conn: Connection,
    job_ids: Sequence[int],
    targets: Sequence[JobState | str],
    moved: Sequence[int],
) -> None:
    """Raise :class:`IllegalTransition` for the jobs that did not move (read only now)."""
    done = set(moved)
    target_of = {j: JobState(t) for j, t in zip(job_ids, targets, strict=True) if j not in done}
    found = _stored_states(conn, list(target_of))
    # a job now in its target state moved, unless it was there already (not a move either)
    refused = [(j, found.get(j), t.value) for j, t in target_of.items() if found.get(j) != t]
    if not refused:
        refused = [(j, t.value, t.value) for j, t in target_of.items()]
    raise IllegalTransition(refused)


# ----------------------------------------------------------------------------- the job rows
_JOB_COLUMNS = ("work_id", "idx", "key", "payload", "state", "attempts", "claimed_by", "created_at")


def insert_jobs(
    conn: Connection,
    work_id: int,
    rows: Sequence[tuple[str, bytes]],
    *,
    claim: int = 0,
    skip: Collection[int] = (),
    engine_id: str | None = None,
    first: int = 0,
) -> list[int]:
    """Bulk-insert one job per ``(key, payload)`` row (in order) and return their ids.

    The rows get indexes ``first``, ``first + 1``, ... (a large work is stored in chunks).

    The first ``claim`` jobs whose index is not in ``skip`` are inserted already claimed by
    ``engine_id`` (``queued``, attempt 1), as :func:`claim_jobs` would leave them: a work whose
    first jobs are handed to a backend at once needs no second transaction to claim them.
    """
    now = time.time()
    pending = JobState.PENDING.value
    queued = JobState.QUEUED.value
    left = claim

    def values(start: int, batch: Sequence[tuple[str, bytes]]) -> list[tuple[Any, ...]]:
        nonlocal left
        out = []
        for i, (key, payload) in enumerate(batch, start):
            if left and i not in skip:
                left -= 1
                out.append((work_id, i, key, payload, queued, 1, engine_id, now))
            else:
                out.append((work_id, i, key, payload, pending, 0, None, now))
        return out

    if len(rows) == 1:
        row = dict(zip(_JOB_COLUMNS, values(first, rows)[0], strict=True))
        return [hot.insert_row(conn, jobs, row)]
    if conn.dialect.name == "postgresql":  # one COPY stream: no statement per row
        hot.copy_many(conn, jobs, _JOB_COLUMNS, values(first, rows))
    else:
        for start in range(0, len(rows), 5000):
            chunk = values(first + start, rows[start : start + 5000])
            hot.insert_many(conn, jobs, _JOB_COLUMNS, chunk)
    return [r[0] for r in hot.execute(conn, _JOB_IDS, (work_id, first, first + len(rows)))]


_JOB_IDS = "SELECT id FROM jobs WHERE work_id = ? AND idx >= ? AND idx < ? ORDER BY idx"


def store_unstored_jobs(conn: Connection, work_id: int, n_jobs: int) -> int:
    """Give a work whose store was interrupted placeholder rows for its missing jobs (indexes
    after the stored ones, no payload), ``pending`` until the caller cancels them in the same
    transaction: every job of the work then exists and ends, so its readers see it end.
    Return how many jobs were stored before."""
    stored = int(
        conn.execute(
            select(func.count()).select_from(jobs).where(jobs.c.work_id == work_id)
        ).scalar_one()
    )
    missing = [(f"unstored-{idx}", b"") for idx in range(stored, n_jobs)]
    if missing:
        insert_jobs(conn, work_id, missing, first=stored)
    return stored


def mark_reused(
    conn: Connection, reused: Sequence[tuple[int, int, bytes]], first_seq: int = 1
) -> None:
    """Finish jobs with results of earlier identical jobs: ``(job id, source id, result)``.

    They take ``done_seq`` ``first_seq``, ``first_seq + 1``, ...: 1..n on a new work before
    anything else ended, else the numbers :func:`bump_work_counters` just gave them.
    """
    transition(
        conn,
        [j for j, _, _ in reused],
        JobState.FINISHED,
        columns=("result", "reused_from", "done_seq"),
        rows=[(r, src, first_seq + i) for i, (_, src, r) in enumerate(reused)],
        values={"finished_at": time.time()},
    )


def claim_jobs(conn: Connection, job_ids: Sequence[int], engine_id: str) -> set[int]:
    """Take pending jobs for one engine; return the ids it got (others took the rest).

    Rows are locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serializes writers),
    and only ``pending`` rows change, so two engines never hand out the same job. Each id is
    looked up on its own (see :func:`transition`): a claim costs O(batch), not O(queue depth).
    """
    claimed = transition(
        conn,
        job_ids,
        JobState.QUEUED,
        only_from={JobState.PENDING},
        values={"claimed_by": engine_id},
        add={"attempts": 1},
        skip_locked=True,
    )
    return set(claimed)


def mark_running(conn: Connection, started: Sequence[tuple[int, int]]) -> int:
    """Record ``(job_id, attempt)`` pairs ``running`` where the job is still queued with that
    attempt; return how many rows changed (one statement per attempt number)."""
    by_attempt: dict[int, list[int]] = defaultdict(list)
    for job_id, number in started:
        by_attempt[number].append(job_id)
    return sum(
        len(
            transition(
                conn,
                ids,
                JobState.RUNNING,
                only_from={JobState.QUEUED},
                match={"attempts": number},
            )
        )
        for number, ids in by_attempt.items()
    )


def set_handles(conn: Connection, job_ids: Sequence[int], handles: Sequence[str]) -> None:
    """Record each job's backend handle (for the monitor and the web pages)."""
    rows = [(h, j) for j, h in zip(job_ids, handles, strict=True)]
    hot.executemany(conn, "UPDATE jobs SET backend_handle = ? WHERE id = ?", rows)


_TERMINAL_COLUMNS = (
    "result", "error_type", "error_message", "traceback", "attempts", "started_at",
    "finished_at", "stdout", "done_seq", "backend_handle",
)  # fmt: skip
_TERMINAL_KEYS = (
    "_result", "_error_type", "_error_message", "_traceback", "_attempts", "_started_at",
    "_finished_at", "_stdout", "_done_seq", "_handle",
)  # fmt: skip


def store_terminal(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Write terminal job rows (keys: _id, _state, _result, _error_*, _attempts, times, logs)."""
    transition(
        conn,
        [row["_id"] for row in rows],
        [row["_state"] for row in rows],
        columns=_TERMINAL_COLUMNS,
        rows=[tuple(row[k] for k in _TERMINAL_KEYS) for row in rows],
    )


def ended_already(conn: Connection, rows: Sequence[dict[str, Any]]) -> set[int]:
    """Jobs of these terminal rows another process ended meanwhile (their state refuses it)."""
    to = {row["_id"]: JobState(row["_state"]) for row in rows}
    return {j for j, state in _stored_states(conn, list(to)).items() if state not in SOURCES[to[j]]}


def _stored_states(conn: Connection, job_ids: Sequence[int]) -> dict[int, str]:
    """The stored state of each of these jobs (read in pages of 500 ids)."""
    found: dict[int, str] = {}
    for batch in hot.chunks(list(job_ids), 500):
        sql = f"SELECT id, state FROM jobs WHERE id IN ({hot.placeholders(len(batch))})"
        found.update((int(j), s) for j, s in hot.execute(conn, sql, batch))
    return found


def store_retries(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Put jobs back to pending and keep the failed attempt in the attempt history."""
    if not rows:
        return
    requeue_jobs(conn, [(r["_id"], r["_attempts"]) for r in rows])
    conn.execute(
        insert(attempts),
        [
            {
                "job_id": r["_id"],
                "attempt": r["_attempts"],
                "state": JobState.FAILED.value,
                "error_type": r["_error_type"],
                "error_message": r["_error_message"],
                "traceback": r["_traceback"],
                "started_at": r["_started_at"],
                "finished_at": r["_finished_at"],
            }
            for r in rows
        ],
    )


def requeue_jobs(conn: Connection, requeued: Sequence[tuple[int, int]]) -> None:
    """Put ``(job id, attempts-so-far)`` back to pending (a retry, or a job given back without
    charging an attempt)."""
    transition(
        conn,
        [j for j, _ in requeued],
        JobState.PENDING,
        columns=("attempts",),
        rows=[(a,) for _, a in requeued],
    )


def reopen_failed_jobs(conn: Connection, work_id: int) -> list[tuple[int, int, bytes]]:
    """Put a work's failed jobs back to pending with fresh attempts; return them.

    Returns ``(job id, idx, payload)`` of each reopened job; counters are lowered.
    """
    rows = conn.execute(
        select(jobs.c.id, jobs.c.idx, jobs.c.payload)
        .where(jobs.c.work_id == work_id, jobs.c.state == JobState.FAILED.value)
        .order_by(jobs.c.idx)
    ).all()
    if not rows:
        return []
    transition(
        conn,
        [int(r[0]) for r in rows],
        JobState.PENDING,
        only_from={JobState.FAILED},
        values={"attempts": 0, "done_seq": None, "finished_at": None, "started_at": None},
    )
    reopen_work(conn, work_id, len(rows))
    return [(int(a), int(b), c) for a, b, c in rows]


def cancel_open_jobs(conn: Connection, work_id: int, message: str) -> list[ResultRecord]:
    """Cancel a work's non-terminal jobs (counters included); return them as records."""
    open_rows = conn.execute(
        select(jobs.c.id, jobs.c.idx, jobs.c.attempts)
        .where(jobs.c.work_id == work_id, jobs.c.state.not_in(TERMINAL))
        .order_by(jobs.c.idx)
    ).all()
    if not open_rows:
        return []
    total = bump_work_counters(conn, work_id, 0, 0, len(open_rows)).last_seq
    first = total - len(open_rows) + 1
    cancelled = JobState.CANCELLED.value
    transition(
        conn,
        [int(r[0]) for r in open_rows],
        JobState.CANCELLED,
        columns=("done_seq",),
        rows=[(first + i,) for i in range(len(open_rows))],
        values={"error_type": "Cancelled", "error_message": message, "finished_at": time.time()},
    )
    return [
        ResultRecord(
            int(r[0]), int(r[1]), cancelled, None, "Cancelled", message, None, int(r[2]), first + i
        )
        for i, r in enumerate(open_rows)
    ]


def pending_jobs(
    conn: Connection, work_id: int, after_idx: int, limit: int
) -> list[tuple[int, int, int, bytes]]:
    """Pending jobs of a work with ``idx > after_idx``: ``(id, idx, attempts, payload)``."""
    rows = conn.execute(
        select(jobs.c.id, jobs.c.idx, jobs.c.attempts, jobs.c.payload)
        .where(
            jobs.c.work_id == work_id,
            jobs.c.idx > after_idx,
            jobs.c.state == JobState.PENDING.value,
            jobs.c.n_waiting == 0,
        )
        .order_by(jobs.c.idx)
        .limit(limit)
    )
    return [(int(a), int(b), int(c), d) for a, b, c, d in rows]
