"""Database engines: SQLite tuning (WAL, background checkpoints, one serial writer), schema
version checks and Alembic upgrades."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tasklift.errors import ConfigError

__all__ = [
    "SerialWriter",
    "alembic_config",
    "create_db_engine",
    "mask_url",
    "schema_is_current",
    "upgrade",
]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_upgrade_lock = threading.Lock()


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe to print or log)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - any unparsable URL is masked wholesale
        return "<unparsable database URL>"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL + synchronous=NORMAL: a commit survives a crash of any process; only an OS crash or
    # power loss can drop the last transactions (the file stays consistent). One fsync per
    # checkpoint instead of one per commit is what makes per-result commits cheap.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # 64 MiB of page cache (default 2 MiB): storing a million-job work inserts into the
    # random-order key index, whose pages otherwise fall out of the cache on every insert
    # (W5 of issue 7: about 1.4x faster inserts). Pages are allocated only as they are used.
    cursor.execute("PRAGMA cache_size=-65536")
    # WAL checkpoints (the only fsyncs at synchronous=NORMAL) run in a background thread
    # (_Checkpointer) instead of inside whichever commit crosses 1,000 pages of WAL: that
    # commit then took milliseconds instead of tens of microseconds (W3's p99). This limit is
    # only the safety net should the background thread fall behind.
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_SAFETY_PAGES}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024
"""The background checkpointer copies the WAL back into the database past this size."""
WAL_SAFETY_PAGES = 20_000
"""A commit checkpoints itself past this many WAL pages (80 MB): only if the thread lags."""
CHECKPOINT_EVERY = 0.25
"""Seconds between the background checkpointer's looks at the WAL's size."""


class _Checkpointer(threading.Thread):
    """Checkpoints one SQLite database's WAL in the background (PASSIVE: never blocks the
    engine's readers or writers); stops when its engine is disposed or garbage-collected."""

    def __init__(self, engine: Engine, database: Path) -> None:
        super().__init__(name=f"tasklift-wal-checkpoint-{database.name}", daemon=True)
        self._engine = weakref.ref(engine)
        self._database = database
        self._wal = database.with_name(database.name + "-wal")
        self._stop_event = threading.Event()
        event.listen(engine, "engine_disposed", self._on_dispose)

    def _on_dispose(self, _engine: Engine) -> None:
        self._stop_event.set()

    def run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop_event.wait(CHECKPOINT_EVERY):
                if self._engine() is None:
                    return
                try:
                    if self._wal.stat().st_size < WAL_CHECKPOINT_BYTES:
                        continue
                    if conn is None:
                        conn = sqlite3.connect(self._database, timeout=30, check_same_thread=False)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except FileNotFoundError:
                    continue  # no WAL yet, or the database was removed
                except sqlite3.Error as exc:  # the next round tries again
                    logger.warning("WAL checkpoint of %s failed: %s", self._database, exc)
        finally:
            if conn is not None:
                conn.close()


def create_db_engine(url: str) -> Engine:
    """Create a SQLAlchemy engine for ``url`` (SQLite file or PostgreSQL).

    Raises:
        ConfigError: the URL cannot be parsed or names an unsupported database.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"invalid database URL {mask_url(url)}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=16,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        if database and database != ":memory:":
            _Checkpointer(engine, Path(database)).start()
        return engine
    if backend == "postgresql":
        # synchronous_commit=off: a commit returns before its WAL is flushed (PostgreSQL
        # flushes within ~3 x wal_writer_delay). A crash of the database server (not of
        # tasklift) can lose the last fraction of a second of job updates, never consistency;
        # those jobs then run again. It removes one fsync per result batch.
        return create_engine(
            parsed,
            pool_size=10,
            max_overflow=20,
            pool_pre_ping=True,
            connect_args={"options": "-c synchronous_commit=off"},
        )
    raise ConfigError(
        f"unsupported database {backend!r} in {mask_url(url)}; use sqlite:///PATH or "
        "postgresql+psycopg://USER@HOST/DB"
    )


def alembic_config(engine: Engine) -> Config:
    """Return an Alembic config whose migrations run on ``engine``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def schema_is_current(engine: Engine) -> tuple[bool, str | None, str | None]:
    """Return ``(current?, database revision, head revision)``."""
    script = ScriptDirectory.from_config(alembic_config(engine))
    head = script.get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current == head, current, head


def upgrade(engine: Engine) -> None:
    """Apply every pending Alembic migration to ``engine``'s database."""
    with _upgrade_lock:
        ok, current, head = schema_is_current(engine)
        if ok:
            return
        logger.info("upgrading database schema %s -> %s", current, head)
        command.upgrade(alembic_config(engine), "head")


class SerialWriter:
    """The engine's frequent small transactions on connections kept open.

    SQLite: one at a time, on one connection. SQLite lets one writer in at a time anyway;
    taking turns on a Python lock instead of SQLite's busy handler (which sleeps 1, 2, 5, ...
    ms between tries) hands the database over at once.

    PostgreSQL, whose writers run concurrently: each transaction takes a connection from a small
    free list of its own (up to ``KEPT_CONNECTIONS``, opened on demand). A pool check-out pings
    the server and a check-in resets the connection: two round trips, about 200 us of CPU,
    more than a one-job transaction itself (issue 7 profile of the server). A connection idle
    for ``PING_AFTER`` seconds goes back to the pool and the transaction takes a fresh
    check-out, so a database restart costs no more failed transactions than with the pool's
    pre-ping; one that broke is dropped.

    Not re-entrant: a transaction must not open another one.
    """

    KEPT_CONNECTIONS = 4
    PING_AFTER = 1.0

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._serial = engine.dialect.name == "sqlite"
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._free: list[tuple[float, Connection]] = []  # (last used, monotonic), LIFO
        event.listen(engine, "engine_disposed", self._close)

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back on an error."""
        if not self._serial:
            conn = self._take()
            try:
                with conn.begin():
                    yield conn
            except BaseException:
                self._give_back(conn)
                raise
            self._give_back(conn)
            return
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed or conn.invalidated:
                conn = self._conn = self._engine.connect()
            with conn.begin():
                yield conn

    def _take(self) -> Connection:
        stale: list[Connection] = []
        conn: Connection | None = None
        now = time.monotonic()
        with self._lock:
            while self._free:
                used, kept = self._free.pop()
                if now - used < self.PING_AFTER and not kept.closed and not kept.invalidated:
                    conn = kept
                    break
                stale.append(kept)
        for kept in stale:  # back to the pool: its next check-out pings the server
            _close_quietly(kept)
        return conn if conn is not None else self._engine.connect()

    def _give_back(self, conn: Connection) -> None:
        if conn.closed or conn.invalidated or conn.in_transaction():
            conn.close()
            return
        with self._lock:
            if len(self._free) < self.KEPT_CONNECTIONS:
                self._free.append((time.monotonic(), conn))
                return
        conn.close()

    def _close(self, _engine: Engine) -> None:
        with self._lock:
            kept = [c for _, c in self._free]
            self._free.clear()
            if self._conn is not None:
                kept.append(self._conn)
                self._conn = None
        for conn in kept:  # the disposed pool would keep them open: close them for good
            _close_quietly(conn, invalidate=True)


def _close_quietly(conn: Connection, invalidate: bool = False) -> None:
    """Close a kept connection; one the server already dropped cannot fail anything here."""
    try:
        if invalidate:
            conn.invalidate()
        conn.close()
    except SQLAlchemyError as exc:
        logger.debug("closing a kept database connection: %s", exc)
