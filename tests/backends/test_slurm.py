"""The Slurm backend against a real single-node Slurm (scripts/install-slurm.sh).

Three layers: the text handling (state table, squeue/sacct parsing, sbatch options) without
Slurm; the sbatch/squeue/scancel plumbing with a stand-in for the job runner; and whole
workflows through ``Workflow(backend=SlurmBackend(...))`` whose array elements run the real
job runner against the embedded engine's job API.

Time-limit kills: Slurm's minimum ``--time`` is one minute, so the test lets the job start with
``walltime=60`` and then moves its end to now (``scontrol update jobid=X EndTime=<now>``).
Slurm's own time-limit check (every 30 s in slurmctld) kills it with state TIMEOUT.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import slurmfns
from sqlalchemy import select

from tasklift import WorkFailed, Workflow
from tasklift.api.engines import embedded_engine
from tasklift.backends.slurm import SlurmBackend
from tasklift.backends.slurm_script import (
    SLURM_STATES,
    array_ranges,
    batch_script,
    format_walltime,
    parse_handle,
    parse_sacct,
    parse_squeue,
    sbatch_resources,
)
from tasklift.db.models import Job
from tasklift.errors import BackendError, ConfigError
from tasklift.records import JobSpec, WorkSpec
from tasklift.settings import Settings
from tasklift.states import JobState

# --------------------------------------------------------------------------- text handling


def test_state_table_maps_slurm_codes_onto_job_states():
    expected = {
        JobState.QUEUED: ["PENDING", "CONFIGURING"],
        JobState.RUNNING: ["RUNNING", "COMPLETING"],
        JobState.FINISHED: ["COMPLETED"],
        JobState.FAILED: ["FAILED", "OUT_OF_MEMORY"],
        JobState.LOST: ["TIMEOUT", "NODE_FAIL", "PREEMPTED", "CANCELLED", "BOOT_FAIL", "DEADLINE"],
    }
    for state, codes in expected.items():
        for code in codes:
            assert SLURM_STATES[code] is state, code


def test_squeue_and_sacct_output_is_parsed_per_element():
    listed = parse_squeue(
        "41_0|RUNNING|1:00|None\n41_3|TIMEOUT|1:00|TimeLimit\n41_[4-6,9%2]|PENDING|1:00|"
        "JobArrayTaskLimit\ngarbage line\n"
    )
    assert listed[(41, 0)] == ("RUNNING", "1:00", "None")
    assert listed[(41, 3)][0] == "TIMEOUT"
    assert sorted(k for k, v in listed.items() if v[0] == "PENDING") == [
        (41, 4),
        (41, 5),
        (41, 6),
        (41, 9),
    ]
    accounted = parse_sacct("52_0|COMPLETED|0:0\n52_1|CANCELLED by 0|0:15\n52_[2-3]|PENDING|0:0\n")
    assert accounted[(52, 1)] == ("CANCELLED", "", "0:15")
    assert accounted[(52, 3)][0] == "PENDING"


def test_resources_become_sbatch_options():
    assert sbatch_resources({"cores": 4, "memory_mb": 1500.5, "walltime": 90, "gpus": 2}) == [
        "--cpus-per-task=4",
        "--mem=1501M",
        "--time=0-00:01:30",
        "--gres=gpu:2",
    ]
    assert sbatch_resources({"gpus": 0}) == []
    assert format_walltime(2 * 86400 + 3723.2) == "2-01:02:04"
    for bad in (
        {"cores": 0},
        {"cores": 1.5},
        {"memory_mb": -1},
        {"walltime": "1h"},
        {"gpus": True},
        {"walltime": float("inf")},
    ):
        with pytest.raises(BackendError, match="resources"):
            sbatch_resources(bad)


def test_handles_and_array_ranges():
    assert parse_handle("slurm:41_7") == (41, 7)
    for bad in ("slurm:41", "dask:41_7", "slurm:41_7 ", "slurm:a_1"):
        with pytest.raises(BackendError, match="not a Slurm job handle"):
            parse_handle(bad)
    assert array_ranges([7, 3, 5, 6, 3]) == "3,5-7"
    assert array_ranges([0]) == "0"


def test_batch_script_records_the_exit_status_and_holds_no_secret():
    text = batch_script(
        3,
        "my\nwork",
        5,
        ["/usr/bin/python3", "-m", "tasklift.runner", "job", "--batch-dir", "/spool/a b"],
        "/spool/a b/exits",
    )
    assert "'/spool/a b/exits'/$SLURM_ARRAY_TASK_ID" in text
    assert "/usr/bin/python3 -m tasklift.runner job --batch-dir '/spool/a b'" in text
    assert "my work" in text


def test_bad_constructor_arguments_are_config_errors():
    for kwargs in (
        {"partition": "a b"},
        {"account": ""},
        {"max_running": 0},
        {"max_array_size": True},
        {"extra_args": "--exclusive"},
        {"extra_args": ["--array=0-3"]},
        {"extra_args": ["-o", "x"]},
        {"command_timeout": 0},
    ):
        with pytest.raises(ConfigError):
            SlurmBackend(**kwargs)


def test_slurm_backend_is_lazily_exported():
    import tasklift.backends as backends

    assert backends.SlurmBackend is SlurmBackend
    assert SlurmBackend.runs_remotely and SlurmBackend.handles_outlive_engine


# --------------------------------------------------------------------------- plumbing

SETTLED = {JobState.FINISHED, JobState.FAILED, JobState.LOST}


class _Sink:
    """What start() reads from the engine: its settings."""

    def __init__(self, home: Path) -> None:
        self.settings = Settings(home=home)

    def record_outcomes(self, outcomes: list) -> None:
        raise AssertionError("the Slurm backend never reports outcomes itself")

    def requeue(self, jobs: list) -> None:
        raise AssertionError("unexpected requeue")

    def capacity_changed(self) -> None:
        pass


def _work(**changes) -> WorkSpec:
    values = dict(
        work_id=7,
        name="plumbing",
        function="m:f",
        script=None,
        archive_sha=None,
        archive_file=None,
        cache_dir="/nonexistent",
        backend="slurm",
        service_url="http://127.0.0.1:9",
    )
    values.update(changes)
    return WorkSpec(**values)


def _jobs(n: int) -> list[JobSpec]:
    return [JobSpec(100 + i, 1, b"{}", token=f"SECRET-TOKEN-{i}") for i in range(n)]


def _stand_in(tmp_path: Path, body: str) -> str:
    """An executable used as the job runner's "python" (the plumbing tests need no API)."""
    path = tmp_path / f"fake-python-{abs(hash(body))}"
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def make_backend(tmp_path: Path) -> Iterator[Callable[..., SlurmBackend]]:
    """Backends (started unless ``start=False``); their arrays are cancelled after the test."""
    made: list[SlurmBackend] = []

    def make(*, start: bool = True, **kwargs) -> SlurmBackend:
        backend = SlurmBackend(**kwargs)
        if start:  # else the workflow's engine starts it
            backend.start(_Sink(tmp_path / "home"))
        made.append(backend)
        return backend

    yield make
    arrays = [str(a) for backend in made for a in backend._dirs]
    if arrays:
        subprocess.run(["scancel", *arrays], capture_output=True, timeout=30, check=False)


def _wait(
    backend: SlurmBackend, handles: Sequence[str], want: set[JobState], timeout: float = 60.0
) -> dict[str, JobState]:
    deadline = time.monotonic() + timeout
    while True:
        states = backend.poll(handles)
        if all(states[h] in want for h in handles):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"not {want} after {timeout} s: {states}")
        time.sleep(0.3)


@pytest.mark.slurm
def test_a_batch_is_one_array_whose_elements_run_the_runner(slurm_cluster, make_backend, tmp_path):
    backend = make_backend(python="/bin/echo", max_running=2)
    handles = backend.submit(_work(), _jobs(5))
    array_ids = {parse_handle(h)[0] for h in handles}
    assert len(array_ids) == 1 and [parse_handle(h)[1] for h in handles] == [0, 1, 2, 3, 4]
    (array_id,) = array_ids
    batch_dir = (backend.spool_dir / "jobs" / str(array_id)).resolve()
    tokens = batch_dir / "tokens.json"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert "SECRET-TOKEN-4" in tokens.read_text()
    states = _wait(backend, handles, SETTLED)
    assert set(states.values()) == {JobState.FINISHED}
    assert not tokens.exists(), "the job tokens outlived every element of the array"
    assert batch_dir.parent == backend.spool_dir / "work-7"  # default spool: <home>/slurm
    assert backend.spool_dir == tmp_path / "home" / "slurm"
    out = (batch_dir / f"{array_id}_3.out").read_text()
    assert out.strip() == f"-m tasklift.runner job --batch-dir {batch_dir}"
    script = batch_dir / "submit.sh"
    assert stat.S_IMODE(script.stat().st_mode) == 0o700
    assert sorted(p.name for p in (batch_dir / "exits").iterdir()) == ["0", "1", "2", "3", "4"]
    # tokens never on a command line nor in the script or the output
    assert "SECRET-TOKEN" not in script.read_text() + out
    shown = subprocess.run(
        ["scontrol", "show", "job", str(array_id)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "SECRET-TOKEN" not in shown
    assert "ArrayTaskThrottle=2" in shown


@pytest.mark.slurm
def test_batches_past_max_array_size_are_split_by_offset(slurm_cluster, make_backend):
    backend = make_backend(python="/bin/true", max_array_size=2)
    handles = backend.submit(_work(), _jobs(5))
    elements = [parse_handle(h) for h in handles]
    arrays = sorted({a for a, _ in elements})
    assert len(arrays) == 3 and [i for _, i in elements] == [0, 1, 0, 1, 0]
    for k, array_id in enumerate(arrays):  # array k holds jobs 2k, 2k+1
        batch = json.loads((backend.spool_dir / "jobs" / str(array_id) / "batch.json").read_text())
        wanted = [100 + i for i in range(2 * k, min(5, 2 * k + 2))]
        assert [job for job, _ in batch["jobs"]] == wanted
    assert set(_wait(backend, handles, SETTLED).values()) == {JobState.FINISHED}


@pytest.mark.slurm
def test_cluster_limits_are_read_from_scontrol(slurm_cluster, make_backend):
    backend = make_backend()
    backend._read_config()
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    line = next(x for x in config.splitlines() if x.startswith("MaxArraySize"))
    assert backend.max_array_size == int(line.split("=")[1]) - 1
    assert backend._accounting is ("accounting_storage/none" not in config)


@pytest.mark.slurm
def test_sbatch_refusal_is_a_backend_error_with_its_message(slurm_cluster, make_backend):
    backend = make_backend(partition="no_such_partition", python="/bin/true")
    with pytest.raises(BackendError, match=r"(?i)invalid partition"):
        backend.submit(_work(), _jobs(2))
    backend = make_backend(python="/bin/true")
    with pytest.raises(BackendError, match="job API URL"):
        backend.submit(_work(service_url=None), _jobs(1))
    with pytest.raises(BackendError, match="walltime"):
        backend.submit(_work(resources={"walltime": -5}), _jobs(1))
    (backend.spool_dir / "work-8").write_text("a file where a directory belongs")
    with pytest.raises(BackendError, match="cannot write the Slurm batch directory"):
        backend.submit(_work(work_id=8), _jobs(1))


@pytest.mark.slurm
def test_a_crashed_runner_is_failed_with_its_exit_status(slurm_cluster, make_backend, tmp_path):
    backend = make_backend(python=_stand_in(tmp_path, "exit 3"))
    (handle,) = backend.submit(_work(), _jobs(1))
    assert _wait(backend, [handle], SETTLED)[handle] is JobState.FAILED
    assert "with FAILED (exit status 3)" in (backend.lost_reason(handle) or "")


@pytest.mark.slurm
def test_cancel_is_one_scancel_and_cancelled_elements_are_lost(
    slurm_cluster, make_backend, tmp_path
):
    backend = make_backend(python=_stand_in(tmp_path, "sleep 300"))
    backend.max_running = 1  # element 0 runs, 1 and 2 wait for it
    handles = backend.submit(_work(), _jobs(3))
    _wait(backend, handles[:1], {JobState.RUNNING})
    assert set(backend.poll(handles[1:]).values()) == {JobState.QUEUED}
    backend.cancel([handles[0], handles[2]])  # one running, one pending element
    _wait(backend, [handles[0], handles[2]], {JobState.LOST}, timeout=30)
    assert backend.poll([handles[1]])[handles[1]] in (JobState.QUEUED, JobState.RUNNING)
    assert "with CANCELLED" in (backend.lost_reason(handles[0]) or "")
    # a pending element cancelled before Slurm split it off the array leaves no job record
    assert "cancelled (scancel)" in (backend.lost_reason(handles[2]) or "")
    batch_dir = (backend.spool_dir / "jobs" / str(parse_handle(handles[0])[0])).resolve()
    assert (batch_dir / "tokens.json").exists()  # element 1 may still start
    backend.cancel(handles)  # ended elements are no error
    _wait(backend, handles, {JobState.LOST}, timeout=30)
    assert not (batch_dir / "tokens.json").exists()


@pytest.mark.slurm
def test_a_restarted_engine_finds_exit_records_of_jobs_slurm_forgot(
    slurm_cluster, make_backend, tmp_path
):
    # what a new backend (after an engine restart) sees once MinJobAge has purged the job:
    # squeue does not know it, and the spool's exit record tells how the element ended
    spool = tmp_path / "spool"
    batch = spool / "work-1" / "old"
    (batch / "exits").mkdir(parents=True)
    (batch / "exits" / "0").write_text("0\n")
    (batch / "exits" / "1").write_text("1\n")
    (spool / "jobs").mkdir(parents=True)
    (spool / "jobs" / "99999990").symlink_to(batch)
    backend = make_backend(spool_dir=spool)
    handles = ["slurm:99999990_0", "slurm:99999990_1", "slurm:99999990_2", "slurm:99999991_0"]
    states = backend.poll(handles)
    assert [states[h] for h in handles] == [
        JobState.FINISHED,
        JobState.FAILED,
        JobState.LOST,
        JobState.LOST,
    ]
    assert "exited with status 1" in (backend.lost_reason(handles[1]) or "")
    assert "no longer knows array element 0 of job 99999991" in (
        backend.lost_reason(handles[3]) or ""
    )
    assert backend.poll(["nonsense"])["nonsense"] is JobState.LOST


# --------------------------------------------------------------------------- workflows


@pytest.fixture
def slurm_settings(settings: Settings, tmp_path: Path, monkeypatch) -> Iterator[Settings]:
    """Fast monitor settings; array elements get their own tasklift home (cache, spool)."""
    monkeypatch.setenv("TASKLIFT_HOME", str(tmp_path / "runner-home"))  # sbatch copies the env
    yield settings.with_overrides(
        monitor_interval=0.5, heartbeat_interval=1.0, heartbeat_timeout=30.0
    )


def _handles(settings: Settings) -> list[str]:
    with embedded_engine(settings).db.connect() as conn:
        return list(conn.execute(select(Job.backend_handle).order_by(Job.idx)).scalars())


def _run(settings: Settings, fn, backend: SlurmBackend):
    return Workflow(func=fn, settings=settings, backend=backend).run()


@pytest.mark.slurm
def test_a_work_of_n_jobs_runs_as_one_array_with_results_in_order(
    slurm_cluster, slurm_settings, make_backend
):
    backend = make_backend(start=False, max_running=4)

    def wf():
        return slurmfns.slurm_square(group_kwargs=[{"x": i} for i in range(8)])

    results = _run(slurm_settings, wf, backend)
    assert [r["square"] for r in results] == [i * i for i in range(8)]
    handles = _handles(slurm_settings)
    assert len({parse_handle(h)[0] for h in handles}) == 1  # one array
    assert sorted(int(r["array_task"]) for r in results) == list(range(8))


@pytest.mark.slurm
def test_a_failing_job_gives_work_failed_with_the_remote_traceback(
    slurm_cluster, slurm_settings, make_backend
):
    def wf():
        return slurmfns.slurm_broken(x=5)

    with pytest.raises(WorkFailed) as info:
        _run(slurm_settings, wf, make_backend(start=False))
    failure = info.value.failures[0]
    assert failure.error_type == "ValueError"
    assert "bad x=5 on Slurm" in failure.message
    assert "slurmfns.py" in (failure.traceback or "")


@pytest.mark.slurm
def test_the_monitor_timeout_cancels_the_element_with_scancel(
    slurm_cluster, slurm_settings, make_backend
):
    def wf():
        return slurmfns.slurm_hangs(x=1)

    started = time.monotonic()
    with pytest.raises(WorkFailed) as info:
        _run(slurm_settings, wf, make_backend(start=False))
    assert info.value.failures[0].error_type == "Timeout"
    assert time.monotonic() - started < 60
    (handle,) = _handles(slurm_settings)
    array_id, _ = parse_handle(handle)
    deadline = time.monotonic() + 30
    while True:  # scancel took the element out of Slurm
        state = subprocess.run(
            [
                "squeue",
                "--noheader",
                "--array",
                "--states=all",
                f"--jobs={array_id}",
                "--format=%T",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.split()
        if state == ["CANCELLED"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert state == ["CANCELLED"]


class _TimeLimitEnder:
    """Ends the time limit of every running element of a job name (Slurm then kills it)."""

    def __init__(self, job_name: str) -> None:
        self.job_name = job_name
        self.ended: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _TimeLimitEnder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            running = subprocess.run(
                [
                    "squeue",
                    "--noheader",
                    "--array",
                    "--states=RUNNING",
                    f"--name={self.job_name}",
                    "--format=%i",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.split()
            for element in running:
                if element in self.ended:
                    continue
                now = time.strftime("%Y-%m-%dT%H:%M:%S")
                done = subprocess.run(
                    ["scontrol", "update", f"jobid={element}", f"EndTime={now}"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                if done.returncode == 0:
                    self.ended.append(element)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_time_limit_kill_is_lost_retried_then_failed_naming_timeout(
    slurm_cluster, slurm_settings, make_backend
):
    def wf():
        return slurmfns.slurm_overstays(x=2)

    with _TimeLimitEnder("tasklift-slurm_overstays") as ender, pytest.raises(WorkFailed) as info:
        _run(slurm_settings, wf, make_backend(start=False))
    failure = info.value.failures[0]
    assert failure.error_type == "JobLost"
    assert "with TIMEOUT (time limit" in failure.message
    assert len(ender.ended) == 2  # the first attempt and its retry
    with embedded_engine(slurm_settings).db.connect() as conn:
        assert conn.execute(select(Job.attempts)).scalars().one() == 2
    assert os.environ["TASKLIFT_HOME"].endswith("runner-home")
