"""The ``tasklift`` command line: one module per command group, all on one root group."""

from __future__ import annotations

import click

# importing a command module registers its commands on the root group
from tasklift.cli import engine, local, remote, server, tokens
from tasklift.cli.root import cli
from tasklift.errors import TaskliftError

__all__ = ["cli", "engine", "local", "main", "remote", "server", "tokens"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tasklift`` command."""
    try:
        cli.main(args=argv, prog_name="tasklift", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 1
    except TaskliftError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    return 0
