"""Commands on workflows and jobs: login, jobs, logs, cancel, retry, wait, result.

Each talks to a ``tasklift server`` when one is configured (``TASKLIFT_SERVICE``/
``TASKLIFT_TOKEN`` or the file ``tasklift login`` writes) and ``--db`` is not given; else it
works on the database itself (the embedded SQLite under ``TASKLIFT_HOME`` by default), where a
cancel or a retry is carried out by an engine in this process. ``ls`` and ``show`` choose the
same way.
"""

from __future__ import annotations

import time
from typing import Any

import click
from rich.table import Table

from tasklift.api.remote import HttpService
from tasklift.cli import localdb
from tasklift.cli.output import (
    console,
    display_options,
    echo_json,
    mask_service_url,
    readable_refs,
    render_value,
)
from tasklift.cli.root import cli, db_option
from tasklift.credentials import load_credentials, save_credentials
from tasklift.errors import ConfigError
from tasklift.settings import Settings

__all__ = ["service_client", "service_for", "service_label"]

TERMINAL = {"finished", "failed", "cancelled"}
FAILED_STATES = ("failed", "upstream_failed")


def service_client(settings: Settings, required: bool = True) -> HttpService | None:
    """An HTTP client for the configured service (``None`` when none and not required)."""
    token = settings.token.get_secret_value() if settings.token else None
    creds = load_credentials(None, token)
    if creds is None:
        if required:
            raise ConfigError(
                "no tasklift service configured: run `tasklift login URL` or set "
                "TASKLIFT_SERVICE and TASKLIFT_TOKEN"
            )
        return None
    return HttpService(creds.url, creds.token, settings)


def service_for(settings: Settings) -> HttpService | None:
    """The service a command talks to; ``None``: the database (``--db``, or no service)."""
    return None if settings.db_url else service_client(settings, required=False)


def service_label(client: HttpService) -> str:
    """Where a command reads when it talks to a service (URL, credentials masked)."""
    return f"service {mask_service_url(client.url)}"


@cli.command("login")
@click.argument("url")
@click.option(
    "--token",
    envvar="TASKLIFT_TOKEN",
    prompt=True,
    hide_input=True,
    help="API token; prompted for (or read from TASKLIFT_TOKEN): avoid putting it on the "
    "command line, where other users can see it.",
)
@click.pass_obj
def login_command(settings: Settings, url: str, token: str) -> None:
    """Check URL + token against the server and save them (file mode 0600).

    The file is credentials.json in TASKLIFT_CONFIG_DIR (default: TASKLIFT_HOME when set,
    else the platform's user config directory). Exit 1 when the server refuses the token.
    """
    client = HttpService(url, token, settings)
    try:
        client.get("/workflows", params={"limit": 1})
    finally:
        client.close()
    path = save_credentials(url, token)
    click.echo(f"logged in to {mask_service_url(url)}; credentials saved in {path}")


@cli.command("jobs")
@click.argument("work_or_workflow", type=int)
@click.option("--workflow", "is_workflow", is_flag=True, help="The id is a workflow: all works.")
@click.option("--failed", is_flag=True, help="Only failed (and upstream_failed) jobs.")
@click.option("--limit", default=100, show_default=True, help="Jobs per work.")
@display_options
@db_option
@click.pass_obj
def jobs_command(
    settings: Settings,
    work_or_workflow: int,
    is_workflow: bool,
    failed: bool,
    limit: int,
    as_json: bool,
    wide: bool,
) -> None:
    """List the jobs of a work (or of every work of a workflow with --workflow).

    Exit 1 when the work or workflow does not exist.
    """
    states = list(FAILED_STATES) if failed else None
    rows: list[dict[str, Any]] = []
    client = service_for(settings)
    if client is not None:
        work_ids = [work_or_workflow]
        if is_workflow:
            works = client.get(f"/workflows/{work_or_workflow}/works")["data"]
            work_ids = [w["id"] for w in works]
        for work_id in work_ids:
            for state in states or [None]:
                params: dict[str, Any] = {"limit": limit}
                if state:
                    params["state"] = state
                rows += client.get(f"/works/{work_id}/jobs", params=params)["data"]
    else:
        with localdb.open_db(settings) as db:
            work_ids = [work_or_workflow]
            if is_workflow:
                localdb.get_workflow(db, work_or_workflow)  # exit 1 when it does not exist
                work_ids = [w["id"] for w in localdb.list_works(db, work_or_workflow)]
            for work_id in work_ids:
                rows += localdb.list_jobs(db, work_id, states, limit)
    rows.sort(key=lambda r: (r["work_id"], r["idx"]))
    for row in rows:  # data-flow inputs: say what they are, not the internal marker
        row["kwargs"] = readable_refs(row.get("kwargs"), row["state"])
    if as_json:
        echo_json(rows)
        return
    table = Table()
    for column in ("job", "work", "#", "state", "attempts", "key", "kwargs", "result / error"):
        table.add_column(column)
    for row in rows:
        if row["error_type"]:
            outcome = f"{row['error_type']}: {row['error_message']}"
        elif row["state"] == "finished":
            outcome = render_value(row.get("result"), 80)
        else:
            outcome = ""
        table.add_row(
            str(row["id"]),
            str(row["work_id"]),
            str(row["idx"]),
            row["state"],
            str(row["attempts"]),
            row["key"][:12],
            render_value(row.get("kwargs"), 80),
            outcome[:160],
        )
    console(wide).print(table)


@cli.command("logs")
@click.argument("job_id", type=int)
@db_option
@click.pass_obj
def logs_command(settings: Settings, job_id: int) -> None:
    """Print a job's captured stdout, and on stderr its stderr and (failed) its traceback.

    Exit 1 when the job does not exist.
    """
    client = service_for(settings)
    if client is not None:
        logs = dict(client.get(f"/jobs/{job_id}/logs"))
        job = client.get(f"/jobs/{job_id}")
        logs.update(state=job["state"], traceback=job.get("traceback"))
        logs.update(error_type=job.get("error_type"), error_message=job.get("error_message"))
    else:
        with localdb.open_db(settings) as db:
            logs = localdb.get_job_logs(db, job_id)
    click.echo(logs["stdout"], nl=False)
    if logs["stderr"]:
        click.echo(logs["stderr"], nl=False, err=True)
    if logs["state"] in FAILED_STATES or logs.get("traceback"):
        if logs.get("traceback"):
            click.echo(logs["traceback"].rstrip("\n"), err=True)
        elif logs.get("error_type"):
            click.echo(f"{logs['error_type']}: {logs['error_message']}", err=True)
        click.echo(f"job {job_id} is {logs['state']}", err=True)


@cli.command("cancel")
@click.argument("workflow_id", type=int)
@db_option
@click.pass_obj
def cancel_command(settings: Settings, workflow_id: int) -> None:
    """Cancel a workflow's queued and running jobs and mark it cancelled.

    Without a service, the process on this host that runs the workflow is interrupted (as
    Ctrl-C would). A workflow that already ended is left as it is. Exit 1 when the workflow
    does not exist or could not be stopped.
    """
    client = service_for(settings)
    if client is not None:
        wf = client.post(f"/workflows/{workflow_id}/cancel")
    else:
        with localdb.open_db(settings) as db:
            before = localdb.get_workflow(db, workflow_id)["status"]
            wf = localdb.cancel_workflow(settings, db, workflow_id)
            if before in TERMINAL:
                click.echo(f"workflow {workflow_id} had already ended", err=True)
    click.echo(f"workflow {workflow_id}: {wf['status']}")


@cli.command("retry")
@click.argument("workflow_id", type=int)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Without a service: give up waiting for the retried jobs after this many seconds.",
)
@db_option
@click.pass_obj
def retry_command(settings: Settings, workflow_id: int, timeout: float | None) -> None:
    """Run the failed jobs of every work of a workflow again (finished ones are kept); the
    jobs that failed only because of them (upstream_failed) then run too.

    With a service the jobs are queued there. Without one they run here, now: the command
    waits for them and exits 1 if any job of the workflow is still failed afterwards. The
    workflow's own status and result do not change: run it again to get a result from the
    retried jobs (finished jobs are reused). Exit 1 when the workflow does not exist or
    still runs in another process.
    """
    client = service_for(settings)
    if client is not None:
        total = 0
        for work in client.get(f"/workflows/{workflow_id}/works")["data"]:
            if not work["n_failed"]:
                continue
            # read again: retrying an upstream work may have released this one's jobs already
            before = client.get(f"/works/{work['id']}")["n_failed"]
            if before:
                after = client.post(f"/works/{work['id']}/retry")
                total += before - after["n_failed"]
        click.echo(f"workflow {workflow_id}: {total} failed job(s) queued again")
        return
    with localdb.open_db(settings) as db:
        total, counts = localdb.retry_workflow(settings, db, workflow_id, timeout)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    click.echo(
        f"workflow {workflow_id}: {total} failed job(s) run again"
        + (f"; its jobs now: {summary}" if summary else "")
    )
    if any(counts.get(state) for state in FAILED_STATES):
        raise click.exceptions.Exit(1)


def _wait_http(client: HttpService, workflow_id: int, timeout: float | None) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.2
    while True:
        wf = client.get(f"/workflows/{workflow_id}")
        if wf["status"] in TERMINAL:
            return dict(wf)
        if deadline is not None and time.monotonic() >= deadline:
            raise click.ClickException(
                f"workflow {workflow_id} still {wf['status']} after {timeout:g} s"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)


@cli.command("wait")
@click.argument("workflow_id", type=int)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Give up after this many seconds.",
)
@db_option
@click.pass_obj
def wait_command(settings: Settings, workflow_id: int, timeout: float | None) -> None:
    """Wait until a workflow ends; print its result as JSON.

    Exit 0 when it finished; exit 1 (printing its status and error) when it failed or was
    cancelled, when it is still running after --timeout, or when it does not exist.
    """
    client = service_for(settings)
    if client is not None:
        wf = _wait_http(client, workflow_id, timeout)
    else:
        with localdb.open_db(settings) as db:
            wf = localdb.wait_workflow(db, workflow_id, timeout)
    if wf["status"] == "finished":
        echo_json(wf["result"])
        return
    echo_json({"status": wf["status"], "error": wf["error"]})
    raise click.exceptions.Exit(1)


@cli.command("result")
@click.argument("workflow_id", type=int)
@db_option
@click.pass_obj
def result_command(settings: Settings, workflow_id: int) -> None:
    """Print a finished workflow's return value as JSON.

    Exit 1 when the workflow has not finished (running, failed, cancelled) or does not exist.
    """
    client = service_for(settings)
    if client is not None:
        wf = dict(client.get(f"/workflows/{workflow_id}"))
    else:
        with localdb.open_db(settings) as db:
            wf = localdb.get_workflow(db, workflow_id)
    if wf["status"] != "finished":
        raise click.ClickException(f"workflow {workflow_id} is {wf['status']}: no result")
    echo_json(wf["result"])
