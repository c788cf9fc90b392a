"""Commands that talk to a ``tasklift server``: login, jobs, logs, cancel, retry, wait, result.

The service comes from ``TASKLIFT_SERVICE``/``TASKLIFT_TOKEN`` or the file ``tasklift login``
writes; ``ls`` and ``show`` use it too when one is configured.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tasklift.api.remote import HttpService
from tasklift.cli.root import cli
from tasklift.credentials import load_credentials, save_credentials
from tasklift.errors import ConfigError
from tasklift.settings import Settings

__all__ = ["service_client"]

TERMINAL = {"finished", "failed", "cancelled"}


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


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


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
    """Check URL + token against the server and save them (file mode 0600)."""
    client = HttpService(url, token, settings)
    try:
        client.get("/workflows", params={"limit": 1})
    finally:
        client.close()
    path = save_credentials(url, token)
    click.echo(f"logged in to {url}; credentials saved in {path}")


@cli.command("jobs")
@click.argument("work_or_workflow", type=int)
@click.option("--workflow", "is_workflow", is_flag=True, help="The id is a workflow: all works.")
@click.option("--failed", is_flag=True, help="Only failed jobs.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def jobs_command(
    settings: Settings,
    work_or_workflow: int,
    is_workflow: bool,
    failed: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List the jobs of a work (or of every work of a workflow with --workflow)."""
    client = service_client(settings)
    assert client is not None
    work_ids = [work_or_workflow]
    if is_workflow:
        works = client.get(f"/workflows/{work_or_workflow}/works")["data"]
        work_ids = [w["id"] for w in works]
    rows: list[dict[str, Any]] = []
    for work_id in work_ids:
        params: dict[str, Any] = {"limit": limit}
        if failed:
            params["state"] = "failed"
        rows += client.get(f"/works/{work_id}/jobs", params=params)["data"]
    if as_json:
        _echo_json(rows)
        return
    table = Table()
    for column in ("job", "work", "#", "state", "attempts", "key", "error"):
        table.add_column(column)
    for row in rows:
        error = f"{row['error_type']}: {row['error_message']}" if row["error_type"] else ""
        table.add_row(
            str(row["id"]),
            str(row["work_id"]),
            str(row["idx"]),
            row["state"],
            str(row["attempts"]),
            row["key"][:12],
            error[:80],
        )
    Console().print(table)


@cli.command("logs")
@click.argument("job_id", type=int)
@click.pass_obj
def logs_command(settings: Settings, job_id: int) -> None:
    """Print a job's captured stdout and stderr."""
    client = service_client(settings)
    assert client is not None
    logs = client.get(f"/jobs/{job_id}/logs")
    click.echo(logs["stdout"], nl=False)
    if logs["stderr"]:
        click.echo(logs["stderr"], nl=False, err=True)


@cli.command("cancel")
@click.argument("workflow_id", type=int)
@click.pass_obj
def cancel_command(settings: Settings, workflow_id: int) -> None:
    """Cancel a workflow's queued and running jobs."""
    client = service_client(settings)
    assert client is not None
    wf = client.post(f"/workflows/{workflow_id}/cancel")
    click.echo(f"workflow {workflow_id}: {wf['status']}")


@cli.command("retry")
@click.argument("workflow_id", type=int)
@click.pass_obj
def retry_command(settings: Settings, workflow_id: int) -> None:
    """Run the failed jobs of every work of a workflow again (finished ones are kept)."""
    client = service_client(settings)
    assert client is not None
    total = 0
    for work in client.get(f"/workflows/{workflow_id}/works")["data"]:
        if work["n_failed"]:
            total += work["n_failed"]
            client.post(f"/works/{work['id']}/retry")
    click.echo(f"workflow {workflow_id}: {total} failed job(s) queued again")


def _wait(client: HttpService, workflow_id: int, timeout: float | None) -> dict[str, Any]:
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
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.pass_obj
def wait_command(settings: Settings, workflow_id: int, timeout: float | None) -> None:
    """Wait until a workflow ends; print its result (exit 1 if it failed)."""
    client = service_client(settings)
    assert client is not None
    wf = _wait(client, workflow_id, timeout)
    _echo_json(
        wf["result"]
        if wf["status"] == "finished"
        else {"status": wf["status"], "error": wf["error"]}
    )
    if wf["status"] != "finished":
        raise click.exceptions.Exit(1)


@cli.command("result")
@click.argument("workflow_id", type=int)
@click.pass_obj
def result_command(settings: Settings, workflow_id: int) -> None:
    """Print a finished workflow's return value as JSON."""
    client = service_client(settings)
    assert client is not None
    wf = client.get(f"/workflows/{workflow_id}")
    if wf["status"] != "finished":
        raise click.ClickException(f"workflow {workflow_id} is {wf['status']}: no result")
    _echo_json(wf["result"])
