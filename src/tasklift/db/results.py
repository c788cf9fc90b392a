"""Reading ended jobs' results: a work's ended jobs as :class:`~tasklift.records.ResultRecord` s
in the order they ended (``done_seq``), what waiting clients and the bus replay read; and the
results of earlier identical jobs (memo reuse)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, select

from tasklift.db import hot
from tasklift.db.tables import jobs
from tasklift.records import ResultRecord
from tasklift.states import JobState

__all__ = ["ResultRecord", "find_memo", "result_records"]


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


def find_memo(conn: Connection, memo_key: str, keys: Sequence[str]) -> dict[str, tuple[int, bytes]]:
    """Finished jobs of earlier works with the same memo key: ``{key: (job id, result)}``.

    Looks jobs up by key (indexed), so the cost follows the new work's size, not history.
    """
    found: dict[str, tuple[int, bytes]] = {}
    finished = JobState.FINISHED.value
    for batch in hot.chunks(list(keys), 500):
        sql = _MEMO.format(keys=hot.placeholders(len(batch)))
        for key, job_id, result in hot.execute(conn, sql, (*batch, finished, memo_key)):
            found.setdefault(key, (int(job_id), result))
    return found


_MEMO = (
    "SELECT j.key, j.id, j.result FROM jobs j JOIN works w ON w.id = j.work_id "
    "WHERE j.key IN ({keys}) AND j.state = ? AND w.memo_key = ?"
)
