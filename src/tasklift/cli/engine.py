"""``tasklift engine``: an extra engine on a server's database (more workers, no API)."""

from __future__ import annotations

import logging
import signal
import threading

import click

from tasklift.cli.root import cli, with_options
from tasklift.db.session import mask_url
from tasklift.settings import Settings

__all__ = ["engine_command"]


@cli.command("engine")
@click.option("--db", "db_url", default=None, help="The server's database URL.")
@click.option("--name", default=None, help="Stable engine name (default: host + home).")
@click.option("--workers", default=None, type=int, help="Local backend worker processes.")
@click.pass_obj
def engine_command(
    settings: Settings, db_url: str | None, name: str | None, workers: int | None
) -> None:
    """Run jobs of the database's works next to the server; never a job another engine took."""
    from tasklift.engine.core import Engine
    from tasklift.service.app import check_schema

    settings = with_options(settings, db_url=db_url, engine_name=name, workers=workers)
    check_schema(settings)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(message)s")
    engine = Engine(settings, auto_upgrade=False, resume=True)
    engine.backend("local")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    click.echo(f"tasklift engine {engine.engine_id} on {mask_url(settings.database_url)}", err=True)
    try:
        stop.wait()
    finally:
        engine.close()
