"""``tasklift engine``: an extra engine on a server's database (more workers, no API)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click

from tasklift.cli.root import cli
from tasklift.cli.secret_options import server_settings
from tasklift.db.session import mask_url
from tasklift.settings import Settings

__all__ = ["engine_command"]


@cli.command("engine")
@click.option("--db", "db_url", default=None, help="The server's database URL.")
@click.option("--name", default=None, help="Stable engine name (default: host + home).")
@click.option("--workers", default=None, type=int, help="Local backend worker processes.")
@click.option("--db-url-file", default=None, help="Read the database URL from this 0600 file.")
@click.option(
    "--runner-user",
    "runner_users",
    multiple=True,
    help="OS identity job runners run as (NAME, UID or LOW-HIGH; as for `tasklift server`).",
)
@click.option(
    "--no-runner-isolation",
    is_flag=True,
    default=False,
    help="Run jobs as this engine's own OS user (a server one person uses).",
)
@click.pass_obj
def engine_command(
    settings: Settings, name: str | None, workers: int | None, **shared: Any
) -> None:
    """Run jobs of the database's works next to the server; never a job another engine took."""
    # shared: --db, --db-url-file, --runner-user, --no-runner-isolation (see server_settings)
    from tasklift.embedded import build_engine
    from tasklift.service.app import check_schema
    from tasklift.service.runners import backend_factory

    settings = server_settings(settings, engine_name=name, workers=workers, **shared)
    check_schema(settings)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(message)s")
    backends = backend_factory(settings, lambda: engine.db, who="tasklift engine")
    engine = build_engine(settings, backends=backends, auto_upgrade=False, resume=True)
    engine.start()  # resumes works: their owners are looked up through engine.db
    engine.backend("local")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    click.echo(f"tasklift engine {engine.engine_id} on {mask_url(settings.database_url)}", err=True)
    try:
        stop.wait()
    finally:
        engine.close()
