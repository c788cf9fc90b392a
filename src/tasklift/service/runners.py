"""Job runners of a multi-user server: whose jobs run as which OS identity, and the policy.

The server's composition root (:func:`tasklift.service.app.create_app`) and ``tasklift engine``
call :func:`runner_isolation` once: it refuses to run users' jobs under the server's own identity
unless told this server has one user, checks that the runner identities can start this Python,
and locks the server's home away from them.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, make_url

from tasklift.backends.base import Backend
from tasklift.backends.identities import IdentityPool, parse_identities
from tasklift.backends.local import RunnerIsolation
from tasklift.backends.registry import backend_from_settings
from tasklift.errors import ConfigError
from tasklift.service.access import OwnerLookup
from tasklift.settings import Settings

__all__ = ["backend_factory", "protect_home", "runner_isolation"]

logger = logging.getLogger(__name__)


def protect_home(settings: Settings) -> None:
    """Keep the server's files from its jobs: home (key, archives, caches) 0700, an SQLite
    database and its journals 0600 wherever they are, and a 077 umask for what comes next."""
    os.umask(0o077)
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(home.stat().st_mode)
    if mode & 0o077:
        os.chmod(home, 0o700)
        logger.warning("the server's home %s was mode %o: now 0700", home, mode)
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{url.database}{suffix}")
            if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
                os.chmod(path, 0o600)


def runner_isolation(
    settings: Settings, db: Callable[[], Engine], *, who: str = "tasklift server"
) -> RunnerIsolation | None:
    """The runner isolation of a server or extra engine (``None``: jobs run as the server).

    Raises:
        ConfigError: isolation is on and no runner identity was given, or the identities
            cannot be used (see :meth:`IdentityPool.probe`).
    """
    if not settings.isolate_runners:
        logger.warning(
            "%s runs jobs as its own OS user (--no-runner-isolation): a job can read the "
            "server's key, database and every user's archives; use it only when one person "
            "uses this server",
            who,
        )
        return None
    if not settings.runner_user:
        root = " as root" if os.getuid() == 0 else ""
        raise ConfigError(
            f"{who}{root} will not run users' jobs under its own identity: give job runners "
            "OS identities of their own with --runner-user NAME|UID|LOW-HIGH (or "
            "TASKLIFT_RUNNER_USER; e.g. --runner-user 61000-61063, uids with no account), or "
            "pass --no-runner-isolation for a server only you use"
        )
    identities = parse_identities(settings.runner_user)
    base = settings.runner_dir or Path(tempfile.gettempdir()) / f"tasklift-runners-{os.getuid()}"
    pool = IdentityPool(identities, base)
    python = settings.job_python or sys.executable
    pool.probe(python)
    protect_home(settings)
    logger.info(
        "%s runs jobs under %d runner identit%s, one user each",
        who,
        len(identities),
        "y" if len(identities) == 1 else "ies",
    )
    return RunnerIsolation(identities=pool, owner_of=OwnerLookup(db))


def backend_factory(
    settings: Settings, db: Callable[[], Engine], *, who: str = "tasklift server"
) -> Callable[[str], Backend]:
    """What a server or extra engine builds its backends with: by name, under the runner
    isolation of :func:`runner_isolation` (checked here, once)."""
    isolation = runner_isolation(settings, db, who=who)

    def build(name: str) -> Backend:
        return backend_from_settings(name, settings, isolation=isolation)

    return build
