"""``tasklift server``: run the service (FastAPI under uvicorn) on a database."""

from __future__ import annotations

import logging
from typing import Any

import click

from tasklift.cli.root import cli
from tasklift.cli.secret_options import server_settings
from tasklift.db.session import mask_url
from tasklift.settings import Settings

__all__ = ["server_command"]


@cli.command("server")
@click.option("--db", "db_url", default=None, help="Database URL (SQLite or PostgreSQL).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="Local backend worker processes.")
@click.option(
    "--bus",
    "bus_url",
    default=None,
    help="Result bus URL (stomp://user:pass@host:61613/prefix); default in-process.",
)
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--db-url-file",
    default=None,
    help="Read the database URL from this file (mode 0600): keeps its password off the "
    "command line.",
)
@click.option("--bus-url-file", default=None, help="Read the bus URL from this file (mode 0600).")
@click.option(
    "--runner-user",
    "runner_users",
    multiple=True,
    help="OS identity job runners run as: account NAME, UID or a LOW-HIGH range of uids "
    "(repeatable, comma-separated); each is leased to one user at a time. Required unless "
    "--no-runner-isolation.",
)
@click.option(
    "--no-runner-isolation",
    is_flag=True,
    default=False,
    help="Run jobs as the server's own OS user (only for a server one person uses: a job can "
    "then read the server's key and database).",
)
@click.pass_obj
def server_command(
    settings: Settings, host: str, port: int, workers: int | None, log_level: str, **shared: Any
) -> None:
    """Serve the REST API; the scheduler and backends run in this process."""
    # shared: --db, --bus, --db-url-file, --bus-url-file, --runner-user, --no-runner-isolation
    import uvicorn

    from tasklift.service.app import check_schema, create_app

    settings = server_settings(settings, workers=workers, **shared)
    if not settings.public_url:  # where remote job runners (Dask, Slurm) reach this server
        from tasklift.service.job_api import advertised_host

        settings = settings.with_overrides(public_url=f"http://{advertised_host(host)}:{port}")
    check_schema(settings)  # refuses an out-of-date schema before binding the port
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    click.echo(
        f"tasklift server on http://{host}:{port} with {mask_url(settings.database_url)}", err=True
    )
    uvicorn.run(
        create_app(settings), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5
    )
