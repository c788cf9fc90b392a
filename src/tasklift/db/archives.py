"""Source-archive rows: one per content hash. Functions take a connection and never commit."""

from __future__ import annotations

import time

from sqlalchemy import Connection, insert, select

from tasklift.db.tables import archives

__all__ = ["upsert_archive"]


def upsert_archive(conn: Connection, sha256: str, size: int, n_files: int) -> None:
    """Record an archive once (a known hash is left as it is)."""
    exists = conn.execute(select(archives.c.sha256).where(archives.c.sha256 == sha256)).first()
    if exists is None:
        conn.execute(
            insert(archives).values(
                sha256=sha256, size=size, n_files=n_files, created_at=time.time()
            )
        )
