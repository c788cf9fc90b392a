"""``tasklift ls`` / ``show`` / ``db upgrade``: inspect workflows in a database directly."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy import desc, func, select

from tasklift.cli.remote import service_client
from tasklift.cli.root import cli
from tasklift.db import queries as q
from tasklift.db.session import create_db_engine, mask_url, schema_is_current, upgrade
from tasklift.settings import Settings

__all__ = ["db_group", "ls_command", "show_command"]


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _open_db(settings: Settings) -> Any:
    engine = create_db_engine(settings.database_url)
    upgrade(engine)
    return engine


@cli.command("ls")
@click.option("--status", default=None, help="Only workflows in this state.")
@click.option("--limit", default=20, show_default=True, help="How many (newest first).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def ls_command(settings: Settings, status: str | None, limit: int, as_json: bool) -> None:
    """List workflows, newest first, with job counts (from the service when configured)."""
    rows = _ls_http(settings, status, limit)
    title = "workflows on the service"
    if rows is None:
        rows = _ls_db(settings, status, limit)
        title = f"workflows in {mask_url(settings.database_url)}"
    _print_ls(title, rows, as_json)


def _ls_http(settings: Settings, status: str | None, limit: int) -> list[dict[str, Any]] | None:
    client = None if settings.db_url else service_client(settings, required=False)
    if client is None:
        return None
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    data = client.get("/workflows", params=params)["data"]
    return [
        {
            "id": wf["id"],
            "name": wf["name"],
            "status": wf["status"],
            "owner": wf["owner"],
            "created_at": wf["created_at"],
            "finished_at": wf["finished_at"],
            "works": wf["n_works"],
            "jobs": wf["n_jobs"],
            "finished": wf["n_finished"],
            "failed": wf["n_failed"],
            "cancelled": wf["n_cancelled"],
        }
        for wf in data
    ]


def _ls_db(settings: Settings, status: str | None, limit: int) -> list[dict[str, Any]]:
    engine = _open_db(settings)
    w, k = q.workflows, q.works
    totals = (
        select(
            k.c.workflow_id,
            func.count().label("works"),
            func.sum(k.c.n_jobs).label("jobs"),
            func.sum(k.c.n_finished).label("finished"),
            func.sum(k.c.n_failed).label("failed"),
            func.sum(k.c.n_cancelled).label("cancelled"),
        )
        .group_by(k.c.workflow_id)
        .subquery()
    )
    stmt = (
        select(
            w.c.id,
            w.c.name,
            w.c.status,
            w.c.created_at,
            w.c.finished_at,
            totals.c.works,
            totals.c.jobs,
            totals.c.finished,
            totals.c.failed,
            totals.c.cancelled,
        )
        .outerjoin(totals, totals.c.workflow_id == w.c.id)
        .order_by(desc(w.c.id))
        .limit(limit)
    )
    if status:
        stmt = stmt.where(w.c.status == status)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(stmt).mappings()]
    for row in rows:
        for name in ("works", "jobs", "finished", "failed", "cancelled"):
            row[name] = int(row[name] or 0)
    return rows


def _print_ls(title: str, rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=title)
    for column in (
        "id",
        "name",
        "status",
        "created",
        "works",
        "jobs",
        "finished",
        "failed",
        "done",
    ):
        table.add_column(
            column,
            justify="right"
            if column in ("id", "works", "jobs", "finished", "failed", "done")
            else "left",
        )
    for row in rows:
        done = row["finished"] + row["failed"] + row["cancelled"]
        pct = f"{100 * done / row['jobs']:.0f}%" if row["jobs"] else "-"
        table.add_row(
            str(row["id"]),
            row["name"],
            row["status"],
            _when(row["created_at"]),
            str(row["works"]),
            str(row["jobs"]),
            str(row["finished"]),
            str(row["failed"]),
            pct,
        )
    Console().print(table)


@cli.command("show")
@click.argument("workflow_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--failures", default=10, show_default=True, help="Failed jobs to show per work.")
@click.pass_obj
def show_command(settings: Settings, workflow_id: int, as_json: bool, failures: int) -> None:
    """Show one workflow: its works, their job counts, and failed jobs with their errors."""
    data = _show_http(settings, workflow_id, failures)
    if data is None:
        data = _show_db(settings, workflow_id, failures)
    _print_show(*data, as_json=as_json)


def _show_http(
    settings: Settings, workflow_id: int, failures: int
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, list[dict[str, Any]]]] | None:
    client = None if settings.db_url else service_client(settings, required=False)
    if client is None:
        return None
    wf = dict(client.get(f"/workflows/{workflow_id}"))
    wf["result"] = json.dumps(wf["result"]).encode() if wf["result"] is not None else None
    works = [dict(w) for w in client.get(f"/workflows/{workflow_id}/works")["data"]]
    failed: dict[int, list[dict[str, Any]]] = {}
    for work in works:
        failed[work["id"]] = []
        if work["n_failed"] or work["n_cancelled"]:
            for state in ("failed", "cancelled"):
                failed[work["id"]] += client.get(
                    f"/works/{work['id']}/jobs", params={"state": state, "limit": failures}
                )["data"]
    return wf, works, failed


def _show_db(
    settings: Settings, workflow_id: int, failures: int
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    engine = _open_db(settings)
    w, k, j = q.workflows, q.works, q.jobs
    with engine.connect() as conn:
        wf = conn.execute(select(w).where(w.c.id == workflow_id)).mappings().first()
        if wf is None:
            raise click.ClickException(f"workflow {workflow_id} does not exist")
        works = [
            dict(r)
            for r in conn.execute(
                select(k).where(k.c.workflow_id == workflow_id).order_by(k.c.seq)
            ).mappings()
        ]
        failed: dict[int, list[dict[str, Any]]] = {}
        for work in works:
            failed[work["id"]] = [
                dict(r)
                for r in conn.execute(
                    select(
                        j.c.id,
                        j.c.idx,
                        j.c.key,
                        j.c.state,
                        j.c.attempts,
                        j.c.error_type,
                        j.c.error_message,
                        j.c.traceback,
                    )
                    .where(
                        j.c.work_id == work["id"],
                        j.c.state.in_(["failed", "cancelled", "upstream_failed"]),
                    )
                    .order_by(j.c.idx)
                    .limit(failures)
                ).mappings()
            ]
    return dict(wf), works, failed


def _print_show(
    wf: dict[str, Any],
    works: list[dict[str, Any]],
    failed: dict[int, list[dict[str, Any]]],
    *,
    as_json: bool,
) -> None:
    info = {
        "id": wf["id"],
        "name": wf["name"],
        "status": wf["status"],
        "function": wf["function"],
        "created": _when(wf["created_at"]),
        "finished": _when(wf["finished_at"]),
        "archive": wf["archive_sha"],
        "archive_size": wf["archive_size"],
        "source_dir": wf["source_dir"],
        "backend": wf["backend"],
        "init_env": wf["init_env"],
        "error": wf["error"],
        "result": wf["result"].decode("utf-8", "replace") if wf["result"] else None,
    }
    if as_json:
        out = dict(info)
        out["works"] = [
            {
                key: work[key]
                for key in (
                    "id",
                    "seq",
                    "name",
                    "function",
                    "status",
                    "n_jobs",
                    "n_finished",
                    "n_failed",
                    "n_cancelled",
                    "n_reused",
                )
            }
            | {"failures": failed[work["id"]]}
            for work in works
        ]
        click.echo(json.dumps(out, indent=2, default=str))
        return
    console = Console(soft_wrap=True)
    console.print(
        f"[bold]workflow {info['id']}[/bold] {info['name']}  status: [bold]{info['status']}[/bold]"
    )
    for label in (
        "function",
        "created",
        "finished",
        "archive",
        "source_dir",
        "backend",
        "init_env",
    ):
        if info[label]:
            console.print(f"  {label}: {info[label]}")
    if info["error"]:
        console.print(f"  error: {info['error'].strip().splitlines()[-1]}")
    table = Table(title="works")
    for column in (
        "seq",
        "id",
        "name",
        "status",
        "jobs",
        "finished",
        "failed",
        "cancelled",
        "reused",
    ):
        table.add_column(column)
    for work in works:
        table.add_row(
            str(work["seq"]),
            str(work["id"]),
            work["name"],
            work["status"],
            str(work["n_jobs"]),
            str(work["n_finished"]),
            str(work["n_failed"]),
            str(work["n_cancelled"]),
            str(work["n_reused"]),
        )
    console.print(table)
    for work in works:
        for job in failed[work["id"]]:
            console.print(
                f"[red]{work['name']} job #{job['idx']}[/red] ({job['key'][:12]}, "
                f"{job['state']}, {job['attempts']} attempt(s)): "
                f"{job['error_type']}: {job['error_message']}"
            )


@cli.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("upgrade")
@click.option("--db", "db_url", default=None, help="Database URL (default: as for every command).")
@click.pass_obj
def db_upgrade(settings: Settings, db_url: str | None) -> None:
    """Apply pending migrations."""
    if db_url:
        settings = settings.with_overrides(db_url=db_url)
    engine = create_db_engine(settings.database_url)
    upgrade(engine)
    _, current, _ = schema_is_current(engine)
    click.echo(f"{mask_url(settings.database_url)} is at revision {current}")
