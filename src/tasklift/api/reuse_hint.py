"""The re-run hint: a re-run whose archive changed reuses nothing, and says so with the files.

Finished jobs are reused by archive hash + function + key, so any file that changes in the
shipped folder (often an output written next to the script) makes a re-run start over.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from sqlalchemy import func, select

from tasklift.archive import OUTPUT_DIR, archive_path, list_members
from tasklift.db import tables
from tasklift.errors import ArchiveError

if TYPE_CHECKING:
    from tasklift.api.client import EngineClient
    from tasklift.engine.engine import Engine

__all__ = ["changed_files", "reuse_hint", "warn_if_nothing_reusable"]

logger = logging.getLogger(__name__)

MAX_LISTED = 5


def warn_if_nothing_reusable(
    engine: EngineClient,
    *,
    function: str,
    source_dir: str,
    archive_sha: str,
    stream: TextIO | None = None,
) -> str | None:
    """Print :func:`reuse_hint` on ``stream`` (default stderr) when there is one; return it.

    Only the embedded engine is asked (it has the database and the archive store at hand);
    for a remote service this does nothing.
    """
    from tasklift.engine.engine import Engine

    if not isinstance(engine, Engine):
        return None
    try:
        hint = reuse_hint(engine, function=function, source_dir=source_dir, archive_sha=archive_sha)
    except ArchiveError as exc:  # a hint only: the run goes on, but not silently
        logger.warning("cannot compare this run's archive with the previous one: %s", exc)
        return None
    if hint is not None:
        print(hint, file=stream or sys.stderr, flush=True)
    return hint


def reuse_hint(engine: Engine, *, function: str, source_dir: str, archive_sha: str) -> str | None:
    """The message for a run that can reuse nothing because its archive changed, else None.

    There is one when no earlier run of ``function`` from ``source_dir`` used ``archive_sha``
    and finished jobs, but one under another archive did: the message names that run and up to
    :data:`MAX_LISTED` files that differ between the two archives.
    """
    wf, works = tables.workflows, tables.works
    finished = (
        select(wf.c.id, wf.c.archive_sha)
        .join(works, works.c.workflow_id == wf.c.id)
        .where(wf.c.function == function, wf.c.source_dir == source_dir)
        .group_by(wf.c.id, wf.c.archive_sha)
        .having(func.sum(works.c.n_finished) > 0)
    )
    with engine.db.connect() as conn:
        rows = conn.execute(finished.order_by(wf.c.id.desc())).all()
    if not rows or any(sha == archive_sha for _, sha in rows):
        return None
    previous_id, previous_sha = rows[0]
    if previous_sha is None:
        return None
    old = archive_path(engine.settings.archive_dir, previous_sha)
    new = archive_path(engine.settings.archive_dir, archive_sha)
    if not old.is_file():
        logger.info("archive %s of workflow %d is no longer stored", previous_sha, previous_id)
        return None
    changed = changed_files(old, new)
    shown = ", ".join(changed[:MAX_LISTED]) + (", ..." if len(changed) > MAX_LISTED else "")
    return (
        f"tasklift: this run reuses no finished job of workflow {previous_id} (same function, "
        f"same folder): the shipped folder changed since ({_files_differ(len(changed))}: "
        f"{shown}). Finished jobs are reused only for an unchanged archive. Keep outputs out of "
        f"the shipped folder: write them under a {OUTPUT_DIR}/ folder (never packed), or leave "
        "them out with Workflow(exclude=[...]) or a .gitignore entry."
    )


def _files_differ(n: int) -> str:
    return "1 file differs" if n == 1 else f"{n} files differ"


def changed_files(old: Path, new: Path) -> list[str]:
    """The files added, removed or changed between two archives, sorted by name."""
    before, after = list_members(old), list_members(new)
    return sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
