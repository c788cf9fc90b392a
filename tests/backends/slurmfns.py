"""Work functions of the Slurm backend tests (importable from the workflow's source archive)."""

from __future__ import annotations

import os
import time

from tasklift import work


@work
def slurm_square(x):
    return {"x": x, "square": x * x, "array_task": os.environ.get("SLURM_ARRAY_TASK_ID")}


@work(retries=0)
def slurm_broken(x):
    raise ValueError(f"bad x={x} on Slurm")


@work(retries=1, resources={"walltime": 60, "cores": 1, "memory_mb": 100})
def slurm_overstays(x):
    time.sleep(300)  # the test ends the element's time limit (scontrol ... EndTime=now)
    return x


@work(retries=0, timeout=2.0)
def slurm_hangs(x):
    time.sleep(300)  # the monitor's timeout cancels it (scancel)
    return x
