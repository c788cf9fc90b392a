"""Dask distributed, ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``."""

from __future__ import annotations

from typing import Any

from bench.systems import tasks
from bench.systems.base import WORKERS, BenchSystem


class DaskSystem(BenchSystem):
    """A local Dask cluster of 2 single-threaded worker processes; ``pure=False`` everywhere
    (W2 and W4 submit identical arguments, which Dask would otherwise deduplicate)."""

    name = "dask"
    label = "Dask LocalCluster (2 procs x 1 thread)"
    packages = ("dask", "distributed")

    def __init__(self) -> None:
        self.cluster = None
        self.client = None

    def start(self) -> None:
        """Start the cluster and a client; wait for both workers."""
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=40,
        )
        self.client = Client(self.cluster)
        self.client.wait_for_workers(WORKERS, timeout=60)
        self.map(tasks.sleep, [0.05] * WORKERS)

    def map(self, fn, args: list[Any]) -> list[Any]:
        """``client.gather(client.map(fn, args, pure=False))``."""
        assert self.client is not None
        return self.client.gather(self.client.map(fn, args, pure=False))

    def call(self, fn, arg: Any) -> Any:
        """``client.submit(fn, arg, pure=False).result()``."""
        assert self.client is not None
        return self.client.submit(fn, arg, pure=False).result()

    def close(self) -> None:
        """Close client and cluster."""
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
