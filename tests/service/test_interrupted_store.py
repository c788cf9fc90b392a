"""An engine that dies while it stores a large work's jobs (PostgreSQL paces the store until
near the work's end): restarted, it cancels the work with a clear message, so its readers see it
end instead of waiting forever for jobs that never exist; works other engines store, or that are
stored completely, are left alone."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from tasklift.bus.base import work_destination
from tasklift.db import tables
from tasklift.db.session import create_db_engine
from tasklift.embedded import build_engine
from tasklift.records import ResultRecord
from tasklift.settings import Settings
from tasklift.states import JobState

HERE = Path(__file__).parent

# an engine (named, as a server's is stable) storing a 300-job work in chunks of 5 jobs, paced
# by 1 slow worker: it is still storing seconds later. A 60-job work is stored completely first.
STORE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import storefns
    from tasklift import Workflow
    from tasklift.api import joblist, submit
    from tasklift.engine import dispatch, store, works
    from tasklift.settings import Settings

    works.IN_MEMORY_JOBS = 50
    works.STORE_CHUNK = dispatch.PAGE = store.STORE_CHUNK = 10
    store.STORE_CHUNK_MAX, store.STORE_AHEAD = 40, 20
    joblist.EAGER_UP_TO = submit.EAGER_UP_TO = 50
    settings = Settings(
        home=Path(sys.argv[1]), db_url=sys.argv[2], workers=1, quiet=True, engine_name="engine-1"
    )

    def wf():
        whole = storefns.slow_add(group_kwargs=[{"x": i} for i in range(60)], return_work=True)
        assert whole.wait_stored(timeout=120)
        part = storefns.slow_add(
            y=1, group_kwargs=[{"x": i} for i in range(300)], return_work=True
        )
        print(whole.work_id, part.work_id, flush=True)
        part.results(timeout=600)

    Workflow(func=wf, settings=settings).run()
    """
)


def _count_jobs(db: sa.Engine, work_id: int) -> int:
    with db.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.jobs)
                .where(tables.jobs.c.work_id == work_id)
            ).scalar_one()
        )


def _read_line(proc: subprocess.Popen[bytes], timeout: float, log: Path) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"the storing engine printed nothing in {timeout} s:\n"
                             f"{log.read_text()}")  # fmt: skip
    line = proc.stdout.readline().decode()
    assert line, f"the storing engine exited early:\n{log.read_text()}"
    return line


def test_a_work_whose_engine_died_mid_store_is_cancelled_when_it_restarts(
    pg_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    script = tmp_path / "store.py"
    script.write_text(STORE_SCRIPT)
    log = tmp_path / "store.log"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(home), pg_url],
            cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip
    db = create_db_engine(pg_url)
    try:
        whole_id, part_id = map(int, _read_line(proc, 120, log).split())
        deadline = time.monotonic() + 60
        while _count_jobs(db, part_id) < 20:
            assert time.monotonic() < deadline, "the large work's first chunks were not stored"
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)

        # another engine starting meanwhile (same database and home) leaves the work alone
        other = build_engine(
            Settings(home=home, db_url=pg_url, workers=1, quiet=True, engine_name="engine-2"),
            resume=True,
        )
        try:
            row = other.work_row(part_id)
        finally:
            other.close()
        assert (row["status"], row["storing_by"]) == ("running", "engine-1")

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        stored = _count_jobs(db, part_id)
        assert 20 <= stored < 300, stored  # the store was cut short
        with db.begin() as conn:
            # as a server's workflows (made through the API: no client pid); else closing the
            # dead submitter's workflow would end the work before the engine resumes
            conn.execute(sa.update(tables.workflows).values(client_pid=None))

        # the engine restarts under the same name: it cancels the work it was storing
        engine = build_engine(
            Settings(home=home, db_url=pg_url, workers=1, quiet=True, engine_name="engine-1"),
            resume=True,
        )
        heard: list[ResultRecord] = []
        got = threading.Lock()

        def reader(records: list[ResultRecord]) -> None:
            with got:
                heard.extend(records)

        sub = engine.local_bus.subscribe(work_destination(part_id), reader)
        try:
            engine.start()
            part = engine.work_row(part_id)
            whole = engine.work_row(whole_id)
            records = engine.results(part_id)
        finally:
            sub.close()
            engine.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
        db.dispose()
    message = (
        f"the engine stopped while storing this work's jobs ({stored} of 300 stored): "
        "run the workflow again; its finished jobs are reused"
    )
    assert (part["status"], part["storing_by"]) == ("cancelled", None)
    # every one of its n_jobs jobs ended: a reader counting them sees the work end
    assert sorted(r.idx for r in records) == list(range(300))
    assert all(r.state in (JobState.FINISHED.value, JobState.CANCELLED.value) for r in records)
    cancelled = [r for r in records if r.state == JobState.CANCELLED.value]
    assert {r.error_message for r in cancelled} == {message}
    assert {r.idx for r in cancelled} >= set(range(stored, 300))
    with got:
        assert {r.job_id for r in heard} == {r.job_id for r in cancelled}  # published live
    assert part["n_finished"] + part["n_cancelled"] == 300
    # the work stored completely is resumed as usual, not cancelled
    assert whole["status"] in ("running", "finished") and whole["n_cancelled"] == 0
    assert whole["storing_by"] is None
