"""Result latency (a job's return -> the submitter's receipt) per bus, and how long a killed
job takes to surface as a failure.

    python bench/result_latency.py [--n 600] [--repeats 3] [--json]
        [--modes embedded,stomp,server-stomp,server-embedded]
        [--stomp stomp://127.0.0.1:61613] [--db sqlite | --db postgresql+psycopg://.../postgres]
        [--kills 15] [--heartbeat 2,60] [--heartbeat-samples 5]

Latency: each job records ``time.time()`` as it returns; the submitter stamps the moment its
``AsyncResult`` hands the value over (same host, same clock). Two shapes, ``n`` samples each:
``single`` (one-job works one after the other: nothing queued, the bare path) and ``stream``
(one work of ``n`` jobs of 4 ms read with ``as_completed``: the path under a steady flow).
Modes: ``embedded`` (in-process engine and bus), ``stomp`` (in-process engine, results through
the broker: ``Workflow(bus=stomp://...)``), ``server-stomp`` / ``server-embedded`` (``tasklift
server`` with that bus; the client long-polls the server). The STOMP login is ``guest`` unless
``BENCH_STOMP_USER`` / ``BENCH_STOMP_PASSWORD`` say otherwise; the bus URL reaches the server
through its environment, never its command line.

Killed jobs: a job writes its pid and waits; the bench SIGKILLs that process and times
``kill -> failure received by the submitter`` (retries=0) and ``kill -> retry attempt running``
(retries=1). The local backend sees the worker's pipe close at once. Remote runners (Dask,
Slurm) are watched by the monitor: :func:`measure_heartbeat` kills a remote job runner whose
backend cannot see the death (like a node gone while the batch system still lists the job), so
only the missing heartbeats surface it, after ``heartbeat_timeout`` (``--heartbeat 2,60``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import httpx

from tasklift import Workflow, shutdown, work
from tasklift.settings import Settings

STREAM_PAUSE = 0.004
WARMUP = 20


# --------------------------------------------------------------------------- job functions
@work(retries=0)
def stamp(i: int) -> float:
    return time.time()


@work(retries=0)
def paced(i: int, pause: float) -> float:
    time.sleep(pause)
    return time.time()


def _victim_body(i: int, marks: str) -> float:
    d = Path(marks)
    pid_file = d / f"pid-{i}"
    if not pid_file.exists():  # first attempt: be killed
        tmp = d / f".pid-{i}"
        tmp.write_text(str(os.getpid()))
        tmp.rename(pid_file)
        time.sleep(120)
    (d / f"retry-{i}").write_text(f"{time.time()!r} {os.getpid()}")
    return time.time()


@work(retries=0)
def victim(i: int, marks: str) -> float:
    return _victim_body(i, marks)


@work(retries=1)
def victim_retried(i: int, marks: str) -> float:
    return _victim_body(i, marks)


# --------------------------------------------------------------------------- helpers
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = min(len(sorted_values), max(1, round(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summary_ms(samples_s: Sequence[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples_s)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(ms[-1], 3),
    }


def _wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:g} s")
        time.sleep(0.002)


def stomp_url(base: str) -> str:
    """A STOMP bus URL with credentials from the environment and a prefix of its own."""
    user = os.environ.get("BENCH_STOMP_USER", "guest")
    password = os.environ.get("BENCH_STOMP_PASSWORD", "guest")
    host = base.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    return f"stomp://{user}:{password}@{host}/bench-latency-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- latency
def latency_workflow(n: int, offset: int) -> dict[str, list[float]]:
    """The workflow function: warm-up, then ``single`` and ``stream`` samples (seconds)."""
    for i in range(WARMUP):
        stamp(i=offset - 1 - i)
    single = []
    for i in range(n):
        returned = stamp(i=offset + i)
        single.append(time.time() - returned)
    handle = paced(pause=STREAM_PAUSE, group_kwargs=[{"i": offset + i} for i in range(n)],
                   return_work=True)
    stream = [time.time() - job.value for job in handle.as_completed(timeout=600)]
    return {"single": single, "stream": stream}


@contextlib.contextmanager
def server(db: str, bus: str, workdir: Path) -> Iterator[tuple[str, str]]:
    """A ``tasklift server`` with 2 workers on a scratch database: (url, token)."""
    import sqlalchemy as sa

    from tasklift.db.session import create_db_engine, upgrade
    from tasklift.service.auth import Authenticator

    admin = None
    name = ""
    if db.startswith("postgresql"):
        name = f"tasklift_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(db, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        db_url = db.rsplit("/", 1)[0] + f"/{name}"
    else:
        db_url = f"sqlite:///{workdir / 'server.db'}"
    engine = create_db_engine(db_url)
    upgrade(engine)
    home = workdir / "server"
    token = Authenticator(db=engine, settings=Settings(home=home, db_url=db_url)).create_token(
        user="bench")[1]
    engine.dispose()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, TASKLIFT_HOME=str(home), TASKLIFT_WORKERS="2", TASKLIFT_BUS=bus)
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tasklift.cli", "server", "--db", db_url,
                             "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {workdir / 'server.log'}")
            time.sleep(0.1)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def measure_latency(mode: str, n: int, stomp: str, db: str) -> dict[str, Any]:
    """One run of one mode: p50/p99 of ``single`` and ``stream``."""
    workdir = Path(tempfile.mkdtemp(prefix=f"tasklift-latency-{mode}-"))
    offset = 1_000_000
    if mode in ("embedded", "stomp"):
        settings = Settings(home=workdir / "home", workers=2, quiet=True)
        bus = stomp_url(stomp) if mode == "stomp" else None
        try:
            samples = Workflow(func=latency_workflow, settings=settings, bus=bus).run(n, offset)
        finally:
            shutdown()
    elif mode in ("server-stomp", "server-embedded"):
        bus = stomp_url(stomp) if mode == "server-stomp" else "embedded://"
        with server(db, bus, workdir) as (url, token):
            client = Settings(home=workdir / "client", token=token, quiet=True)
            try:
                samples = Workflow(func=latency_workflow, service=url, settings=client).run(
                    n, offset)
            finally:
                shutdown()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    shutil.rmtree(workdir, ignore_errors=True)
    return {"mode": mode, **{shape: summary_ms(v) for shape, v in samples.items()}}


# --------------------------------------------------------------------------- killed jobs
def kill_workflow(kills: int, marks: str) -> dict[str, list[float]]:
    """Kill the worker of a held job, ``kills`` times per variant; seconds per sample."""
    d = Path(marks)
    d.mkdir(parents=True, exist_ok=True)
    to_failure, to_retry, to_result = [], [], []
    for k in range(kills):
        handle = victim(i=k, marks=marks, return_work=True)
        _wait_file(d / f"pid-{k}", 60)
        killed = time.time()
        os.kill(int((d / f"pid-{k}").read_text()), signal.SIGKILL)
        handle.wait(timeout=60)
        to_failure.append(time.time() - killed)
        failure = handle.failures[0]
        if failure.error_type != "WorkerLost":
            raise RuntimeError(f"expected a WorkerLost failure, got {failure}")
    for k in range(kills, 2 * kills):
        handle = victim_retried(i=k, marks=marks, return_work=True)
        _wait_file(d / f"pid-{k}", 60)
        killed = time.time()
        os.kill(int((d / f"pid-{k}").read_text()), signal.SIGKILL)
        handle.result(timeout=60)
        to_result.append(time.time() - killed)
        to_retry.append(float((d / f"retry-{k}").read_text().split()[0]) - killed)
    return {"kill_to_failure": to_failure, "kill_to_retry_running": to_retry,
            "kill_to_retried_result": to_result}


def measure_kills(kills: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tasklift-kill-"))
    settings = Settings(home=workdir / "home", workers=2, quiet=True)
    try:
        samples = Workflow(func=kill_workflow, settings=settings).run(kills, str(workdir / "m"))
    finally:
        shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"backend": "local", **{k: summary_ms(v) for k, v in samples.items()}}


def blind_backend(home: Path) -> Any:
    """A remote backend whose runners' deaths it cannot see (built here: needs the remote runner)."""
    from tasklift.backends.base import Backend
    from tasklift.runner.batch import write_batch
    from tasklift.records import JobSpec, WorkSpec
    from tasklift.states import JobState

    class BlindRunnerBackend(Backend):
        """Remote job runners as detached processes whose deaths this backend cannot see.

        Like a node that vanished while the batch system still lists its job: ``poll`` says
        RUNNING for every handle, so only the runner's missing heartbeats surface a kill.
        """

        name: ClassVar[str] = "blind"
        handles_outlive_engine: ClassVar[bool] = True
        runs_remotely: ClassVar[bool] = True

        def __init__(self) -> None:
            self.procs: list[subprocess.Popen[bytes]] = []
            self.spool = home / "batches"

        def submit(self, work: WorkSpec, jobs: Sequence[JobSpec]) -> list[str]:
            assert work.service_url
            self.spool.mkdir(parents=True, exist_ok=True)
            batch = Path(tempfile.mkdtemp(prefix=f"w{work.work_id}-", dir=self.spool))
            write_batch(batch, work.service_url, jobs)
            env = dict(os.environ, TASKLIFT_HOME=str(home))
            handles = []
            for index in range(len(jobs)):
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tasklift.runner", "job", "--batch-dir", str(batch),
                     "--index", str(index)],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True)
                self.procs.append(proc)
                handles.append(f"blind:{proc.pid}")
            return handles

        def poll(self, handles: Sequence[str]) -> dict[str, JobState]:
            return dict.fromkeys(handles, JobState.RUNNING)

        def cancel(self, handles: Sequence[str]) -> None:
            for handle in handles:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(handle.split(":")[1]), signal.SIGKILL)

        def close(self) -> None:
            for proc in self.procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    return BlindRunnerBackend()


def heartbeat_workflow(samples: int, marks: str) -> list[float]:
    """Kill a held remote runner ``samples`` times; seconds until the failure is received."""
    d = Path(marks)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(samples):
        handle = victim(i=k, marks=marks, return_work=True)
        _wait_file(d / f"pid-{k}", 120)
        killed = time.time()
        os.kill(int((d / f"pid-{k}").read_text()), signal.SIGKILL)
        handle.wait(timeout=600)
        out.append(time.time() - killed)
        if handle.failures[0].error_type not in ("JobLost", "WorkerLost"):
            raise RuntimeError(f"unexpected failure {handle.failures[0]}")
    return out


def measure_heartbeat(heartbeat_timeout: float, samples: int) -> dict[str, Any]:
    """Kill -> failure at the submitter for a remote runner only heartbeats can vouch for.

    ``heartbeat_timeout`` 2 s uses the tests' fast settings (heartbeat every 0.3 s, monitor
    every 0.2 s); other values keep the default heartbeat and monitor intervals.
    """
    try:
        import tasklift.engine.monitor
        import tasklift.runner.remote  # noqa: F401
    except ImportError as exc:
        return {"heartbeat_timeout_s": heartbeat_timeout, "skipped": f"not available: {exc}"}
    workdir = Path(tempfile.mkdtemp(prefix="tasklift-heartbeat-"))
    settings = Settings(home=workdir / "home", workers=2, quiet=True,
                        heartbeat_timeout=heartbeat_timeout)
    if heartbeat_timeout <= 5:
        settings = settings.with_overrides(heartbeat_interval=0.3, monitor_interval=0.2)
    backend = blind_backend(workdir / "runner-home")
    try:
        got = Workflow(func=heartbeat_workflow, settings=settings, backend=backend).run(
            samples, str(workdir / "m"))
    finally:
        shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"heartbeat_timeout_s": heartbeat_timeout,
            "heartbeat_interval_s": settings.heartbeat_interval,
            "monitor_interval_s": settings.monitor_interval,
            **summary_ms(got)}


# --------------------------------------------------------------------------- main
def _median_runs(runs: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        out[key] = {
            stat: round(statistics.median(r[key][stat] for r in runs), 3)
            for stat in ("p50_ms", "p99_ms", "max_ms")
        }
        out[key]["n"] = sum(r[key]["n"] for r in runs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="samples per shape and run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="embedded,stomp,server-stomp,server-embedded")
    parser.add_argument("--stomp", default="stomp://127.0.0.1:61613",
                        help="broker host:port (credentials from BENCH_STOMP_*)")
    parser.add_argument("--db", default="sqlite",
                        help="server DB: sqlite, or a PostgreSQL admin URL (scratch DB)")
    parser.add_argument("--kills", type=int, default=15, help="kills per variant (0: none)")
    parser.add_argument("--heartbeat", default="",
                        help="heartbeat timeouts to measure, e.g. 2,60 (empty: none)")
    parser.add_argument("--heartbeat-samples", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"n": args.n, "repeats": args.repeats,
                              "load1_at_start": os.getloadavg()[0], "latency": {}}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        runs = [measure_latency(mode, args.n, args.stomp, args.db) for _ in range(args.repeats)]
        report["latency"][mode] = {**_median_runs(runs, ("single", "stream")), "runs": runs}
        _progress(f"{mode}: {report['latency'][mode]['single']} / "
                  f"{report['latency'][mode]['stream']}")
    if args.kills:
        report["killed_local"] = measure_kills(args.kills)
        _progress(f"killed (local): {report['killed_local']}")
    report["heartbeat"] = []
    for value in filter(None, (v.strip() for v in args.heartbeat.split(","))):
        report["heartbeat"].append(measure_heartbeat(float(value), args.heartbeat_samples))
        _progress(f"heartbeat: {report['heartbeat'][-1]}")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_table(report)
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print_table(report: dict[str, Any]) -> None:
    print(f"result latency, job return -> submitter receipt; n={report['n']} per shape, "
          f"median of {report['repeats']} runs (load1 {report['load1_at_start']:.2f})")
    print(f"{'mode':<17}{'single p50':>11}{'p99':>9}{'stream p50':>12}{'p99':>9}   ms")
    for mode, row in report["latency"].items():
        s, t = row["single"], row["stream"]
        print(f"{mode:<17}{s['p50_ms']:>11.2f}{s['p99_ms']:>9.2f}{t['p50_ms']:>12.2f}"
              f"{t['p99_ms']:>9.2f}")
    killed = report.get("killed_local")
    if killed:
        print("killed worker, local backend (pipe EOF):")
        for key in ("kill_to_failure", "kill_to_retry_running", "kill_to_retried_result"):
            k = killed[key]
            print(f"  {key:<24} p50 {k['p50_ms']:8.1f} ms   max {k['max_ms']:8.1f} ms  "
                  f"(n={k['n']})")
    for hb in report.get("heartbeat", []):
        if "skipped" in hb:
            print(f"heartbeat {hb['heartbeat_timeout_s']:g} s: {hb['skipped']}")
            continue
        print(f"killed remote runner, heartbeat_timeout {hb['heartbeat_timeout_s']:g} s "
              f"(beat {hb['heartbeat_interval_s']:g} s, monitor {hb['monitor_interval_s']:g} s):"
              f" p50 {hb['p50_ms'] / 1e3:.2f} s  max {hb['max_ms'] / 1e3:.2f} s (n={hb['n']})")


if __name__ == "__main__":
    sys.exit(main())
