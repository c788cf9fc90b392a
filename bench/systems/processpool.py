"""concurrent.futures.ProcessPoolExecutor with 2 processes: no persistence, the floor."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench.systems import tasks
from bench.systems.base import WORKERS, BenchSystem


class ProcessPoolSystem(BenchSystem):
    """``ProcessPoolExecutor(2)``; one map is ``Executor.map`` (chunksize 1: one task per job)."""

    name = "processpool"
    label = "ProcessPoolExecutor (no persistence: the floor)"
    packages = ()

    def __init__(self) -> None:
        self.ex: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Create the pool and make sure both processes exist (the pool forks lazily)."""
        self.ex = ProcessPoolExecutor(max_workers=WORKERS)
        list(self.ex.map(tasks.sleep, [0.05] * WORKERS))

    def map(self, fn, args: list[Any]) -> list[Any]:
        """One ``Executor.map`` over ``args``."""
        assert self.ex is not None
        return list(self.ex.map(fn, args))

    def call(self, fn, arg: Any) -> Any:
        """``submit(...).result()``."""
        assert self.ex is not None
        return self.ex.submit(fn, arg).result()

    def close(self) -> None:
        """Shut the pool down."""
        if self.ex is not None:
            self.ex.shutdown(wait=True)
            self.ex = None
