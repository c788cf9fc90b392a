"""Terminal progress bars (rich) while a blocking work call waits."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from tasklift.api.results import Work

__all__ = ["wait_with_progress"]


def wait_with_progress(work: Work, deadline: float | None) -> bool:
    """Wait for ``work`` while drawing a bar of done / failed / running jobs."""
    total = len(work.keys)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}  running {task.fields[running]}"),
        TimeElapsedColumn(),
    )
    # on stderr: stdout stays clean for the program's own output (e.g. --json)
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(work.name, total=total, failed=0, running=0)
        while True:
            step_deadline = time.monotonic() + 0.2
            if deadline is not None:
                step_deadline = min(step_deadline, deadline)
            done = work._async.wait_for(total, step_deadline)
            records = work._async.ordered()
            failed = sum(r.state != "finished" for r in records)
            bar.update(
                task,
                completed=len(records),
                failed=failed,
                running=work.engine.running_count(work.work_id),
            )
            if done:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
