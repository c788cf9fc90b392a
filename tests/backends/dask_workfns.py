"""Work functions of the Dask and container tests (importable by job runners)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tasklift import work


@work
def add(x, y=0):
    return x + y


@work(retries=0)
def fail(x):
    if x == 2:
        raise ValueError(f"boom at x={x}")
    return x


@work(retries=0, timeout=1.0)
def sleep_long(delay):
    time.sleep(delay)
    return "woke"


@work(retries=2)
def marked_sleep(x, marker_dir, delay):
    """Leave a marker (pid, time) for each run, then sleep: tests kill the runner meanwhile."""
    Path(marker_dir).mkdir(parents=True, exist_ok=True)
    (Path(marker_dir) / f"{x}-{os.getpid()}-{time.time_ns()}").write_text(str(os.getpid()))
    time.sleep(delay)
    return {"x": x, "pid": os.getpid()}


@work
def where_am_i(x):
    """What the fake container wrapper left in the environment (None: not in a container)."""
    return {"x": x, "image": os.environ.get("FAKE_APPTAINER_IMAGE"), "pid": os.getpid()}


@work(container="docker://example.org/tasklift-test:1", init_env="export TL_SETUP=done;")
def boxed(x):
    """Runs in the (fake) container, after init_env's set-up command."""
    return {
        "x": x,
        "image": os.environ.get("FAKE_APPTAINER_IMAGE"),
        "setup": os.environ.get("TL_SETUP"),
    }


@work(retries=0, container="/images/base.sif", init_env="export PATH=/usr/bin:/bin")
def boxed_without_runtime(x):
    """init_env leaves no apptainer or singularity on the PATH: the runner cannot start."""
    return x


@work(retries=0)
def kill_own_worker(x):
    """Kills the process it runs in: on Dask (in the worker's thread), the worker itself."""
    os.kill(os.getpid(), signal.SIGKILL)
    return x
