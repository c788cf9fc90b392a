"""Ray, local, ``num_cpus=2`` (two worker processes)."""

from __future__ import annotations

from typing import Any

from bench.systems import tasks
from bench.systems.base import WORKERS, BenchSystem


class RaySystem(BenchSystem):
    """``ray.init(num_cpus=2)``; one map is ``ray.get([f.remote(a) for a in args])``."""

    name = "ray"
    label = "Ray (local, num_cpus=2)"
    packages = ("ray",)

    def __init__(self) -> None:
        self._remote: dict[Any, Any] = {}

    def _fn(self, fn):
        import ray

        if fn not in self._remote:
            self._remote[fn] = ray.remote(fn)
        return self._remote[fn]

    def start(self) -> None:
        """Start a private local Ray instance and wait until both workers ran a task."""
        import ray

        ray.init(
            num_cpus=WORKERS,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=256 * 1024**2,
            logging_level="WARNING",
            configure_logging=True,
        )
        self.map(tasks.sleep, [0.05] * WORKERS)

    def map(self, fn, args: list[Any]) -> list[Any]:
        """Submit every task, then one ``ray.get`` over all refs."""
        import ray

        rf = self._fn(fn)
        return ray.get([rf.remote(a) for a in args])

    def call(self, fn, arg: Any) -> Any:
        """``ray.get(f.remote(arg))``."""
        import ray

        return ray.get(self._fn(fn).remote(arg))

    def close(self) -> None:
        """``ray.shutdown()``."""
        import ray

        ray.shutdown()
