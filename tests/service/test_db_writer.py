"""The engine's kept connections on PostgreSQL (``SerialWriter``): reused while busy, given
back to the pool's pre-ping when idle, dropped when the server closed them."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from tasklift.db.session import SerialWriter, create_db_engine


@pytest.fixture
def db(pg_url):
    """The engine's database engine on a fresh PostgreSQL database, disposed afterwards."""
    engine = create_db_engine(pg_url)
    yield engine
    engine.dispose()


def _backend_pid(writer: SerialWriter) -> int:
    with writer.begin() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _terminate(url: str, pid: int) -> None:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            killed = conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        assert killed, f"backend {pid} was not terminated"
    finally:
        admin.dispose()


def test_a_busy_writer_reuses_one_connection(db):
    writer = SerialWriter(db)
    pids = {_backend_pid(writer) for _ in range(20)}
    assert len(pids) == 1, pids
    assert db.pool.checkedout() == 1  # the one kept connection


def test_an_idle_connection_the_server_closed_is_replaced(db, pg_url):
    writer = SerialWriter(db)
    first = _backend_pid(writer)
    _terminate(pg_url, first)
    time.sleep(SerialWriter.PING_AFTER + 0.2)
    # idle long enough: it goes back to the pool, whose pre-ping finds it dead
    second = _backend_pid(writer)
    assert second != first


def test_a_connection_closed_while_busy_fails_once_and_is_dropped(db, pg_url):
    writer = SerialWriter(db)
    first = _backend_pid(writer)
    _terminate(pg_url, first)
    with pytest.raises(OperationalError), writer.begin() as conn:
        conn.exec_driver_sql("SELECT 1")
    # the broken connection was not kept: the next transaction gets a live one
    assert _backend_pid(writer) != first


def test_the_writer_closes_its_connections_with_the_engine(pg_url):
    db = create_db_engine(pg_url)
    writer = SerialWriter(db)
    _backend_pid(writer)
    assert db.pool.checkedout() == 1  # kept open between transactions
    db.dispose()
    assert db.pool.checkedout() == 0
