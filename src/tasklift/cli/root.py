"""The root ``tasklift`` command group and the settings every command receives."""

from __future__ import annotations

import click

from tasklift.settings import Settings

__all__ = ["cli", "with_options"]


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


def with_options(settings: Settings, **values: object) -> Settings:
    """``settings`` with the command-line options that were given (``None``: not given)."""
    given = {name: value for name, value in values.items() if value is not None}
    return settings.with_overrides(**given) if given else settings
