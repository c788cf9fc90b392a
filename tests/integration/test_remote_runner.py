"""Remote job runners over the embedded engine's job API, and the monitor that watches them.

The runners are real ``python -m tasklift.runner job`` processes (see process_backend.py);
they fetch their spec and archive over HTTP, heartbeat, and post their outcomes.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import remotefns
import workfns
from process_backend import ProcessBackend
from sqlalchemy import select

from tasklift import WorkFailed, Workflow
from tasklift.api.engines import embedded_engine
from tasklift.db.models import Job
from tasklift.settings import Settings


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Monitor settings of tests: heartbeats every 0.3 s, lost after 2 s."""
    return settings.with_overrides(
        monitor_interval=0.2, heartbeat_interval=0.3, heartbeat_timeout=2.0
    )


def run(settings: Settings, backend: ProcessBackend, fn, *args):
    return Workflow(func=fn, settings=settings, backend=backend).run(*args)


def test_map_runs_through_remote_runners_with_the_archive_over_http(fast, tmp_path):
    backend = ProcessBackend(tmp_path / "runner-home")

    def wf():
        return remotefns.square(group_kwargs=[{"x": i} for i in range(6)])

    assert run(fast, backend, wf) == [i * i for i in range(6)]
    # the archive came over HTTP into the runner's own cache, not from the engine's store
    assert list((tmp_path / "runner-home" / "archives").glob("*.tar.gz"))
    # neither inputs nor tokens are on any command line
    for argv in backend.argv:
        assert not any("eyJ" in a or "Bearer" in a for a in argv)


def test_remote_failure_carries_the_traceback(fast, tmp_path):
    backend = ProcessBackend(tmp_path / "runner-home")

    def wf():
        return remotefns.broken(x=3)

    with pytest.raises(WorkFailed) as info:
        run(fast, backend, wf)
    failure = info.value.failures[0]
    assert failure.error_type == "ValueError"
    assert "bad x=3" in failure.message
    assert "remotefns.py" in (failure.traceback or "")


def test_killed_runner_is_lost_then_retried(fast, tmp_path):
    backend = ProcessBackend(tmp_path / "runner-home")
    marker = tmp_path / "marks"

    def wf():
        return workfns.dies_once(group_kwargs=[{"x": i, "marker_dir": str(marker)}
                                               for i in range(3)])

    assert run(fast, backend, wf) == [0, 2, 4]
    engine = embedded_engine(fast)
    with engine.db.connect() as conn:
        attempts = conn.execute(select(Job.attempts)).scalars().all()
    assert sorted(attempts) == [2, 2, 2]


def test_silent_runner_is_lost_after_the_heartbeat_timeout(fast, tmp_path):
    backend = ProcessBackend(tmp_path / "runner-home")
    marker = tmp_path / "marks"
    frozen: list[int] = []

    def freeze_first_runner() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = list(marker.glob("7-*"))
            if found:
                pid = int(found[0].read_text())
                os.kill(pid, signal.SIGSTOP)  # alive for the backend, silent for the monitor
                frozen.append(pid)
                return
            time.sleep(0.05)

    import threading

    threading.Thread(target=freeze_first_runner, daemon=True).start()

    def wf():
        return remotefns.stalls_once(x=7, marker_dir=str(marker))

    started = time.monotonic()
    try:
        assert run(fast, backend, wf) == 107
    finally:
        for pid in frozen:
            os.killpg(pid, signal.SIGKILL)
    assert frozen, "the first runner never started"
    assert time.monotonic() - started < 60
    engine = embedded_engine(fast)
    with engine.db.connect() as conn:
        attempts = conn.execute(select(Job.attempts)).scalars().one()
    assert attempts == 2


def test_monitor_enforces_the_timeout_of_a_remote_job(fast, tmp_path):
    backend = ProcessBackend(tmp_path / "runner-home")

    def wf():
        return remotefns.overruns(x=1)

    with pytest.raises(WorkFailed) as info:
        run(fast, backend, wf)
    failure = info.value.failures[0]
    assert failure.error_type == "Timeout"
    assert "timeout of 1 s" in failure.message


def test_spooled_outcome_is_delivered_by_the_next_runner(tmp_path):
    """A runner that cannot reach the service leaves its outcome on disk; flush_spool sends it."""
    from tasklift.runner.remote import _spool, flush_spool

    spool = tmp_path / "spool"
    path = _spool(spool, "http://127.0.0.1:9", "token-not-used", 5, {"attempt": 1, "ok": True})
    assert path.stat().st_mode & 0o777 == 0o600
    assert flush_spool(spool, deadline_seconds=0.3) == 0  # nobody there: kept for later
    assert path.exists()
