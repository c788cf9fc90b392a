"""Database engines: SQLite tuning, schema version checks and Alembic upgrades."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from tasklift.errors import ConfigError

__all__ = ["alembic_config", "create_db_engine", "mask_url", "schema_is_current", "upgrade"]

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
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


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
