"""The embedded engine on PostgreSQL while the database is away: finished jobs' outcomes are
held in memory and recorded once it answers again; nothing is lost, nothing runs twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import outagefns
import sqlalchemy as sa

from tasklift import Workflow
from tasklift.settings import Settings

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
OUTAGE_SECONDS = 3.0


def _starts(marks: Path) -> Counter[int]:
    if not marks.exists():
        return Counter()
    return Counter(int(p.name.split("-")[1]) for p in marks.glob("start-*"))


def _outage(db_name: str, marks: Path, log: dict[str, float], errors: list[BaseException]) -> None:
    """Once two jobs run: refuse new connections to the database, end every open one, and
    allow connections again after OUTAGE_SECONDS."""
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        deadline = time.monotonic() + 60
        while sum(_starts(marks).values()) < 2:
            if time.monotonic() > deadline:
                raise AssertionError("no job started within 60 s")
            time.sleep(0.02)
        with admin.connect() as conn:
            try:
                conn.execute(sa.text(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS false'))
                killed = conn.execute(
                    sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = :d AND pid <> pg_backend_pid()"),
                    {"d": db_name},
                ).scalar()
                log["killed"] = float(killed or 0)
                time.sleep(OUTAGE_SECONDS)
            finally:  # never leave the database closed, whatever happened
                conn.execute(sa.text(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS true'))
    except Exception as exc:  # noqa: BLE001 - handed to the test thread, which fails on it
        errors.append(exc)
    finally:
        admin.dispose()


def test_outcomes_are_held_while_the_database_is_away(pg_url, tmp_path, caplog):
    marks = tmp_path / "marks"
    settings = Settings(home=tmp_path / "home", workers=2, quiet=True, db_url=pg_url)
    db_name = pg_url.rsplit("/", 1)[1]
    log: dict[str, float] = {}
    errors: list[BaseException] = []
    outage = threading.Thread(target=_outage, args=(db_name, marks, log, errors), daemon=True)

    def wf():
        calls = [{"x": i, "marks": str(marks), "delay": 1.0} for i in range(6)]
        return outagefns.marked_square(group_kwargs=calls)

    outage.start()
    try:
        out = Workflow(func=wf, settings=settings, name="outage").run()
    finally:
        outage.join(timeout=90)
    assert not errors, errors
    assert log.get("killed", 0) >= 1, "the outage ended no connection of the engine"
    assert out == [i * i for i in range(6)]
    assert _starts(marks) == Counter(range(6)), "a job ran twice or never"
    held = [r.getMessage() for r in caplog.records if "holding" in r.getMessage()]
    assert held, "no outcome ended during the outage: the test proved nothing"
    assert any("held outcomes recorded" in r.getMessage() for r in caplog.records)
