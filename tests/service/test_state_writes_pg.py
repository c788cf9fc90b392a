"""Job state moves on the real databases (SQLite and PostgreSQL): the checks of
``tests/state_writes.py``, where PostgreSQL takes the locking, one-probe-per-id statements."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tasklift.db.session import create_db_engine, upgrade

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import state_writes


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_every_allowed_move_and_no_other(db: Engine) -> None:
    state_writes.check_every_move(db)


def test_a_refused_move_loses_nothing(db: Engine) -> None:
    state_writes.check_refusal_loses_nothing(db)


def test_claims_and_starts_are_guards(db: Engine) -> None:
    state_writes.check_guarded_moves(db)
