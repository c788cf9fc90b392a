"""``tasklift token create|list|revoke``: the service's API tokens, managed in its database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from tasklift.cli.localdb import database_error
from tasklift.cli.root import cli, db_option
from tasklift.db.session import create_db_engine, mask_url, schema_is_current
from tasklift.errors import ConfigError, NotFoundError
from tasklift.service.auth import TOKEN_CACHE_TTL, Authenticator
from tasklift.settings import Settings

__all__ = ["token_group"]

logger = logging.getLogger(__name__)


def _when(ts: float | None, never: str = "-") -> str:
    if ts is None:
        return never
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@contextmanager
def _authenticator(settings: Settings) -> Iterator[Authenticator]:
    """Open the database (which must be at the current schema) and yield an authenticator."""
    engine = create_db_engine(settings.database_url)
    try:
        try:
            ok, current, head = schema_is_current(engine)
        except SQLAlchemyError as exc:
            raise click.ClickException(database_error(exc, settings.database_url)) from None
        if not ok:
            raise click.ClickException(
                f"database {mask_url(settings.database_url)} is at schema revision {current}, "
                f"this tasklift needs {head}: run `tasklift db upgrade` first"
            )
        try:
            yield Authenticator(db=engine, settings=settings)
        except (ConfigError, NotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()


@cli.group("token")
def token_group() -> None:
    """Create, list and revoke API tokens of the service (works on the database directly)."""


@token_group.command("create")
@click.option("--user", required=True, help="User the token authenticates as.")
@click.option("--admin", is_flag=True, help="The token sees and acts on every workflow.")
@click.option(
    "--expires-days",
    type=click.FloatRange(min=0),
    default=90.0,
    show_default=True,
    help="Days until the token expires (0: never).",
)
@click.option("--name", default=None, help="A label, e.g. where the token is used.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@db_option
@click.pass_obj
def create_command(
    settings: Settings, user: str, admin: bool, expires_days: float, name: str | None, as_json: bool
) -> None:
    """Create an API token and print it (once: only its hash is stored)."""
    expires_in = expires_days * 86400.0 if expires_days > 0 else None
    with _authenticator(settings) as auth:
        token_id, token = auth.create_token(
            user=user, admin=admin, expires_in=expires_in, name=name
        )
        info = next(t for t in auth.list_tokens(user) if t.id == token_id)
    if as_json:
        out = {"id": token_id, "token": token, "user": user, "is_admin": admin, "name": name}
        click.echo(json.dumps(out | {"expires_at": info.expires_at}, indent=2))
        return
    click.echo(
        f"Created API token {token_id} for {user}{' (admin)' if admin else ''}, expires "
        f"{_when(info.expires_at, 'never')}. It is shown only now; store it safely:",
        err=True,
    )
    click.echo(token)


@token_group.command("list")
@click.option("--user", default=None, help="Only this user's tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@db_option
@click.pass_obj
def list_command(settings: Settings, user: str | None, as_json: bool) -> None:
    """List API tokens (never their secrets) with their status."""
    with _authenticator(settings) as auth:
        tokens = auth.list_tokens(user)
    if as_json:
        rows = [dataclasses.asdict(t) | {"status": t.status()} for t in tokens]
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"API tokens in {mask_url(settings.database_url)}")
    for column in ("id", "user", "name", "admin", "status", "created", "expires", "last used"):
        table.add_column(column, justify="right" if column == "id" else "left")
    for t in tokens:
        table.add_row(
            str(t.id),
            t.user,
            t.name or "",
            "yes" if t.is_admin else "",
            t.status(),
            _when(t.created_at),
            _when(t.expires_at, "never"),
            _when(t.last_used_at, "never"),
        )
    Console().print(table)


@token_group.command("revoke")
@click.argument("token_id", type=int)
@db_option
@click.pass_obj
def revoke_command(settings: Settings, token_id: int) -> None:
    """Revoke the API token TOKEN_ID.

    A running server that verified the token in the last seconds keeps trusting it until its
    verification cache expires (TOKEN_CACHE_TTL, 2 s); after that every request is refused.
    """
    with _authenticator(settings) as auth:
        auth.revoke_token(token_id)
    click.echo(
        f"Revoked API token {token_id}; running servers refuse it within {TOKEN_CACHE_TTL:g} s."
    )
