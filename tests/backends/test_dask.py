"""The dask backend on a real cluster: a ``dask scheduler`` and two ``dask worker`` processes.

End to end through ``Workflow(backend=DaskBackend(address=...))``: the embedded engine serves
the job API on loopback, Dask workers run the remote job runner, which reports through it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dask_workfns
import pytest
from dask_support import DaskCluster, dask_cluster, require_dask
from sqlalchemy import select

import tasklift
from tasklift import WorkFailed, Workflow, WorkState
from tasklift.api.engines import embedded_engine
from tasklift.db.models import Job
from tasklift.errors import BackendError, ConfigError
from tasklift.settings import Settings
from tasklift.states import JobState

pytestmark = pytest.mark.dask


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    base = tmp_path_factory.mktemp("dask")
    env = {
        "TASKLIFT_HOME": str(base / "worker-home"),
        "TASKLIFT_QUIET": "1",
        # a task whose worker dies is rescheduled once; the second death is KilledWorker
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
    }
    with dask_cluster(base, n_workers=2, env=env) as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Embedded engine whose job API listens on loopback only; a quick monitor."""
    yield Settings(
        home=tmp_path / "home",
        workers=2,
        quiet=True,
        job_api_host="127.0.0.1",
        monitor_interval=0.3,
        heartbeat_interval=1.0,
        heartbeat_timeout=30.0,
    )
    tasklift.shutdown()


def backend(cluster: DaskCluster, **options):
    from tasklift.backends import DaskBackend

    return DaskBackend(address=cluster.address, **options)


def test_import_tasklift_does_not_import_dask():
    import subprocess
    import sys

    code = (
        "import sys, tasklift, tasklift.backends\n"
        "from tasklift.backends import DaskBackend\n"
        "assert 'distributed' not in sys.modules and 'dask' not in sys.modules, 'dask imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_options_are_config_errors():
    require_dask()
    from tasklift.backends.dask import DaskBackend

    with pytest.raises(ConfigError, match="map_resources names unknown"):
        DaskBackend("tcp://127.0.0.1:1", map_resources={"disk": "DISK"})
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        DaskBackend(None, workers=0)
    assert DaskBackend("dask://h:8786").address == "tcp://h:8786"


def test_unreachable_scheduler_is_a_backend_error():
    require_dask()
    from tasklift.backends.dask import DaskBackend

    bad = DaskBackend("tcp://127.0.0.1:9", client_kwargs={"timeout": 1})
    with pytest.raises(BackendError, match="cannot connect to the Dask scheduler"):
        bad.start(sink=None)  # type: ignore[arg-type]


def test_map_results_in_order(cluster, settings):
    def wf(n):
        return dask_workfns.add(y=100, group_kwargs=[{"x": i} for i in range(n)])

    out = Workflow(func=wf, settings=settings, backend=backend(cluster)).run(30)
    assert out == [i + 100 for i in range(30)]


def test_owned_local_cluster_runs_jobs_and_closes(settings):
    require_dask()
    from tasklift.backends import DaskBackend

    owned = DaskBackend(None, workers=1)

    def wf():
        return dask_workfns.add(y=1, group_kwargs=[{"x": i} for i in range(3)])

    assert Workflow(func=wf, settings=settings, backend=owned).run() == [1, 2, 3]
    [client, local_cluster] = owned._owned
    tasklift.shutdown()  # closes the engine's backends
    assert client.status == "closed"
    assert local_cluster.status.name == "closed"


def test_failing_job_reports_the_remote_traceback(cluster, settings):
    def wf():
        return dask_workfns.fail(group_kwargs=[{"x": i} for i in range(4)])

    with pytest.raises(WorkFailed) as info:
        Workflow(func=wf, settings=settings, backend=backend(cluster)).run()
    [failure] = info.value.failures
    assert failure.error_type == "ValueError"
    assert "boom at x=2" in failure.message
    assert "dask_workfns.py" in failure.traceback and "raise ValueError" in failure.traceback


@pytest.mark.parametrize("isolate", [False, None], ids=["in-worker", "isolated-by-default"])
def test_timeout_is_enforced_by_the_monitor(cluster, settings, isolate):
    # in a worker's thread the function cannot be stopped (it sleeps on, briefly); a work
    # with a timeout runs isolated by default: the runner's process is killed, so even a
    # long sleep frees its worker at once
    delay = 3.0 if isolate is False else 60.0

    def wf():
        sleeper = dask_workfns.sleep_long(delay=delay, return_work=True)
        with pytest.raises(WorkFailed) as info:
            sleeper.results(timeout=60)
        after = dask_workfns.add(group_kwargs=[{"x": i} for i in range(4)])
        return info.value.failures, after

    t0 = time.monotonic()
    failures, after = Workflow(
        func=wf, settings=settings, backend=backend(cluster, isolate=isolate)
    ).run()
    elapsed = time.monotonic() - t0
    [failure] = failures
    assert failure.error_type == "Timeout"
    assert "timeout of 1 s" in failure.message
    assert after == [0, 1, 2, 3]
    assert elapsed < 30, f"the timed-out job held its worker ({elapsed:.1f} s)"


def test_killed_worker_job_is_rerun_and_reported_once(cluster, settings, tmp_path):
    markers = tmp_path / "markers"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            found = sorted(markers.glob("0-*"))
            if found:
                pid = int(found[0].read_text())
                os.kill(pid, signal.SIGKILL)  # the Dask worker process running the job
                killed.append(pid)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()

    def wf():
        return dask_workfns.marked_sleep(
            group_kwargs=[{"x": i, "marker_dir": str(markers), "delay": 1.5} for i in range(2)]
        )

    out = Workflow(func=wf, settings=settings, backend=backend(cluster)).run()
    thread.join(timeout=5)
    assert killed, "the job never started"
    assert [r["x"] for r in out] == [0, 1]
    assert out[0]["pid"] != killed[0]
    runs = sorted(markers.glob("0-*"))
    assert len(runs) == 2, runs  # killed once, run once more
    with embedded_engine(settings).db.connect() as conn:
        rows = conn.execute(select(Job.id, Job.state, Job.attempts).order_by(Job.id)).all()
    # exactly one terminal outcome per job; Dask rescheduled the task itself (same attempt)
    # unless the monitor saw the lost heartbeat first (then the engine retried: attempt 2)
    print("killed-worker rows:", rows, "runs:", [p.name for p in runs])
    assert [r.state for r in rows] == ["finished", "finished"]
    assert rows[0].attempts in (1, 2)
    cluster.wait_for_workers(2)  # the nanny restarted the killed worker process


def test_task_killing_its_workers_is_lost_with_dasks_reason(cluster, settings):
    def wf():
        return dask_workfns.kill_own_worker(x=1)

    with pytest.raises(WorkFailed) as info:
        Workflow(func=wf, settings=settings, backend=backend(cluster)).run()
    [failure] = info.value.failures
    assert failure.error_type == "JobLost"
    assert "Dask gave up on task tasklift-1-1-" in failure.message
    assert "workers died" in failure.message
    cluster.wait_for_workers(2)


def test_cancel_kills_isolated_runners(cluster, settings, tmp_path):
    markers = tmp_path / "markers"

    def wf():
        work = dask_workfns.marked_sleep(
            group_kwargs=[{"x": i, "marker_dir": str(markers), "delay": 60} for i in range(4)],
            return_work=True,
        )
        deadline = time.monotonic() + 30
        while len(list(markers.glob("*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        n = work.cancel()
        with pytest.raises(WorkFailed) as info:
            work.results(timeout=30)
        after = dask_workfns.add(group_kwargs=[{"x": i} for i in range(4)])
        return n, info.value, work.status, after

    t0 = time.monotonic()
    n, err, status, after = Workflow(
        func=wf, settings=settings, backend=backend(cluster, isolate=True)
    ).run()
    assert n == 4
    assert status == WorkState.CANCELLED
    assert all(f.state == "cancelled" for f in err.failures)
    assert after == [0, 1, 2, 3]  # the workers were freed
    assert time.monotonic() - t0 < 40
    pids = [int(p.read_text()) for p in markers.glob("*")]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "a cancelled job runner is still running"


def test_poll_and_lost_reason_of_unknown_and_cancelled_handles(cluster):
    from tasklift.backends.dask import DaskBackend

    b = DaskBackend(cluster.address)
    b.start(sink=None)  # type: ignore[arg-type]
    try:
        assert b.poll(["tasklift-999-1-abc"]) == {"tasklift-999-1-abc": JobState.LOST}
        assert "does not know" in (b.lost_reason("tasklift-999-1-abc") or "")
    finally:
        b.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False
