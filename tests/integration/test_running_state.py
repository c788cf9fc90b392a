"""A job a runner has started is recorded ``running`` (in batches), on the local workers and on
remote runners, and still ends in exactly one terminal state; short jobs may skip it."""

from __future__ import annotations

import threading
import time

import remotefns
import workfns
from process_backend import ProcessBackend
from sqlalchemy import create_engine, select

from tasklift import Workflow
from tasklift.db.models import Job
from tasklift.settings import Settings
from tasklift.states import ALLOWED, JobState


def _watch_states(settings: Settings, stop: threading.Event) -> list[set[str]]:
    """Poll every job's state from a thread until ``stop``; return what was seen per poll."""
    seen: list[set[str]] = []

    def poll() -> None:
        db = create_engine(settings.database_url)
        try:
            while not stop.is_set():
                try:
                    with db.connect() as conn:
                        seen.append(set(conn.execute(select(Job.state)).scalars()))
                except Exception:  # noqa: BLE001 - the database may not exist yet
                    seen.append(set())
                time.sleep(0.05)
        finally:
            db.dispose()

    threading.Thread(target=poll, daemon=True).start()
    return seen


def _run_and_watch(settings: Settings, fn, **kwargs) -> tuple[object, set[str]]:
    stop = threading.Event()
    seen = _watch_states(settings, stop)
    try:
        value = Workflow(func=fn, settings=settings, **kwargs).run()
    finally:
        stop.set()
    return value, set().union(*seen) if seen else set()


def test_a_long_job_on_a_local_worker_is_recorded_running(settings: Settings) -> None:
    def wf():
        return workfns.sleep_then(group_kwargs=[{"x": 1, "delay": 2.0}])

    value, states = _run_and_watch(settings, wf)
    assert value == [1]
    assert JobState.RUNNING.value in states, states
    assert JobState.RUNNING in ALLOWED[JobState.QUEUED]


def test_a_remote_job_is_recorded_running_from_its_first_heartbeat(
    settings: Settings, tmp_path
) -> None:
    fast = settings.with_overrides(
        monitor_interval=0.2, heartbeat_interval=0.3, heartbeat_timeout=5.0
    )
    backend = ProcessBackend(tmp_path / "runner-home")

    def wf():
        return remotefns.pid_of_runner(
            group_kwargs=[{"x": 1, "marker_dir": str(tmp_path / "m"), "delay": 2.0}]
        )

    value, states = _run_and_watch(fast, wf, backend=backend)
    assert value == [1]
    assert JobState.RUNNING.value in states, states
