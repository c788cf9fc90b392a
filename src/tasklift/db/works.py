"""Work rows: insert, sequence numbers, terminal counters (``done_seq`` numbering), status,
the engine storing a large work, and a work's state from its stored counters.
Functions take a connection and never commit (callers own the transaction)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from tasklift.db import hot
from tasklift.db.tables import works
from tasklift.errors import NotFoundError
from tasklift.states import WorkState, work_state

__all__ = [
    "WorkCounts",
    "add_reused",
    "bump_work_counters",
    "insert_work",
    "next_work_seq",
    "reopen_work",
    "running_work_ids",
    "set_storing_by",
    "set_work_status",
    "state_of",
]


def next_work_seq(conn: Connection, workflow_id: int) -> int:
    """The sequence number of the next work in a workflow."""
    current = conn.execute(
        select(func.max(works.c.seq)).where(works.c.workflow_id == workflow_id)
    ).scalar()
    return 0 if current is None else int(current) + 1


def insert_work(conn: Connection, **values: Any) -> int:
    """Insert a work row and return its id.

    Without ``seq`` the work takes the workflow's next sequence number in the same statement
    (a concurrent writer that took it too makes the unique constraint fail: retry).
    """
    values.setdefault("created_at", time.time())
    if "seq" in values:
        return hot.insert_row(conn, works, values)
    return hot.insert_row(conn, works, values, (("seq", _NEXT_SEQ),), (values["workflow_id"],))


_NEXT_SEQ = "SELECT COALESCE(MAX(seq) + 1, 0) FROM works WHERE workflow_id = ?"


def add_reused(conn: Connection, work_id: int, n: int) -> None:
    """Count ``n`` more reused jobs on a work."""
    conn.execute(update(works).where(works.c.id == work_id).values(n_reused=works.c.n_reused + n))


@dataclass(frozen=True)
class WorkCounts:
    """A work's counters right after an update."""

    n_jobs: int
    n_finished: int
    n_failed: int
    n_cancelled: int
    last_seq: int
    n_skipped: int = 0


def state_of(counts: WorkCounts, min_success: float) -> WorkState:
    """:func:`~tasklift.states.work_state` from a work's stored counters (as the counter
    updates return them)."""
    return work_state(
        counts.n_jobs,
        counts.n_finished,
        counts.n_failed,
        counts.n_cancelled,
        min_success,
        counts.n_skipped,
    )


def bump_work_counters(
    conn: Connection,
    work_id: int,
    finished: int,
    failed: int,
    cancelled: int,
    skipped: int = 0,
    *,
    done_status: str | None = None,
) -> WorkCounts:
    """Add to a work's terminal counters; return them with the new ``last_seq``.

    ``last_seq`` grows by the number of jobs that just ended, and the row update serializes
    concurrent writers (engines), so ``last_seq - n + 1 .. last_seq`` numbers those jobs
    (``done_seq``) without gaps or repeats, even across retries that lower the counters.

    With ``done_status``, the same statement also sets that status and the end time when the
    new counters make every job terminal (the caller's guess of the final state: it checks the
    returned counters and corrects the status when they tell otherwise).
    """
    ended = finished + failed + cancelled + skipped
    params: tuple[Any, ...] = (finished, failed, cancelled, skipped, ended)
    sql = _BUMP
    if done_status is not None:
        sql = _BUMP_AND_END
        params = (*params, ended, done_status, ended, time.time())
    rows = hot.execute(conn, sql, (*params, work_id))
    if not rows:
        raise NotFoundError(f"work {work_id} does not exist")
    return WorkCounts(*(int(v) for v in rows[0]))


_BUMP_SET = (
    "UPDATE works SET n_finished = n_finished + ?, n_failed = n_failed + ?, "
    "n_cancelled = n_cancelled + ?, n_skipped = n_skipped + ?, last_seq = last_seq + ?"
)
_ALL_ENDED = "n_finished + n_failed + n_cancelled + n_skipped + ? >= n_jobs"
_BUMP_WHERE = (
    " WHERE id = ? RETURNING n_jobs, n_finished, n_failed, n_cancelled, last_seq, n_skipped"
)
_BUMP = _BUMP_SET + _BUMP_WHERE
_BUMP_AND_END = (
    f"{_BUMP_SET}, status = CASE WHEN {_ALL_ENDED} THEN ? ELSE status END, "
    f"finished_at = CASE WHEN {_ALL_ENDED} THEN ? ELSE finished_at END{_BUMP_WHERE}"
)


def reopen_work(conn: Connection, work_id: int, n_failed: int) -> None:
    """A work runs again: ``n_failed`` of its failed jobs were put back to pending."""
    conn.execute(
        update(works)
        .where(works.c.id == work_id)
        .values(
            n_failed=works.c.n_failed - n_failed,
            status=WorkState.RUNNING.value,
            finished_at=None,
        )
    )


def running_work_ids(conn: Connection, workflow_id: int) -> list[int]:
    """The ids of the workflow's works that are still running."""
    stmt = select(works.c.id).where(
        works.c.workflow_id == workflow_id, works.c.status == WorkState.RUNNING.value
    )
    return [int(i) for i in conn.execute(stmt).scalars()]


def set_work_status(conn: Connection, work_id: int, status: str, finished: bool) -> None:
    """Set a work's status (and its end time when it is terminal)."""
    if finished:
        conn.execute(_SET_STATUS_ENDED, {"w": work_id, "s": status, "t": time.time()})
    else:
        conn.execute(_SET_STATUS, {"w": work_id, "s": status})


_SET_STATUS = update(works).where(works.c.id == bindparam("w")).values(status=bindparam("s"))
_SET_STATUS_ENDED = _SET_STATUS.values(finished_at=bindparam("t"))


def set_storing_by(conn: Connection, work_id: int, engine_id: str | None) -> None:
    """Set (or clear, ``None``) the engine storing the rest of a large work's jobs."""
    conn.execute(update(works).where(works.c.id == work_id).values(storing_by=engine_id))
