"""Secrets of ``tasklift server`` and ``tasklift engine``: never on the command line.

Both commands turn their database, bus and runner-identity options into settings the same way:
:func:`server_settings`.

A process's command line is readable by every local account (``/proc/PID/cmdline``, with or
without ``hidepid``), jobs included. Database and broker URLs that carry a password come from the
server's environment (``TASKLIFT_DB_URL``, ``TASKLIFT_BUS``) or a file only its owner can read
(``--db-url-file``, ``--bus-url-file``).
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tasklift.cli.root import with_options
from tasklift.errors import ConfigError
from tasklift.settings import Settings

__all__ = ["read_secret_file", "refuse_secrets_in_argv", "server_settings"]


def _passwords(url: str | None) -> set[str]:
    """The password of ``url`` as written and decoded (``%40`` and ``@``)."""
    if not url or "://" not in url:
        return set()
    try:
        password = urlsplit(url).password
    except ValueError:
        return set()
    return {password, unquote(password)} if password else set()


def refuse_secrets_in_argv(argv: list[str] | None = None, **urls: str | None) -> None:
    """Refuse to start when a URL's password appears on this process's command line.

    Args:
        argv: the command line (default: ``sys.argv``).
        urls: option name -> the URL in effect (``db=...``, ``bus=...``).

    Raises:
        ConfigError: naming the option, never the password.
    """
    args = sys.argv if argv is None else argv
    for option, url in urls.items():
        if any(p in arg for p in _passwords(url) for arg in args):
            raise ConfigError(
                f"the --{option} URL on the command line holds a password, which every local "
                "account (and every job) can read in /proc/PID/cmdline: put the URL in the "
                f"environment (TASKLIFT_{'DB_URL' if option == 'db' else option.upper()}) or "
                f"in a file only the server can read (--{option}-url-file PATH, mode 0600)"
            )


def read_secret_file(path: str, what: str) -> str:
    """Read a URL from a file only its owner may read.

    Raises:
        ConfigError: missing, empty, or readable by group or others.
    """
    file = Path(path)
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
        text = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {file}: {exc.strerror}") from exc
    if mode & 0o077:
        raise ConfigError(
            f"the {what} file {file} is readable by others (mode {mode:o}): chmod 600 {file}"
        )
    if not text:
        raise ConfigError(f"the {what} file {file} is empty")
    return text


def server_settings(
    settings: Settings,
    *,
    db_url: str | None,
    db_url_file: str | None,
    runner_users: tuple[str, ...],
    no_runner_isolation: bool,
    bus_url: str | None = None,
    bus_url_file: str | None = None,
    **overrides: object,
) -> Settings:
    """The settings of ``tasklift server`` or ``tasklift engine`` from their options.

    URLs come from their files when given, runner identities are joined, the other options
    (``overrides``, ``None``: not given) are applied; then no URL's password may be on the
    command line.

    Raises:
        ConfigError: a secret file is unsafe or unreadable, or a password is in ``sys.argv``.
    """
    if db_url_file:
        db_url = read_secret_file(db_url_file, "database URL")
    if bus_url_file:
        bus_url = read_secret_file(bus_url_file, "bus URL")
    settings = with_options(
        settings,
        db_url=db_url,
        bus=bus_url,
        runner_user=",".join(runner_users) or None,
        isolate_runners=False if no_runner_isolation else None,
        **overrides,
    )
    refuse_secrets_in_argv(db=settings.db_url, bus=settings.bus)
    return settings
