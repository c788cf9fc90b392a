"""The root ``tasklift`` command group and the settings every command receives."""

from __future__ import annotations

import click

from tasklift.settings import Settings

__all__ = ["cli"]


@click.group()
@click.option(
    "--db",
    "db_url",
    envvar="TASKLIFT_DB_URL",
    default=None,
    help="Database URL (default: the embedded SQLite under TASKLIFT_HOME).",
)
@click.pass_context
def cli(ctx: click.Context, db_url: str | None) -> None:
    """tasklift: Function-as-a-Task workflows."""
    settings = Settings()
    if db_url:
        settings = settings.with_overrides(db_url=db_url)
    ctx.obj = settings
