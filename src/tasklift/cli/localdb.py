"""The CLI without a service: workflows, works, jobs and logs read from the database itself,
and cancel/retry carried out by an engine in this process. Rows come back in the shape the
REST API gives them, so one printer serves both."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import orjson
from sqlalchemy import Engine as DBEngine
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from tasklift.db import tables
from tasklift.db.session import create_db_engine, mask_url, upgrade
from tasklift.db.workflows import WORKFLOW_COUNTS, workflow_totals
from tasklift.db.works import running_work_ids
from tasklift.engine.recovery import close_orphaned_workflows, process_alive
from tasklift.settings import Settings
from tasklift.states import WORK_TERMINAL, WORKFLOW_TERMINAL, JobState, WorkflowState

__all__ = [
    "cancel_workflow",
    "database_error",
    "database_label",
    "get_job_logs",
    "get_workflow",
    "list_jobs",
    "list_works",
    "open_db",
    "retry_workflow",
    "wait_workflow",
]

CANCEL_GRACE = 30.0
"""Seconds ``cancel`` waits for the process running a workflow to stop after its SIGINT."""


def database_label(settings: Settings) -> str:
    """Where a command without a service reads: the database URL, password masked."""
    return f"local database {mask_url(settings.database_url)}"


def database_error(exc: BaseException, url: str) -> str:
    """One line naming the database (password masked) and why it did not answer."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    text = lines[0].strip() if lines else type(exc).__name__
    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    text = text.replace(str(password), "***") if password else text
    return f"cannot use the database {mask_url(url)}: {text}"


@contextmanager
def open_db(settings: Settings, *, create: bool = False) -> Iterator[DBEngine]:
    """The database of ``settings``, checked to answer (schema upgraded when it is older).

    Args:
        settings: whose ``database_url`` to open.
        create: make an embedded SQLite database that does not exist yet (commands that only
            read refuse instead: there is nothing to read).

    Raises:
        click.ClickException: no such SQLite file, or the database does not answer (one line
            naming the URL, password masked, and the cause).
    """
    url = settings.database_url
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise click.ClickException(f"invalid database URL {mask_url(url)}: {exc}") from None
    if parsed.get_backend_name() == "sqlite" and not create:
        path = parsed.database
        if path and path != ":memory:" and not Path(path).exists():
            hint = (
                "pass --db URL or set TASKLIFT_HOME to where your workflows ran"
                if not settings.db_url
                else "check the path"
            )
            raise click.ClickException(
                f"no tasklift database at {path}: nothing has run there yet ({hint})"
            )
    engine = create_db_engine(url)
    try:
        try:
            upgrade(engine)  # a database of an older tasklift gets the current schema
        except SQLAlchemyError as exc:
            raise click.ClickException(database_error(exc, url)) from None
        yield engine
    finally:
        engine.dispose()


def _json(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return {"__undecodable__": f"{len(data)} bytes (not JSON: a pickle-serialized value)"}


COUNTS = WORKFLOW_COUNTS


def _workflow_dict(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["result"] = _json(out["result"])
    out["arguments"] = _json(out["arguments"])
    for name in COUNTS:
        out[name] = int(out.get(name) or 0)
    return out


def list_workflows(db: DBEngine, status: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` workflows (of one status), with their job counters."""
    close_orphaned_workflows(db)  # a killed submitter's workflow must not look running
    w, totals = tables.workflows, workflow_totals()
    stmt = (
        select(w, *(totals.c[name] for name in COUNTS))
        .outerjoin(totals, totals.c.workflow_id == w.c.id)
        .order_by(w.c.id.desc())
        .limit(limit)
    )
    if status:
        stmt = stmt.where(w.c.status == status)
    with db.connect() as conn:
        return [_workflow_dict(r) for r in conn.execute(stmt).mappings()]


def get_workflow(db: DBEngine, workflow_id: int) -> dict[str, Any]:
    """One workflow with its counters, arguments and result (decoded JSON)."""
    close_orphaned_workflows(db)
    w, totals = tables.workflows, workflow_totals()
    stmt = (
        select(w, *(totals.c[name] for name in COUNTS))
        .outerjoin(totals, totals.c.workflow_id == w.c.id)
        .where(w.c.id == workflow_id)
    )
    with db.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    if row is None:
        raise click.ClickException(f"workflow {workflow_id} does not exist")
    return _workflow_dict(row)


def list_works(db: DBEngine, workflow_id: int) -> list[dict[str, Any]]:
    """The works of a workflow in submission order."""
    with db.connect() as conn:
        rows = conn.execute(
            select(tables.works)
            .where(tables.works.c.workflow_id == workflow_id)
            .order_by(tables.works.c.seq)
        ).mappings()
        return [dict(r) for r in rows]


JOB_KEYS = (
    "id", "work_id", "idx", "key", "state", "attempts", "error_type", "error_message",
    "traceback", "backend_handle", "reused_from", "created_at", "started_at", "finished_at",
)  # fmt: skip
"""The fields of a job as ``GET /jobs/{id}`` gives them (besides kwargs and result)."""


def _job_dict(row: Any) -> dict[str, Any]:
    call = _json(row["payload"])
    kwargs = call.get("kwargs") if isinstance(call, dict) and "args" not in call else call
    out = {name: row[name] for name in JOB_KEYS}
    out["kwargs"] = kwargs
    out["result"] = _json(row["result"])
    return out


def list_jobs(
    db: DBEngine, work_id: int, states: list[str] | None, limit: int
) -> list[dict[str, Any]]:
    """A work's jobs in submission order (only those in ``states`` when given)."""
    j = tables.jobs
    columns = [j.c[name] for name in (*JOB_KEYS, "payload", "result")]
    stmt = select(*columns).where(j.c.work_id == work_id).order_by(j.c.idx).limit(limit)
    if states:
        stmt = stmt.where(j.c.state.in_(states))
    with db.connect() as conn:
        if (
            conn.execute(select(tables.works.c.id).where(tables.works.c.id == work_id)).first()
            is None
        ):
            raise click.ClickException(f"work {work_id} does not exist")
        return [_job_dict(r) for r in conn.execute(stmt).mappings()]


def get_job_logs(db: DBEngine, job_id: int) -> dict[str, Any]:
    """A job's captured stdout and stderr, its state and (failed jobs) its traceback."""
    j = tables.jobs
    with db.connect() as conn:
        row = (
            conn.execute(
                select(
                    j.c.id,
                    j.c.state,
                    j.c.stdout,
                    j.c.stderr,
                    j.c.error_type,
                    j.c.error_message,
                    j.c.traceback,
                ).where(j.c.id == job_id)
            )
            .mappings()
            .first()
        )
    if row is None:
        raise click.ClickException(f"job {job_id} does not exist")
    return dict(row) | {"stdout": row["stdout"] or "", "stderr": row["stderr"] or ""}


def runner_process(wf: dict[str, Any]) -> int | None:
    """The pid of the live process on this host that runs ``wf`` (``None``: none)."""
    pid = wf.get("client_pid")
    if wf["status"] != WorkflowState.RUNNING.value or pid is None:
        return None
    if wf.get("client_host") != socket.gethostname():
        return None
    return int(pid) if process_alive(int(pid), float(wf["created_at"])) else None


def wait_workflow(db: DBEngine, workflow_id: int, timeout: float | None) -> dict[str, Any]:
    """Poll until the workflow ends (or ``timeout`` seconds pass); return it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.1
    while True:
        wf = get_workflow(db, workflow_id)
        if wf["status"] in {s.value for s in WORKFLOW_TERMINAL}:
            return wf
        if (
            wf["status"] == WorkflowState.RUNNING.value
            and wf.get("client_host") == socket.gethostname()
            and wf.get("client_pid") is not None
            and runner_process(wf) is None
        ):
            raise click.ClickException(
                f"workflow {workflow_id} is marked running but the process that ran it "
                f"(pid {wf['client_pid']}) is gone: it will not end (run it again to resume)"
            )
        if deadline is not None and time.monotonic() >= deadline:
            raise click.ClickException(
                f"workflow {workflow_id} still {wf['status']} after {timeout:g} s"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def _stop_process(pid: int, since: float, workflow_id: int) -> None:
    """Stop the process running a workflow: SIGINT (its Ctrl-C path cancels its jobs), then
    SIGTERM when it ignores SIGINT (started in the background) or is still there after
    ``CANCEL_GRACE / 2`` seconds."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if sig == signal.SIGINT and _ignores_sigint(pid):
            continue
        os.kill(pid, sig)
        deadline = time.monotonic() + CANCEL_GRACE / 2
        while process_alive(pid, since):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        else:
            return
    raise click.ClickException(
        f"workflow {workflow_id}: its process (pid {pid}) did not stop within "
        f"{CANCEL_GRACE:g} s of SIGINT and SIGTERM; stop it yourself (kill -9 {pid})"
    )


def _ignores_sigint(pid: int) -> bool:
    """True when process ``pid`` ignores SIGINT (Linux; elsewhere assumed not)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except (OSError, ValueError):
        return False
    return False


def cancel_workflow(settings: Settings, db: DBEngine, workflow_id: int) -> dict[str, Any]:
    """Cancel a workflow: interrupt the process on this host that runs it (as Ctrl-C would),
    cancel its works' open jobs through an engine, and mark it cancelled."""
    from tasklift.embedded import build_engine

    wf = get_workflow(db, workflow_id)
    if wf["status"] in {s.value for s in WORKFLOW_TERMINAL}:
        return wf
    pid = runner_process(wf)
    if pid is not None:
        _stop_process(pid, float(wf["created_at"]), workflow_id)
    engine = build_engine(settings)
    try:
        with db.connect() as conn:
            running = running_work_ids(conn, workflow_id)
        for work_id in running:
            engine.cancel_work(int(work_id))
        engine.finish_workflow(
            workflow_id, WorkflowState.CANCELLED, None, "cancelled by the user (tasklift cancel)"
        )
    finally:
        engine.close()
    return get_workflow(db, workflow_id)


def retry_workflow(
    settings: Settings, db: DBEngine, workflow_id: int, timeout: float | None
) -> tuple[int, dict[str, int]]:
    """Run a workflow's failed jobs again here, with the jobs they feed; wait until they end.

    Returns:
        How many failed jobs were run again, and the job counts by state afterwards of the
        works that ran (the retried ones and those downstream of them).
    """
    from tasklift.embedded import build_engine

    wf = get_workflow(db, workflow_id)
    pid = runner_process(wf)
    if pid is not None:
        raise click.ClickException(
            f"workflow {workflow_id} is still running in process {pid}: retry it once it ended"
        )
    failed = [w for w in list_works(db, workflow_id) if w["n_failed"]]
    if not failed:
        return 0, {}
    engine = build_engine(settings)
    try:
        total = sum(engine.retry_failed(int(w["id"])) for w in failed)
        deadline = None if timeout is None else time.monotonic() + timeout
        terminal = {s.value for s in WORK_TERMINAL}
        while True:
            works = list_works(db, workflow_id)
            if all(w["status"] in terminal for w in works):
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise click.ClickException(
                    f"workflow {workflow_id}: retried jobs still running after {timeout:g} s"
                )
            time.sleep(0.1)
    finally:
        engine.close()
    with db.connect() as conn:
        counts = conn.execute(
            select(tables.jobs.c.state, func.count())
            .join(tables.works, tables.works.c.id == tables.jobs.c.work_id)
            .where(tables.works.c.workflow_id == workflow_id)
            .group_by(tables.jobs.c.state)
        ).all()
    return total, {str(state): int(n) for state, n in counts if state != JobState.PENDING.value}
