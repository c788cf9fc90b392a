"""Database operations, as functions taking a connection. They never commit: callers own
the transaction (``with engine.begin() as conn: ...``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, select, update

from tasklift.db.models import Archive, Job, JobAttempt, Work, Workflow
from tasklift.engine.specs import ResultRecord
from tasklift.errors import NotFoundError
from tasklift.states import JobState, WorkflowState

__all__ = [
    "ResultRecord",
    "chunks",
    "find_memo",
    "insert_jobs",
    "result_records",
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
    """Insert a work row and return its id."""
    values.setdefault("created_at", time.time())
    return int(conn.execute(insert(works).values(**values)).inserted_primary_key[0])


def insert_jobs(conn: Connection, work_id: int, rows: Sequence[tuple[str, bytes]]) -> list[int]:
    """Bulk-insert one job per ``(key, payload)`` row (in order) and return their ids."""
    now = time.time()
    state = JobState.PENDING.value
    for batch_start, batch in zip(range(0, len(rows), 5000), chunks(rows, 5000), strict=True):
        conn.execute(
            insert(jobs),
            [
                {
                    "work_id": work_id,
                    "idx": batch_start + i,
                    "key": key,
                    "payload": payload,
                    "state": state,
                    "attempts": 0,
                    "created_at": now,
                }
                for i, (key, payload) in enumerate(batch)
            ],
        )
    return [
        int(r)
        for r in conn.execute(
            select(jobs.c.id).where(jobs.c.work_id == work_id).order_by(jobs.c.idx)
        ).scalars()
    ]


def find_memo(conn: Connection, memo_key: str, keys: Sequence[str]) -> dict[str, tuple[int, bytes]]:
    """Finished jobs of earlier works with the same memo key: ``{key: (job id, result)}``.

    Looks jobs up by key (indexed), so the cost follows the new work's size, not history.
    """
    found: dict[str, tuple[int, bytes]] = {}
    for key_batch in chunks(list(keys), 500):
        rows = conn.execute(
            select(jobs.c.key, jobs.c.id, jobs.c.result)
            .join(works, works.c.id == jobs.c.work_id)
            .where(
                and_(
                    jobs.c.key.in_(key_batch),
                    jobs.c.state == JobState.FINISHED.value,
                    works.c.memo_key == memo_key,
                )
            )
        )
        for key, job_id, result in rows:
            found.setdefault(key, (int(job_id), result))
    return found


def mark_reused(conn: Connection, reused: Sequence[tuple[int, int, bytes]]) -> None:
    """Finish jobs with results of earlier identical jobs: ``(job id, source id, result)``.

    Call on a new work before anything else ends: they take ``done_seq`` 1..n.
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
                {"_id": j, "_src": src, "_result": r, "_seq": i + 1}
                for i, (j, src, r) in enumerate(reused)
            ],
        )


def claim_jobs(conn: Connection, job_ids: Sequence[int], engine_id: str) -> set[int]:
    """Take pending jobs for one engine; return the ids it got (others took the rest).

    Rows are locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serializes writers),
    and only ``pending`` rows change, so two engines never hand out the same job.
    """
    claimed: set[int] = set()
    for batch in chunks(list(job_ids), 1000):
        lockable = (
            select(jobs.c.id)
            .where(jobs.c.id.in_(batch), jobs.c.state == JobState.PENDING.value)
            .with_for_update(skip_locked=True)
        )
        rows = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(lockable.scalar_subquery()))
            .values(state=JobState.QUEUED.value, attempts=jobs.c.attempts + 1, claimed_by=engine_id)
            .returning(jobs.c.id)
        )
        claimed.update(int(r[0]) for r in rows)
    return claimed


def set_handles(conn: Connection, job_ids: Sequence[int], handles: Sequence[str]) -> None:
    """Record each job's backend handle (for the monitor and the web pages)."""
    conn.execute(
        update(jobs)
        .where(jobs.c.id == bindparam("_id"))
        .values(backend_handle=bindparam("_handle")),
        [{"_id": j, "_handle": h} for j, h in zip(job_ids, handles, strict=True)],
    )


def store_terminal(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Write terminal job rows (keys: _id, state, result, error_*, attempts, times, logs)."""
    if rows:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == bindparam("_id"))
            .values(
                state=bindparam("_state"),
                result=bindparam("_result"),
                error_type=bindparam("_error_type"),
                error_message=bindparam("_error_message"),
                traceback=bindparam("_traceback"),
                attempts=bindparam("_attempts"),
                started_at=bindparam("_started_at"),
                finished_at=bindparam("_finished_at"),
                stdout=bindparam("_stdout"),
                done_seq=bindparam("_done_seq"),
                backend_handle=bindparam("_handle"),
            ),
            [{k: v for k, v in row.items() if k not in ("_idx", "_work")} for row in rows],
        )


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
    conn: Connection, work_id: int, finished: int, failed: int, cancelled: int, skipped: int = 0
) -> WorkCounts:
    """Add to a work's terminal counters; return them with the new ``last_seq``.

    ``last_seq`` grows by the number of jobs that just ended, and the row update serializes
    concurrent writers (engines), so ``last_seq - n + 1 .. last_seq`` numbers those jobs
    (``done_seq``) without gaps or repeats, even across retries that lower the counters.
    """
    ended = finished + failed + cancelled + skipped
    row = conn.execute(
        update(works)
        .where(works.c.id == work_id)
        .values(
            n_finished=works.c.n_finished + finished,
            n_failed=works.c.n_failed + failed,
            n_cancelled=works.c.n_cancelled + cancelled,
            n_skipped=works.c.n_skipped + skipped,
            last_seq=works.c.last_seq + ended,
        )
        .returning(
            works.c.n_jobs,
            works.c.n_finished,
            works.c.n_failed,
            works.c.n_cancelled,
            works.c.last_seq,
            works.c.n_skipped,
        )
    ).first()
    if row is None:
        raise NotFoundError(f"work {work_id} does not exist")
    return WorkCounts(*(int(v) for v in row))


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


def set_work_status(conn: Connection, work_id: int, status: str, finished: bool) -> None:
    """Set a work's status (and its end time when it is terminal)."""
    values: dict[str, Any] = {"status": status}
    if finished:
        values["finished_at"] = time.time()
    conn.execute(update(works).where(works.c.id == work_id).values(**values))


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
