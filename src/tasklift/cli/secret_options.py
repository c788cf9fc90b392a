"""Secrets of ``tasklift server`` and ``tasklift engine``: never on the command line.

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

from tasklift.errors import ConfigError

__all__ = ["read_secret_file", "refuse_secrets_in_argv"]


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
