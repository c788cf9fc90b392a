"""Runner identities for the test servers: unprivileged uids with no account (as root only).

Every `tasklift server` a test starts runs its jobs under a uid range of its own (no two test
servers share one), exactly as a production server with ``--runner-user LOW-HIGH``. Those uids
must reach this Python and this checkout: :func:`grant_traverse` adds search permission (``o+x``,
never read) to the directories above them, e.g. ``/root`` when pyenv lives there.
"""

from __future__ import annotations

import itertools
import os
import stat
import sys
from pathlib import Path

BASE_UID = 200_000 + (os.getpid() % 1000) * 1024
"""Uids beyond any account here; a block of 1,024 per pytest process."""
PER_SERVER = 4
_next = itertools.count()


def can_switch_identity() -> bool:
    """True when this process may start processes under other uids (root)."""
    return os.geteuid() == 0


def next_range() -> str:
    """A fresh ``LOW-HIGH`` range of :data:`PER_SERVER` uids for one server."""
    low = BASE_UID + (next(_next) * PER_SERVER) % 1024
    return f"{low}-{low + PER_SERVER - 1}"


def grant_traverse(*paths: Path) -> list[Path]:
    """Add ``o+x`` to each directory above (and of) ``paths`` that lacks it; return those."""
    changed = []
    for path in paths:
        for directory in [path, *path.parents]:
            if not directory.is_dir():
                continue
            mode = stat.S_IMODE(directory.stat().st_mode)
            if not mode & stat.S_IXOTH:
                os.chmod(directory, mode | stat.S_IXOTH)
                changed.append(directory)
    return changed


def prepare(repo: Path) -> None:
    """Make this Python, its packages and the checkout reachable by runner identities."""
    executable = Path(os.path.realpath(sys.executable))
    grant_traverse(executable.parent, Path(sys.prefix), Path(sys.base_prefix), repo)
