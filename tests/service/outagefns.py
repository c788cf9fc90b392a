"""The work function of the database-outage test: leaves a marker file per run."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tasklift import work


@work(retries=0)
def marked_square(x, marks, delay=0.0):
    """Return ``x * x`` after ``delay`` seconds; every run leaves ``start-<x>-<pid>-<ns>``."""
    Path(marks).mkdir(parents=True, exist_ok=True)
    (Path(marks) / f"start-{x}-{os.getpid()}-{time.time_ns()}").touch()
    time.sleep(delay)
    return x * x
