"""W1 and W4 on the scale-out backends (issue 5): the same workloads as bench/run.py, through
``Workflow(backend=...)`` with the embedded engine.

    python bench/backends.py --backend dask  --address tcp://127.0.0.1:8786
    python bench/backends.py --backend slurm [--w1-jobs 2000]

W1: ``--w1-jobs`` no-op jobs as one work (jobs/s). W4: 10 iterations x 20 parallel 10 ms sleeps,
each iteration waiting for all its results (wall; overhead = wall - 1.0 s with 2 workers).
Dask: without ``--address`` a LocalCluster of 2 single-threaded worker processes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tasklift import Workflow, shutdown, work
from tasklift.settings import Settings


@work
def noop(x: int) -> int:
    return x + 1


@work
def sleep10(x: int) -> int:
    time.sleep(0.01)
    return x


def w1(n: int) -> float:
    t0 = time.perf_counter()
    out = noop(group_kwargs=[{"x": i} for i in range(n)])
    assert list(out) == [i + 1 for i in range(n)]
    return n / (time.perf_counter() - t0)


def w4() -> float:
    t0 = time.perf_counter()
    for it in range(10):
        assert list(sleep10(group_kwargs=[{"x": it * 100 + i} for i in range(20)])) == [
            it * 100 + i for i in range(20)
        ]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["dask", "slurm", "local"], required=True)
    parser.add_argument("--address", default=None)
    parser.add_argument("--w1-jobs", type=int, default=2000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tasklift-bench-"))
    settings = Settings(home=home, workers=2, quiet=True)
    if args.backend == "dask":
        from tasklift.backends.dask import DaskBackend

        backend = DaskBackend(address=args.address, workers=2)
    elif args.backend == "slurm":
        from tasklift.backends.slurm import SlurmBackend

        backend = SlurmBackend(spool_dir=home / "slurm")
    else:
        backend = None

    def flow() -> dict[str, float]:
        noop(x=-1)  # warm-up: job API, runners, archive cache
        rate = w1(args.w1_jobs)
        wall = w4()
        return {"w1_jobs_per_s": round(rate, 1), "w4_wall_s": round(wall, 2),
                "w4_overhead_s": round(wall - 1.0, 2)}

    try:
        result = Workflow(func=flow, settings=settings, backend=backend).run()
    finally:
        shutdown()
    print(json.dumps({"backend": args.backend, "w1_jobs": args.w1_jobs, **result}))


if __name__ == "__main__":
    main()
