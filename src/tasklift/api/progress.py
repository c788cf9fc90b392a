"""Terminal progress bars (rich) while a blocking work call waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from tasklift.api.waiting import AsyncResult

__all__ = ["wait_with_progress"]


def wait_with_progress(
    name: str, waiting: AsyncResult, running: Callable[[], int], deadline: float | None
) -> bool:
    """Wait for the work ``waiting`` collects while drawing a bar of done / failed / running
    jobs (``running`` counts the work's jobs handed to a backend); False at the deadline."""
    total = waiting.n_jobs
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}  running {task.fields[running]}"),
        TimeElapsedColumn(),
    )
    # on stderr: stdout stays clean for the program's own output (e.g. --json)
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(name, total=total, failed=0, running=0)
        while True:
            step_deadline = time.monotonic() + 0.2
            if deadline is not None:
                step_deadline = min(step_deadline, deadline)
            done = waiting.wait_for(total, step_deadline)
            records = waiting.ordered()
            failed = sum(r.state != "finished" for r in records)
            bar.update(
                task,
                completed=len(records),
                failed=failed,
                running=running(),
            )
            if done:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
