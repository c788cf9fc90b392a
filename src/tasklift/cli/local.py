"""``tasklift ls`` / ``show`` / ``db upgrade``: list and inspect workflows, from the service
when one is configured, else from the database itself (the embedded SQLite by default)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click
from rich.table import Table

from tasklift.cli import localdb
from tasklift.cli.output import console, display_options, echo_json, render_value, say_source
from tasklift.cli.remote import service_for, service_label
from tasklift.cli.root import cli, db_option
from tasklift.db.session import mask_url, schema_is_current
from tasklift.settings import Settings
from tasklift.states import WorkflowState

__all__ = ["db_group", "ls_command", "show_command"]

COUNT_COLUMNS = ("finished", "failed", "cancelled", "skipped")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@cli.command("ls")
@click.option(
    "--status",
    type=click.Choice([s.value for s in WorkflowState]),
    default=None,
    help="Only workflows in this state.",
)
@click.option("--limit", default=20, show_default=True, help="How many (newest first).")
@display_options
@db_option
@click.pass_obj
def ls_command(
    settings: Settings, status: str | None, limit: int, as_json: bool, wide: bool
) -> None:
    """List workflows, newest first, with job counts.

    Reads the service when one is configured (`tasklift login`, TASKLIFT_SERVICE), else the
    local database; the first line on stderr says which. Exit 1 when it cannot be read.
    """
    client = service_for(settings)
    if client is not None:
        say_source(service_label(client))
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        rows = [dict(wf) for wf in client.get("/workflows", params=params)["data"]]
    else:
        say_source(localdb.database_label(settings))
        with localdb.open_db(settings) as db:
            rows = localdb.list_workflows(db, status, limit)
    if as_json:
        echo_json([_ls_row(row) for row in rows])
        return
    table = Table()
    for column in ("id", "name", "status", "created", "works", "jobs", *COUNT_COLUMNS, "done"):
        table.add_column(column, justify="left" if column in ("name", "status") else "right")
    for row in rows:
        done = row["n_finished"] + row["n_failed"] + row["n_cancelled"] + row.get("n_skipped", 0)
        pct = f"{100 * done / row['n_jobs']:.0f}%" if row["n_jobs"] else "-"
        table.add_row(
            str(row["id"]),
            row["name"],
            row["status"],
            _when(row["created_at"]),
            str(row["n_works"]),
            str(row["n_jobs"]),
            *(str(row[f"n_{name}"]) if f"n_{name}" in row else "-" for name in COUNT_COLUMNS),
            pct,
        )
    console(wide).print(table)


def _ls_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {
        key: row.get(key) for key in ("id", "name", "status", "owner", "created_at", "finished_at")
    }
    out["works"] = row["n_works"]
    out["jobs"] = row["n_jobs"]
    for name in COUNT_COLUMNS:  # a service that does not count skipped jobs: null
        out[name] = row.get(f"n_{name}")
    return out


@cli.command("show")
@click.argument("workflow_id", type=int)
@click.option("--failures", default=10, show_default=True, help="Failed jobs to show per work.")
@display_options
@db_option
@click.pass_obj
def show_command(
    settings: Settings, workflow_id: int, as_json: bool, failures: int, wide: bool
) -> None:
    """Show one workflow: its arguments, works, job counts, and failed jobs with their errors.

    Exit 1 when the workflow does not exist (or is not yours).
    """
    client = service_for(settings)
    failed: dict[int, list[dict[str, Any]]] = {}
    if client is not None:
        wf = dict(client.get(f"/workflows/{workflow_id}"))
        works = [dict(w) for w in client.get(f"/workflows/{workflow_id}/works")["data"]]
        for work in works:
            failed[work["id"]] = []
            if work["n_failed"] or work["n_cancelled"]:
                for state in ("failed", "upstream_failed", "cancelled"):
                    failed[work["id"]] += client.get(
                        f"/works/{work['id']}/jobs", params={"state": state, "limit": failures}
                    )["data"]
    else:
        with localdb.open_db(settings) as db:
            wf = localdb.get_workflow(db, workflow_id)
            works = localdb.list_works(db, workflow_id)
            for work in works:
                failed[work["id"]] = localdb.list_jobs(
                    db, work["id"], ["failed", "upstream_failed", "cancelled"], failures
                )
    _print_show(wf, works, failed, as_json=as_json, wide=wide)


WORK_KEYS = (
    "id", "seq", "name", "function", "status", "n_jobs", "n_finished", "n_failed",
    "n_cancelled", "n_skipped", "n_reused",
)  # fmt: skip


_FAILURE_KEYS = (
    "id", "idx", "key", "state", "attempts", "error_type", "error_message", "traceback",
)  # fmt: skip
_SHOWN_LABELS = (
    "function", "arguments", "created", "finished", "archive", "source_dir", "backend", "init_env",
)  # fmt: skip


def _show_info(wf: dict[str, Any]) -> dict[str, Any]:
    """The workflow fields ``tasklift show`` prints, times made readable."""
    return {
        "id": wf["id"],
        "name": wf["name"],
        "status": wf["status"],
        "function": wf["function"],
        "arguments": wf.get("arguments"),
        "created": _when(wf["created_at"]),
        "finished": _when(wf["finished_at"]),
        "archive": wf["archive_sha"],
        "archive_size": wf["archive_size"],
        "source_dir": wf["source_dir"],
        "backend": wf["backend"],
        "init_env": wf["init_env"],
        "error": wf["error"],
        "result": wf["result"],
    }


def _show_arguments(arguments: Any) -> Any:
    """A workflow's call arguments as one line (``a, b, k=v``), at most 300 characters."""
    if isinstance(arguments, dict) and set(arguments) <= {"args", "kwargs"}:
        parts = [render_value(a, 80) for a in arguments.get("args") or []]
        parts += [f"{k}={render_value(v, 80)}" for k, v in (arguments.get("kwargs") or {}).items()]
        text = ", ".join(parts)
        return text if len(text) <= 300 else text[:297] + "..."
    if arguments is not None:
        return render_value(arguments, 300)
    return None


def _work_json(work: dict[str, Any], failures: list[dict[str, Any]]) -> dict[str, Any]:
    """One work of ``tasklift show --json``: its counters and its failed jobs."""
    jobs = [{key: job.get(key) for key in _FAILURE_KEYS} for job in failures]
    return {key: work.get(key, 0) for key in WORK_KEYS} | {"failures": jobs}


def _works_table(works: list[dict[str, Any]]) -> Table:
    """One row per work: its counters by state."""
    table = Table(title="works")
    for column in ("seq", "id", "name", "status", "jobs", *COUNT_COLUMNS, "reused"):
        table.add_column(column)
    for work in works:
        table.add_row(
            str(work["seq"]),
            str(work["id"]),
            work["name"],
            work["status"],
            str(work["n_jobs"]),
            *(str(work.get(f"n_{name}", 0)) for name in COUNT_COLUMNS),
            str(work["n_reused"]),
        )
    return table


def _print_show(
    wf: dict[str, Any],
    works: list[dict[str, Any]],
    failed: dict[int, list[dict[str, Any]]],
    *,
    as_json: bool,
    wide: bool,
) -> None:
    info = _show_info(wf)
    if as_json:
        out = dict(info)
        out["works"] = [_work_json(work, failed[work["id"]]) for work in works]
        echo_json(out)
        return
    out_console = console(wide)
    out_console.print(
        f"[bold]workflow {info['id']}[/bold] {info['name']}  status: [bold]{info['status']}[/bold]",
        highlight=False,
    )
    info["arguments"] = _show_arguments(info["arguments"])
    for label in _SHOWN_LABELS:
        if info[label] not in (None, ""):
            out_console.print(f"  {label}: {info[label]}", highlight=False, markup=False)
    if info["error"]:
        out_console.print(
            f"  error: {info['error'].strip().splitlines()[-1]}", highlight=False, markup=False
        )
    if info["status"] == "finished" and info["result"] is not None:
        out_console.print(
            f"  result: {render_value(info['result'], 300)}", highlight=False, markup=False
        )
    out_console.print(_works_table(works))
    for work in works:
        for job in failed[work["id"]]:
            out_console.print(
                f"{work['name']} job #{job['idx']} (job {job['id']}, {job['key'][:12]}, "
                f"{job['state']}, {job['attempts']} attempt(s)): "
                f"{job['error_type']}: {job['error_message']}",
                highlight=False,
                markup=False,
                style="red",
            )


@cli.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("upgrade")
@db_option
@click.pass_obj
def db_upgrade(settings: Settings) -> None:
    """Apply pending migrations (creates the database when it does not exist yet)."""
    with localdb.open_db(settings, create=True) as engine:
        _, current, _ = schema_is_current(engine)
    click.echo(f"{mask_url(settings.database_url)} is at revision {current}")
