"""The same user code on every backend: the HPO example runs unchanged on local, Dask and Slurm.

Only the environment changes (``TASKLIFT_BACKEND`` and, for Dask and Slurm, the backend's
configuration in ``TASKLIFT_BACKENDS``); the script, its functions and its flags are the ones a
user runs on a laptop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dask_support import dask_cluster

MAIN = Path(__file__).resolve().parents[2] / "examples" / "hpo_bdt" / "main.py"


@pytest.fixture(scope="module")
def dask_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("dask-same-code")
    env = {"TASKLIFT_HOME": str(base / "worker-home"), "TASKLIFT_QUIET": "1"}
    with dask_cluster(base, n_workers=2, env=env) as cluster:
        yield cluster.address


@pytest.mark.parametrize("backend", ["local", "dask", "slurm"])
def test_hpo_example_runs_unchanged(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, script_env: dict[str, str]
) -> None:
    env = dict(script_env, TASKLIFT_BACKEND=backend)
    if backend == "dask":
        address = request.getfixturevalue("dask_address")
        env["TASKLIFT_BACKENDS"] = json.dumps({"dask": {"type": "dask", "address": address}})
    elif backend == "slurm":
        request.getfixturevalue("slurm_cluster")
        spool = str(tmp_path / "slurm-spool")
        env["TASKLIFT_BACKENDS"] = json.dumps({"slurm": {"type": "slurm", "spool_dir": spool}})
    cmd = [
        sys.executable,
        str(MAIN),
        "--json",
        "--iterations",
        "2",
        "--points",
        "4",
        "--n-events",
        "6000",
        "--seed",
        "3",
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["n_jobs"] == 8 and out["n_failed"] == 0
    assert out["iterations"] == 2
    assert 0.5 < out["best_target"] <= 1.0
    if backend == "slurm":  # it really went through Slurm: one batch directory per array
        assert list(Path(spool).iterdir())
