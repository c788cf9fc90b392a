"""Database operations, as functions taking a connection. They never commit: callers own
the transaction (``with engine.begin() as conn: ...``).

The statements on the per-job paths (store a work and its jobs, claim, store outcomes, bump
counters, memo look-up) run as driver SQL through :mod:`tasklift.db.hot` (profiled in issue 7);
the rest is SQLAlchemy Core.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from tasklift.db import hot
from tasklift.db.models import Archive, Job, JobAttempt, Work, Workflow
from tasklift.errors import NotFoundError
from tasklift.records import ResultRecord
from tasklift.states import JobState, WorkflowState, WorkState

__all__ = [
    "WORKFLOW_COUNTS",
    "ResultRecord",
    "chunks",
    "find_memo",
    "insert_jobs",
    "result_records",
    "workflow_totals",
]

workflows = Workflow.__table__
works = Work.__table__
jobs = Job.__table__
attempts = JobAttempt.__table__
archives = Archive.__table__

TERMINAL = [
    s.value
    for s in (
        JobState.FINISHED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.UPSTREAM_FAILED,
        JobState.SKIPPED,
    )
]


def chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    """Yield ``items`` in slices of ``size`` (keeps IN lists and bind counts bounded)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_workflow(conn: Connection, **values: Any) -> int:
    """Insert a workflow row and return its id."""
    values.setdefault("created_at", time.time())
    values.setdefault("status", WorkflowState.RUNNING.value)
    return int(conn.execute(insert(workflows).values(**values)).inserted_primary_key[0])


def finish_workflow(
    conn: Connection, workflow_id: int, status: str, result: bytes | None, error: str | None
) -> None:
    """Store a workflow's end: status, return value or error."""
    conn.execute(
        update(workflows)
        .where(workflows.c.id == workflow_id)
        .values(status=status, result=result, error=error, finished_at=time.time())
    )


def upsert_archive(conn: Connection, sha256: str, size: int, n_files: int) -> None:
    """Record an archive once (a known hash is left as it is)."""
    exists = conn.execute(select(archives.c.sha256).where(archives.c.sha256 == sha256)).first()
    if exists is None:
        conn.execute(
            insert(archives).values(
                sha256=sha256, size=size, n_files=n_files, created_at=time.time()
            )
        )


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


def find_memo(conn: Connection, memo_key: str, keys: Sequence[str]) -> dict[str, tuple[int, bytes]]:
    """Finished jobs of earlier works with the same memo key: ``{key: (job id, result)}``.

    Looks jobs up by key (indexed), so the cost follows the new work's size, not history.
    """
    found: dict[str, tuple[int, bytes]] = {}
    finished = JobState.FINISHED.value
    for batch in chunks(list(keys), 500):
        sql = _MEMO.format(keys=hot.placeholders(len(batch)))
        for key, job_id, result in hot.execute(conn, sql, (*batch, finished, memo_key)):
            found.setdefault(key, (int(job_id), result))
    return found


_MEMO = (
    "SELECT j.key, j.id, j.result FROM jobs j JOIN works w ON w.id = j.work_id "
    "WHERE j.key IN ({keys}) AND j.state = ? AND w.memo_key = ?"
)


def mark_reused(
    conn: Connection, reused: Sequence[tuple[int, int, bytes]], first_seq: int = 1
) -> None:
    """Finish jobs with results of earlier identical jobs: ``(job id, source id, result)``.

    They take ``done_seq`` ``first_seq``, ``first_seq + 1``, ...: 1..n on a new work before
    anything else ended, else the numbers :func:`bump_work_counters` just gave them.
    """
    now = time.time()
    if reused:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == bindparam("_id"))
            .values(
                state=JobState.FINISHED.value,
                result=bindparam("_result"),
                reused_from=bindparam("_src"),
                finished_at=now,
                done_seq=bindparam("_seq"),
            ),
            [
                {"_id": j, "_src": src, "_result": r, "_seq": first_seq + i}
                for i, (j, src, r) in enumerate(reused)
            ],
        )


def add_reused(conn: Connection, work_id: int, n: int) -> None:
    """Count ``n`` more reused jobs on a work."""
    conn.execute(update(works).where(works.c.id == work_id).values(n_reused=works.c.n_reused + n))


def claim_jobs(conn: Connection, job_ids: Sequence[int], engine_id: str) -> set[int]:
    """Take pending jobs for one engine; return the ids it got (others took the rest).

    Rows are locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serializes writers),
    and only ``pending`` rows change, so two engines never hand out the same job.

    On PostgreSQL each id is looked up on its own (a lateral subquery per id: one primary-key
    probe each) and the state is checked on the locked rows. Given ``id IN (...) AND
    state = 'pending'`` in one scan, the planner read every pending job of the database through
    the state index (statistics missing or stale, as after a deep work was just stored, make
    that index look selective), and given the ids alone it scanned the whole table when it was
    small: either way a claim cost O(queue depth) or O(table), not O(batch) (issue 17,
    ``bench/queue_depth.py``).
    """
    claimed: set[int] = set()
    postgres = conn.dialect.name == "postgresql"
    for batch in chunks(list(job_ids), 1000):
        if postgres:
            sql = _CLAIM_PG
            params: tuple[Any, ...] = (
                list(batch),
                JobState.QUEUED.value,
                engine_id,
                JobState.PENDING.value,
            )
        else:
            sql = _CLAIM.format(ids=hot.placeholders(len(batch)))
            params = (JobState.QUEUED.value, engine_id, *batch, JobState.PENDING.value)
        claimed.update(int(r[0]) for r in hot.execute(conn, sql, params))
    return claimed


_CLAIM = (
    "UPDATE jobs SET state = ?, attempts = attempts + 1, claimed_by = ? "
    "WHERE id IN ({ids}) AND state = ? RETURNING id"
)
_CLAIM_PG = (
    "WITH locked AS MATERIALIZED (SELECT j.id, j.state FROM unnest(?::int[]) AS c(id) "
    "CROSS JOIN LATERAL (SELECT id, state FROM jobs WHERE jobs.id = c.id "
    "FOR UPDATE SKIP LOCKED) AS j) "
    "UPDATE jobs SET state = ?, attempts = attempts + 1, claimed_by = ? "
    "WHERE id IN (SELECT id FROM locked WHERE state = ?) RETURNING id"
)


def set_handles(conn: Connection, job_ids: Sequence[int], handles: Sequence[str]) -> None:
    """Record each job's backend handle (for the monitor and the web pages)."""
    conn.execute(
        update(jobs)
        .where(jobs.c.id == bindparam("_id"))
        .values(backend_handle=bindparam("_handle")),
        [{"_id": j, "_handle": h} for j, h in zip(job_ids, handles, strict=True)],
    )


_STORE_TERMINAL = (
    "UPDATE jobs SET state = ?, result = ?, error_type = ?, error_message = ?, traceback = ?, "
    "attempts = ?, started_at = ?, finished_at = ?, stdout = ?, done_seq = ?, "
    "backend_handle = ? WHERE id = ?"
)
_TERMINAL_KEYS = (
    "_state", "_result", "_error_type", "_error_message", "_traceback", "_attempts",
    "_started_at", "_finished_at", "_stdout", "_done_seq", "_handle", "_id",
)  # fmt: skip


def store_terminal(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Write terminal job rows (keys: _id, state, result, error_*, attempts, times, logs)."""
    hot.executemany(conn, _STORE_TERMINAL, [tuple(row[k] for k in _TERMINAL_KEYS) for row in rows])


def store_retries(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Put jobs back to pending and keep the failed attempt in the attempt history."""
    if not rows:
        return
    conn.execute(
        update(jobs)
        .where(jobs.c.id == bindparam("_id"))
        .values(state=JobState.PENDING.value, attempts=bindparam("_attempts")),
        [{"_id": r["_id"], "_attempts": r["_attempts"]} for r in rows],
    )
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
    """Put ``(job id, attempts-so-far)`` back to pending without charging an attempt."""
    if requeued:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == bindparam("_id"))
            .values(state=JobState.PENDING.value, attempts=bindparam("_attempts")),
            [{"_id": j, "_attempts": a} for j, a in requeued],
        )


@dataclass(frozen=True)
class WorkCounts:
    """A work's counters right after an update."""

    n_jobs: int
    n_finished: int
    n_failed: int
    n_cancelled: int
    last_seq: int
    n_skipped: int = 0


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
    conn.execute(
        update(jobs)
        .where(jobs.c.work_id == work_id, jobs.c.state == JobState.FAILED.value)
        .values(
            state=JobState.PENDING.value,
            attempts=0,
            done_seq=None,
            finished_at=None,
            started_at=None,
        )
    )
    conn.execute(
        update(works)
        .where(works.c.id == work_id)
        .values(n_failed=works.c.n_failed - len(rows), status="running", finished_at=None)
    )
    return [(int(a), int(b), c) for a, b, c in rows]


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
    now = time.time()
    conn.execute(
        update(jobs)
        .where(jobs.c.id == bindparam("_id"))
        .values(
            state=JobState.CANCELLED.value,
            error_type="Cancelled",
            error_message=message,
            finished_at=now,
            done_seq=bindparam("_seq"),
        ),
        [{"_id": row[0], "_seq": first + i} for i, row in enumerate(open_rows)],
    )
    return [
        ResultRecord(
            int(r[0]),
            int(r[1]),
            JobState.CANCELLED.value,
            None,
            "Cancelled",
            message,
            None,
            int(r[2]),
            first + i,
        )
        for i, r in enumerate(open_rows)
    ]


def result_records(
    conn: Connection, work_id: int, since: int = 0, limit: int | None = None
) -> list[ResultRecord]:
    """Terminal jobs of a work with ``done_seq > since``, in the order they ended."""
    stmt = (
        select(
            jobs.c.id,
            jobs.c.idx,
            jobs.c.state,
            jobs.c.result,
            jobs.c.error_type,
            jobs.c.error_message,
            jobs.c.traceback,
            jobs.c.attempts,
            jobs.c.done_seq,
        )
        .where(jobs.c.work_id == work_id, jobs.c.done_seq > since)
        .order_by(jobs.c.done_seq)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [
        ResultRecord(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], r[6], int(r[7]), int(r[8]))
        for r in conn.execute(stmt)
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


WORKFLOW_COUNTS = ("n_works", "n_jobs", "n_finished", "n_failed", "n_cancelled", "n_skipped")
"""The job counters of a workflow, summed over its works (:func:`workflow_totals`)."""


def workflow_totals() -> Any:
    """A subquery of every workflow's :data:`WORKFLOW_COUNTS` by ``workflow_id``."""
    return (
        select(
            works.c.workflow_id,
            func.count().label("n_works"),
            *(func.sum(works.c[name]).label(name) for name in WORKFLOW_COUNTS[1:]),
        )
        .group_by(works.c.workflow_id)
        .subquery()
    )


def mark_running(conn: Connection, started: Sequence[tuple[int, int]]) -> int:
    """Record ``(job_id, attempt)`` pairs ``running`` where the job is still queued with that
    attempt; return how many rows changed."""
    if not started:
        return 0
    stmt = (
        update(jobs)
        .where(
            jobs.c.id == bindparam("_id"),
            jobs.c.attempts == bindparam("_attempt"),
            jobs.c.state == JobState.QUEUED.value,
        )
        .values(state=JobState.RUNNING.value)
    )
    result = conn.execute(stmt, [{"_id": j, "_attempt": n} for j, n in started])
    return int(result.rowcount or 0)
