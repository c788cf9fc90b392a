"""The root ``tasklift`` command group, the settings every command receives, and ``--db``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from tasklift.settings import Settings

__all__ = ["DB_HELP", "cli", "db_option", "with_options"]

F = TypeVar("F", bound=Callable[..., Any])

DB_HELP = (
    "Database URL (default: the embedded SQLite under TASKLIFT_HOME). Accepted before the "
    "command (`tasklift --db URL ls`) or after it (`tasklift ls --db URL`)."
)


@click.group()
@click.option("--db", "db_url", envvar="TASKLIFT_DB_URL", default=None, help=DB_HELP)
@click.pass_context
def cli(ctx: click.Context, db_url: str | None) -> None:
    """tasklift: Function-as-a-Task workflows.

    Commands on workflows and jobs talk to the service when one is configured (`tasklift
    login`, TASKLIFT_SERVICE) and --db is not given; else they work on the database itself
    (default: the embedded SQLite under TASKLIFT_HOME).

    Exit status: 0 on success, 1 on an error (each command's help says when), 2 on bad usage.
    """
    settings = Settings()
    if db_url:
        settings = settings.with_overrides(db_url=db_url)
    ctx.obj = settings


def _apply_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """``--db`` on a subcommand: the same as before the command (and wins over it)."""
    if value:
        settings = ctx.find_object(Settings) or Settings()
        ctx.obj = settings.with_overrides(db_url=value)


def db_option(func: F) -> F:
    """Give a subcommand that reads or writes a database the ``--db URL`` option."""
    return click.option(
        "--db",
        "db_url",
        default=None,
        expose_value=False,
        callback=_apply_db,
        help=DB_HELP,
    )(func)


def with_options(settings: Settings, **values: object) -> Settings:
    """``settings`` with the command-line options that were given (``None``: not given)."""
    given = {name: value for name, value in values.items() if value is not None}
    return settings.with_overrides(**given) if given else settings
