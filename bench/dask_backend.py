"""Bench of the dask backend: how to hand 2,000 jobs to Dask, and tasklift's no-op throughput.

    python bench/dask_backend.py               # 3 repeats, medians
    python bench/dask_backend.py --jobs 500 --e2e-jobs 100 --repeats 1

Part 1 compares one ``client.map(..., key=[...])`` call with one ``client.submit`` per job (a
trivial function with the job runner's signature), on a ``LocalCluster`` of 2 single-threaded
worker processes: the time the call takes (what the engine's dispatch waits for) and the time
until all tasks ended. Part 2 runs ``--e2e-jobs`` no-op jobs end to end through
``Workflow(backend=DaskBackend(cluster))`` (job API, runner, outcome) and reports jobs/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster

from tasklift import Workflow, shutdown, work
from tasklift.backends.dask import DaskBackend
from tasklift.settings import Settings


def fake_runner(api_url: str, token: str, job_id: int, attempt: int) -> str:
    return "reported"


@work
def noop(i: int) -> int:
    return i


def hand_over(client: Client, n: int, mode: str, tag: str) -> tuple[float, float]:
    keys = [f"tasklift-{tag}-{i}-1" for i in range(n)]
    t0 = time.perf_counter()
    if mode == "map":
        futures = client.map(
            fake_runner,
            ["http://h"] * n,
            ["t"] * n,
            list(range(n)),
            [1] * n,
            key=keys,
            pure=False,
            retries=0,
        )
    else:
        futures = [
            client.submit(fake_runner, "http://h", "t", i, 1, key=k, pure=False, retries=0)
            for i, k in enumerate(keys)
        ]
    t1 = time.perf_counter()
    client.gather(futures)
    t2 = time.perf_counter()
    client.cancel(futures)
    return t1 - t0, t2 - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--e2e-jobs", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster, set_as_default=False)
    hand: dict[str, list[tuple[float, float]]] = {"map": [], "submit": []}
    for r in range(args.repeats):
        for mode in ("map", "submit"):
            hand[mode].append(hand_over(client, args.jobs, mode, f"{mode}{r}"))
            time.sleep(0.5)
    client.close()
    rates = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as home:
            settings = Settings(home=Path(home), quiet=True, job_api_host="127.0.0.1")

            def wf(n: int) -> int:
                return len(noop(group_kwargs=[{"i": i} for i in range(n)]))

            backend = DaskBackend(cluster)
            Workflow(func=wf, settings=settings, backend=backend).run(4)  # warm-up
            t0 = time.perf_counter()
            Workflow(func=wf, settings=settings, backend=backend, fresh=True).run(args.e2e_jobs)
            rates.append(args.e2e_jobs / (time.perf_counter() - t0))
            shutdown()
    cluster.close()
    report = {
        f"{mode}_call_s": statistics.median(x[0] for x in runs) for mode, runs in hand.items()
    }
    report.update(
        {f"{mode}_all_done_s": statistics.median(x[1] for x in runs) for mode, runs in hand.items()}
    )
    report["tasklift_noop_jobs_per_s"] = statistics.median(rates)
    report["raw"] = {"hand_over": hand, "rates": rates}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
