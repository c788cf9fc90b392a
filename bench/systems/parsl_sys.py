"""Parsl, ``HighThroughputExecutor`` with one local block of 2 workers.

Start-up gotcha: Parsl provisions even the ``init_blocks`` only from its strategy thread, whose
first tick comes one ``strategy_period`` (default 5 s) after ``parsl.load``. We use
``strategy="none"`` (provision ``init_blocks`` once, never scale) and a short
``strategy_period`` so the block starts at once, then wait until the interchange reports both
workers connected before anything is timed. Everything else is Parsl's default (including its
run-directory logging and encrypted interchange-worker channel).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from bench.systems import tasks
from bench.systems.base import WORKERS, BenchSystem


class ParslSystem(BenchSystem):
    """One map is ``[app(a) for a in args]`` then ``.result()`` on each future."""

    name = "parsl"
    label = "Parsl HighThroughputExecutor"
    packages = ("parsl",)

    def __init__(self) -> None:
        self.dfk = None
        self.htex = None
        self._apps: dict[Any, Any] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-parsl-")

    def _app(self, fn):
        from parsl import python_app

        if fn not in self._apps:
            self._apps[fn] = python_app(fn, executors=["htex"])
        return self._apps[fn]

    def start(self) -> None:
        """Load the config, start the block at once, wait for 2 connected workers."""
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        self.htex = HighThroughputExecutor(
            label="htex",
            address="127.0.0.1",
            loopback_address="127.0.0.1",
            max_workers_per_node=WORKERS,
            cores_per_worker=1,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, nodes_per_block=1),
        )
        config = Config(
            executors=[self.htex],
            strategy="none",
            strategy_period=0.1,
            run_dir=self._tmp.name,
            usage_tracking=0,
        )
        self.dfk = parsl.load(config)
        deadline = time.monotonic() + 120
        while True:
            managers = self.htex.connected_managers()
            if sum(int(m.get("worker_count", 0)) for m in managers) >= WORKERS:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"parsl: workers did not connect: {managers!r}")
            time.sleep(0.05)
        self.map(tasks.sleep, [0.05] * WORKERS)

    def map(self, fn, args: list[Any]) -> list[Any]:
        """Submit every app call, then wait on each future in order."""
        app = self._app(fn)
        futures = [app(a) for a in args]
        return [f.result() for f in futures]

    def call(self, fn, arg: Any) -> Any:
        """``app(arg).result()``."""
        return self._app(fn)(arg).result()

    def close(self) -> None:
        """Clean up the DataFlowKernel (scales the block in)."""
        import parsl

        if self.dfk is not None:
            self.dfk.cleanup()
            parsl.clear()
            self.dfk = None
        self._tmp.cleanup()
