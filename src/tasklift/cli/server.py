"""``tasklift server``: run the service (FastAPI under uvicorn) on a database."""

from __future__ import annotations

import logging

import click

from tasklift.cli.root import cli, with_options
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
@click.pass_obj
def server_command(
    settings: Settings,
    db_url: str | None,
    host: str,
    port: int,
    workers: int | None,
    bus_url: str | None,
    log_level: str,
) -> None:
    """Serve the REST API; the scheduler and backends run in this process."""
    import uvicorn

    from tasklift.service.app import check_schema, create_app

    settings = with_options(settings, db_url=db_url, workers=workers, bus=bus_url)
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
