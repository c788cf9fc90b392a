"""The per-job statements as driver SQL on the cursor of the caller's transaction.

Profiling the embedded engine (issue 7, ``docs/benchmarks.md``) showed SQLAlchemy's execution
machinery costing about three times the statements themselves on SQLite for the few
statements that run once per work, per dispatch batch or per outcome batch: store a work and
its jobs, claim jobs, bump a work's counters, store outcomes, look up memoised jobs. Those run
here as plain SQL on the DBAPI cursor of the caller's connection, inside its transaction
(callers own it, as everywhere in :mod:`tasklift.db`). The same text serves SQLite and
PostgreSQL: ``?`` placeholders become ``%s`` for psycopg. Every other statement stays Core.
Bulk job rows go through ``COPY ... FROM STDIN`` on PostgreSQL (:func:`copy_many`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table

__all__ = [
    "chunks",
    "copy_many",
    "execute",
    "executemany",
    "insert_many",
    "insert_row",
    "placeholders",
]


def chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    """Yield ``items`` in slices of ``size`` (keeps IN lists and bind counts bounded)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@functools.lru_cache(maxsize=256)
def _dialect_text(sql: str, qmark: bool) -> str:
    return sql if qmark else sql.replace("?", "%s")


def _cursor(conn: Connection) -> tuple[Any, bool]:
    return conn.connection.cursor(), conn.dialect.paramstyle == "qmark"


def execute(conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (``?`` placeholders) and return its rows (empty without any)."""
    cursor, qmark = _cursor(conn)
    try:
        cursor.execute(_dialect_text(sql, qmark), tuple(params))
        return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
    finally:
        cursor.close()


def executemany(conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> int:
    """Run one statement once per parameter row (no result rows); return how many rows it
    changed in all."""
    if not rows:
        return 0
    cursor, qmark = _cursor(conn)
    try:
        cursor.executemany(_dialect_text(sql, qmark), rows)
        return int(cursor.rowcount)
    finally:
        cursor.close()


def placeholders(n: int) -> str:
    """``?, ?, ..., ?`` with ``n`` placeholders (for IN lists)."""
    return ", ".join("?" * n)


@functools.lru_cache(maxsize=64)
def _scalar_defaults(table: Table, named: frozenset[str]) -> tuple[tuple[str, Any], ...]:
    """``(column, value)`` of the scalar Python defaults of ``table``'s columns not ``named``
    (Core fills those in itself; plain SQL must name them)."""
    return tuple(
        (c.name, c.default.arg)
        for c in table.columns
        if c.name not in named and c.default is not None and getattr(c.default, "is_scalar", False)
    )


@functools.lru_cache(maxsize=64)
def _insert_text(
    table: Table, columns: tuple[str, ...], computed: tuple[tuple[str, str], ...] = ()
) -> tuple[str, tuple[Any, ...]]:
    """INSERT text for ``columns`` (placeholders) and ``computed`` (column, SQL expression)
    pairs, plus the scalar Python defaults of the columns not named (Core fills those in
    itself; plain SQL must name them). Returns the text and those default values, which go
    after the expressions' parameters."""
    extra = _scalar_defaults(table, frozenset({*columns, *(c for c, _ in computed)}))
    names = [*columns, *(c for c, _ in computed), *(c for c, _ in extra)]
    slots = ["?"] * len(columns) + [f"({sql})" for _, sql in computed] + ["?"] * len(extra)
    quoted = ", ".join(f'"{name}"' for name in names)
    text = f"INSERT INTO {table.name} ({quoted}) VALUES ({', '.join(slots)})"
    return text, tuple(value for _, value in extra)


def insert_row(
    conn: Connection,
    table: Table,
    values: dict[str, Any],
    computed: tuple[tuple[str, str], ...] = (),
    computed_params: Sequence[Any] = (),
) -> int:
    """Insert one row and return its integer primary key ``id``.

    ``computed`` gives columns whose value is an SQL expression (e.g. a scalar subquery for
    the next sequence number) evaluated by the same statement, with ``computed_params``.
    """
    sql, defaults = _insert_text(table, tuple(values), computed)
    params = [*values.values(), *computed_params, *defaults]
    cursor, qmark = _cursor(conn)
    try:
        if qmark:
            cursor.execute(sql, params)
            return int(cursor.lastrowid)
        cursor.execute(_dialect_text(sql + " RETURNING id", qmark), params)
        return int(cursor.fetchone()[0])
    finally:
        cursor.close()


def insert_many(
    conn: Connection, table: Table, columns: tuple[str, ...], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert rows given as tuples in ``columns`` order (one executemany)."""
    sql, defaults = _insert_text(table, columns)
    data = [(*row, *defaults) for row in rows] if defaults else list(rows)
    executemany(conn, sql, data)


@functools.lru_cache(maxsize=64)
def _copy_text(table: Table, columns: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    """COPY text for ``columns`` plus the scalar Python defaults of the columns not named
    (their values go after each row's)."""
    extra = _scalar_defaults(table, frozenset(columns))
    quoted = ", ".join(f'"{name}"' for name in (*columns, *(c for c, _ in extra)))
    return f"COPY {table.name} ({quoted}) FROM STDIN", tuple(value for _, value in extra)


def copy_many(
    conn: Connection, table: Table, columns: tuple[str, ...], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert rows given as tuples in ``columns`` order, in the caller's transaction: one
    ``COPY ... FROM STDIN`` on PostgreSQL (about a fifth of executemany's CPU per row in this
    process, and less for PostgreSQL, which parses one stream instead of a statement per
    row), :func:`insert_many` elsewhere (SQLite)."""
    if conn.dialect.name != "postgresql":
        insert_many(conn, table, columns, rows)
        return
    sql, defaults = _copy_text(table, columns)
    cursor = conn.connection.cursor()
    try:
        with cursor.copy(sql) as copy:
            if defaults:
                for row in rows:
                    copy.write_row((*row, *defaults))
            else:
                for row in rows:
                    copy.write_row(row)
    finally:
        cursor.close()
