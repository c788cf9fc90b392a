"""``container=``: job runners start through apptainer/singularity, found on the node's PATH.

Apptainer cannot be installed on the test machine (no package in the registries it reaches), so
a FAKE ``apptainer`` stands in: a shell script first on the workers' PATH that records its argv
and then runs the command that follows ``exec [--bind DIR] IMAGE`` with ``FAKE_APPTAINER_IMAGE``
set, so the job's result shows it ran through it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dask_workfns
import pytest
from dask_support import DaskCluster, dask_cluster

import tasklift
from tasklift import WorkFailed, Workflow
from tasklift.backends.command import container_init_env, runner_command, split_init_env
from tasklift.errors import ConfigError
from tasklift.settings import Settings

IMAGE = "docker://example.org/tasklift-test:1"

FAKE_APPTAINER = """#!/bin/bash
# FAKE apptainer for tests: records its argv, then runs what follows `exec [--bind X] IMAGE`
printf '%s\\n' "$*" >> {record}
if [ "$1" != exec ]; then echo "fake apptainer: only 'exec' is faked" >&2; exit 2; fi
shift
while [ "$1" = --bind ] || [ "$1" = -B ]; do shift 2; done
export FAKE_APPTAINER_IMAGE="$1"
shift
exec "$@"
"""


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the fake ``apptainer``; its record file is ``record.txt`` beside it."""
    base = tmp_path_factory.mktemp("fake-apptainer")
    (base / "bin").mkdir()
    script = base / "bin" / "apptainer"
    script.write_text(FAKE_APPTAINER.format(record=base / "record.txt"))
    script.chmod(0o755)
    return base


def records(fake_bin: Path) -> list[str]:
    path = fake_bin / "record.txt"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield Settings(
        home=tmp_path / "home",
        workers=1,
        quiet=True,
        job_api_host="127.0.0.1",
        monitor_interval=0.3,
        heartbeat_interval=1.0,
    )
    tasklift.shutdown()


def test_shortcut_builds_init_env_with_setup_first():
    env = container_init_env(IMAGE, "source a.sh; module load x")
    setup, prefix = split_init_env(env)
    assert setup[:2] == ["source a.sh", "module load x"]
    assert "command -v apptainer || command -v singularity" in setup[2]
    assert prefix == f'"$TASKLIFT_CONTAINER_RUNTIME" exec --bind "$PWD" {IMAGE}'
    assert container_init_env(None, "x") == "x"
    argv = runner_command("/py", env, ["worker"])
    assert argv[:2] == ["/bin/bash", "-c"]
    assert argv[2].endswith(
        f'exec "$TASKLIFT_CONTAINER_RUNTIME" exec --bind "$PWD" {IMAGE} '
        "/py -m tasklift.runner worker"
    )


def test_init_env_splits_only_at_top_level_semicolons():
    assert split_init_env("a; b 'x;y' \"p;q\" $(c; d); pre fix") == (
        ["a", "b 'x;y' \"p;q\" $(c; d)"],
        "pre fix",
    )
    assert split_init_env("source s.sh;") == (["source s.sh"], "")
    assert runner_command("py", "source s.sh;", ["job"]) == [
        "/bin/bash",
        "-c",
        "source s.sh; exec py -m tasklift.runner job",
    ]
    assert runner_command("py", None, ["worker"]) == ["py", "-m", "tasklift.runner", "worker"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "container is empty"),
        ("docker://python:3.11; rm -rf ~", "characters an image reference cannot have"),
        ("my image.sif", "characters an image reference cannot have"),
        ("ftp://host/x.sif", "unknown image scheme 'ftp'"),
        ("docker://", "names no image"),
        (42, "must be an image reference string"),
    ],
)
def test_bad_container_values_are_config_errors(value, problem):
    with pytest.raises(ConfigError, match=problem):
        tasklift.work(container=value)(lambda: None)
    with pytest.raises(ConfigError, match=problem):
        Workflow(func=lambda: None, container=value)


def test_no_runtime_on_the_path_is_a_clear_error(tmp_path):
    argv = runner_command(sys.executable, container_init_env("base.sif"), ["worker"])
    proc = subprocess.run(
        argv,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 127
    assert "container=base.sif needs apptainer or singularity on the PATH" in proc.stderr


def test_local_job_runs_through_the_container(fake_bin, settings, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_bin / 'bin'}{os.pathsep}{os.environ['PATH']}")
    before = len(records(fake_bin))

    def wf():
        return dask_workfns.boxed(group_kwargs=[{"x": 1}, {"x": 2}]), dask_workfns.where_am_i(x=3)

    boxed, plain = Workflow(func=wf, settings=settings).run()
    assert [r["image"] for r in boxed] == [IMAGE, IMAGE]
    assert [r["setup"] for r in boxed] == ["done", "done"]  # init_env's set-up ran first
    assert plain["image"] is None  # a work without container= does not use it
    new = records(fake_bin)[before:]
    assert new and all(line.startswith(f"exec --bind {os.getcwd()} {IMAGE} ") for line in new)
    assert "-m tasklift.runner worker" in new[0]


def test_workflow_container_applies_to_its_works(fake_bin, settings, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_bin / 'bin'}{os.pathsep}{os.environ['PATH']}")

    def wf():
        return dask_workfns.where_am_i(x=1)

    out = Workflow(func=wf, settings=settings, container="/images/base.sif").run()
    assert out["image"] == "/images/base.sif"


@pytest.fixture(scope="module")
def boxed_cluster(fake_bin, tmp_path_factory) -> Iterator[DaskCluster]:
    base = tmp_path_factory.mktemp("dask-container")
    env = {
        "PATH": f"{fake_bin / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "TASKLIFT_HOME": str(base / "worker-home"),
    }
    with dask_cluster(base, n_workers=1, env=env) as cluster:
        yield cluster


@pytest.mark.dask
def test_dask_job_runs_through_the_container(fake_bin, boxed_cluster, settings):
    from tasklift.backends import DaskBackend

    before = len(records(fake_bin))

    def wf():
        return dask_workfns.boxed(group_kwargs=[{"x": 1}, {"x": 2}])

    out = Workflow(func=wf, settings=settings, backend=DaskBackend(boxed_cluster.address)).run()
    assert [r["image"] for r in out] == [IMAGE, IMAGE]
    assert [r["setup"] for r in out] == ["done", "done"]
    new = records(fake_bin)[before:]
    assert len(new) == 2  # one isolated runner per job, each through the container
    workdir = boxed_cluster.directory  # the Dask worker's working directory
    assert all(line.startswith(f"exec --bind {workdir} {IMAGE} ") for line in new)
    assert all("-m tasklift.runner job --batch-dir" in line for line in new)


@pytest.mark.dask
def test_dask_job_without_runtime_fails_with_the_reason(boxed_cluster, settings):
    from tasklift.backends import DaskBackend

    def wf():
        return dask_workfns.boxed_without_runtime(x=1)

    with pytest.raises(WorkFailed) as info:
        Workflow(func=wf, settings=settings, backend=DaskBackend(boxed_cluster.address)).run()
    [failure] = info.value.failures
    assert failure.error_type == "JobLost"
    print("no-runtime failure:", failure.message)
    assert "needs apptainer or singularity on the PATH" in failure.message


@pytest.mark.slurm
def test_slurm_job_runs_through_the_container(fake_bin, slurm_cluster, settings, monkeypatch,
                                              tmp_path):
    """Each array element starts its runner through the container (sbatch passes PATH on)."""
    from tasklift.backends import SlurmBackend

    monkeypatch.setenv("PATH", f"{fake_bin / 'bin'}{os.pathsep}{os.environ['PATH']}")
    before = len(records(fake_bin))

    def wf():
        return dask_workfns.boxed(group_kwargs=[{"x": 1}, {"x": 2}])

    backend = SlurmBackend(spool_dir=tmp_path / "slurm")
    out = Workflow(func=wf, settings=settings, backend=backend).run()
    assert [r["image"] for r in out] == [IMAGE, IMAGE]
    assert [r["setup"] for r in out] == ["done", "done"]
    new = records(fake_bin)[before:]
    assert len(new) == 2 and all(f" {IMAGE} " in line for line in new)
    assert all("-m tasklift.runner job --batch-dir" in line for line in new)
