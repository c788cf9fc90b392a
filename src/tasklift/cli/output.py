"""How the CLI prints: tables at the terminal's width (never cut when piped), JSON, short
renderings of kwargs and values, and the stderr line saying where a command reads."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
from rich.console import Console

__all__ = [
    "console",
    "display_options",
    "echo_json",
    "mask_service_url",
    "readable_refs",
    "render_value",
    "say_source",
]

F = TypeVar("F", bound=Callable[..., Any])

PIPED_WIDTH = 1000
"""Table width when stdout is not a terminal: wide enough that no column is cut."""

REF = "__tasklift_ref__"


def display_options(func: F) -> F:
    """Give a command that prints rows the ``--json`` and ``--wide`` options."""
    func = click.option(
        "--wide", is_flag=True, help="Never wrap or cut columns to the terminal's width."
    )(func)
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def console(wide: bool = False) -> Console:
    """A console for tables: the terminal's width, or (piped, or ``wide``) no limit."""
    if wide or not sys.stdout.isatty():
        return Console(width=PIPED_WIDTH, soft_wrap=True)
    return Console(width=shutil.get_terminal_size().columns)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def readable_refs(value: Any, state: str) -> Any:
    """A job's kwargs with each data-flow input marker replaced by what it stands for:
    ``<from upstream>``, or ``<skipped>`` for a job its ``when=`` condition skipped."""
    if isinstance(value, dict):
        if set(value) == {REF}:
            return "<skipped>" if state == "skipped" else "<from upstream>"
        return {k: readable_refs(v, state) for k, v in value.items()}
    if isinstance(value, list):
        return [readable_refs(v, state) for v in value]
    return value


def render_value(value: Any, limit: int = 200) -> str:
    """``value`` as one line of JSON, cut to ``limit`` characters with ``...``."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def mask_service_url(url: str) -> str:
    """A service URL with any password in it replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def say_source(text: str) -> None:
    """Tell (on stderr) where this command reads: a service or a local database."""
    click.echo(f"# {text}", err=True)
