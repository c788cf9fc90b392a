"""The ``tasklift`` command line: one module per command group, all on one root group."""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

# importing a command module registers its commands on the root group
from tasklift.cli import engine, local, remote, server, tokens
from tasklift.cli.root import cli
from tasklift.errors import TaskliftError

__all__ = ["cli", "engine", "local", "main", "remote", "server", "tokens"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tasklift`` command: run it and return its exit code.

    Every command's ``click.exceptions.Exit(code)`` (e.g. ``wait`` on a failed workflow) is
    the process's exit code; errors print one line on stderr and exit 1.
    """
    try:
        code = cli.main(args=argv, prog_name="tasklift", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except TaskliftError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except SQLAlchemyError as exc:  # a database fault the command did not expect
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        click.echo(f"error: database: {cause[0] if cause else type(exc).__name__}", err=True)
        return 1
    # standalone_mode=False: click returns the code of an Exit instead of raising it, and
    # a command's own return value (None) when it ran to its end
    return code if isinstance(code, int) else 0
