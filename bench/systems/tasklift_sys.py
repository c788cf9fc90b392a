"""tasklift, embedded (``service="local"``), local backend with ``TASKLIFT_WORKERS=2``.

Everything timed runs inside ONE workflow function, as a user's steering loop would: start-up
(packing the source, registering the workflow, starting the engine and its 2 worker
processes) is measured separately, from ``Workflow(...).run()`` until the first warm-up work
returned. Each workload is then timed with ``time.perf_counter`` inside the workflow function by
the same code that times the peers (:class:`bench.systems.base.BenchSystem`).

Every job is persisted as usual (default durability, memoisation on). To keep memoisation from
turning repeats into cache hits, every job gets distinct kwargs (a ``tag``) and every bench run a
fresh ``TASKLIFT_HOME``: nothing is ever reused, so nothing is faked.

W5 (one work of 1,000,000 no-op jobs) and W6 (W1 and W3 through ``tasklift server``) are
tasklift-only and run only when asked for by name (``--workloads w5`` / system
``tasklift-server``).
"""

from __future__ import annotations

import itertools
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.systems import tasks
from bench.systems.base import WORKERS, BenchSystem, Unavailable

try:
    from tasklift import Workflow, work
except Exception as exc:  # the core may not import while it is being written
    raise Unavailable(f"tasklift does not import: {exc!r}") from exc

ROOT = Path(__file__).resolve().parents[2]
"""Repository root: the workflow's source directory, so ``bench.systems.*`` imports in jobs."""

_tags = itertools.count()


@work
def tl_noop(x, tag=0):
    """``tasks.noop`` as a tasklift work (``tag`` only makes kwargs unique)."""
    return tasks.noop(x)


@work
def tl_sleep(seconds, tag=0):
    """``tasks.sleep`` as a tasklift work (``tag`` only makes kwargs unique)."""
    return tasks.sleep(seconds)


_WORKS = {tasks.noop: (tl_noop, "x"), tasks.sleep: (tl_sleep, "seconds")}


class TaskliftSystem(BenchSystem):
    """One map is one work: ``f(group_kwargs=[...])``; one call is ``f(x=...)``."""

    name = "tasklift"
    label = "tasklift (embedded, local backend)"
    packages = ("tasklift",)
    service = "local"

    def __init__(self) -> None:
        self._home = tempfile.TemporaryDirectory(prefix="bench-tasklift-")
        os.environ["TASKLIFT_HOME"] = self._home.name
        os.environ["TASKLIFT_WORKERS"] = str(WORKERS)
        os.environ.setdefault("TASKLIFT_QUIET", "1")
        self._t0 = 0.0
        self._startup = None

    # --- primitives, valid only inside the running workflow --------------------------------
    def map(self, fn, args: list[Any]) -> list[Any]:
        """One work of ``len(args)`` jobs."""
        w, kw = _WORKS[fn]
        tag = next(_tags)
        out = w(group_kwargs=[{kw: a, "tag": f"{tag}.{i}"} for i, a in enumerate(args)])
        return list(out)

    def call(self, fn, arg: Any) -> Any:
        """One work of one job."""
        w, kw = _WORKS[fn]
        return w(**{kw: arg, "tag": next(_tags)})

    def warmup(self) -> None:
        """First work (ends the start-up clock), then the common warm-up."""
        self.map(tasks.noop, [0, 1])
        if self._startup is None:
            self._startup = time.perf_counter() - self._t0
        super().warmup()

    # --- W5 hook ---------------------------------------------------------------------------
    def w5(self, n: int = 1_000_000) -> dict[str, float]:
        """W5: one work of ``n`` no-op jobs, all times from the call: ``submit`` (the call
        returns with the first chunk stored and running), ``first result``, ``create`` (every
        job stored: ``Work.wait_stored``), total wall; and the peak RSS of this process, where
        the embedded engine lives (it includes the caller's own list of ``n`` kwargs dicts)."""
        kwargs = [{"x": i, "tag": f"w5.{i}"} for i in range(n)]
        t0 = time.perf_counter()
        handle = tl_noop(group_kwargs=kwargs, return_work=True)
        metrics = {"w5_submit_s": time.perf_counter() - t0}
        next(iter(handle.as_completed()))
        metrics["w5_first_result_s"] = time.perf_counter() - t0
        if not handle.wait_stored(timeout=600):
            raise AssertionError("w5: the work was not stored within 600 s")
        metrics["w5_create_s"] = time.perf_counter() - t0
        out = handle.results()
        metrics["w5_wall_s"] = time.perf_counter() - t0
        if len(out) != n or out[0] != 1 or out[-1] != n:
            raise AssertionError("w5: wrong results")
        metrics["w5_jobs_per_s"] = n / metrics["w5_wall_s"]
        metrics["w5_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return metrics

    # --- driver ----------------------------------------------------------------------------
    def _workflow(self, workloads: list[str]) -> dict[str, float]:
        return self.run_workloads(workloads)

    def run(self, workloads) -> dict[str, float]:
        """Run the whole benchmark as one workflow; start-up ends at the first work's result."""
        workloads = list(workloads)
        self._t0 = time.perf_counter()
        wf = Workflow(
            func=_bench_workflow,
            service=self.service,
            name="tasklift-bench",
            source_dir=ROOT,
            exclude=("src/", "tests/", "examples/", "docs/", ".ci/", "*.json"),
        )
        _CURRENT[0] = self
        try:
            metrics = wf.run(workloads)
        finally:
            _CURRENT[0] = None
        t1 = time.perf_counter()
        self.close()
        return {"startup_s": self._startup, **metrics, "close_s": time.perf_counter() - t1}

    def close(self) -> None:
        """Stop the embedded engine and drop the temporary home."""
        try:
            from tasklift import shutdown
        except ImportError:
            pass
        else:
            shutdown()
        self._home.cleanup()


class _BenchServer:
    """A `tasklift server` of its own for W6: a fresh PostgreSQL database on 127.0.0.1:5432,
    the STOMP bus on RabbitMQ at 127.0.0.1:61613, 2 workers, a free port; removed afterwards."""

    PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
    STOMP = "stomp://guest:guest@127.0.0.1:61613"

    def __init__(self, home: Path) -> None:
        import socket
        import subprocess
        import sys

        import httpx
        import sqlalchemy as sa

        from tasklift.db.session import create_db_engine, upgrade
        from tasklift.service.auth import Authenticator
        from tasklift.settings import Settings

        self.name = f"tasklift_bench_{uuid.uuid4().hex[:10]}"
        self._admin = sa.create_engine(f"{self.PG}/postgres", isolation_level="AUTOCOMMIT")
        try:
            with self._admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        except sa.exc.OperationalError as exc:
            raise Unavailable(f"W6 needs PostgreSQL at 127.0.0.1:5432: {exc}") from exc
        db_url = f"{self.PG}/{self.name}"
        db = create_db_engine(db_url)
        upgrade(db)
        settings = Settings(home=home / "server", db_url=db_url, quiet=True)
        _, token = Authenticator(db=db, settings=settings).create_token(user="bench")
        db.dispose()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, TASKLIFT_HOME=str(home / "server"), TASKLIFT_WORKERS=str(WORKERS))
        # the bus URL carries a password: never on the command line (the server refuses it)
        env["TASKLIFT_BUS"] = f"{self.STOMP}/tl-bench-{self.name[-10:]}"
        env.pop("TASKLIFT_TOKEN", None)
        self._log = open(home / "server.log", "wb")  # noqa: SIM115 - kept by the server
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tasklift.cli", "server", "--db", db_url, "--port", str(port),
             "--log-level", "warning",
             "--no-runner-isolation"],  # a server only the bench uses (it may run as root)
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            if self._proc.poll() is not None:
                self.stop()
                tail = (home / "server.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise Unavailable(f"tasklift server exited early: {' / '.join(tail)}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise Unavailable("tasklift server did not answer /health within 60 s")
            time.sleep(0.1)
        os.environ["TASKLIFT_TOKEN"] = token  # the client's credential for this server

    def stop(self) -> None:
        import subprocess

        import sqlalchemy as sa

        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._log.close()
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()


class TaskliftServerSystem(TaskliftSystem):
    """W6: W1 and W3 through ``tasklift server`` with PostgreSQL and the STOMP bus: one started
    for the run, or the one at ``TASKLIFT_BENCH_SERVICE`` (with ``TASKLIFT_TOKEN``).

    The server's database outlives a bench run: every run tags its jobs with a prefix of its
    own, so no repeat is served from the memo of an earlier one.
    """

    name = "tasklift-server"
    label = "tasklift (server, PostgreSQL, STOMP)"

    def __init__(self) -> None:
        super().__init__()
        self._server: _BenchServer | None = None
        url = os.environ.get("TASKLIFT_BENCH_SERVICE")
        if not url:  # start our own: PostgreSQL database, STOMP bus, 2 workers
            self._server = _BenchServer(Path(self._home.name))
            url = self._server.url
        self.service = url
        self._run = uuid.uuid4().hex[:12]

    def close(self) -> None:
        """Stop the server this run started (and drop its database)."""
        super().close()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def map(self, fn, args: list[Any]) -> list[Any]:
        """One work of ``len(args)`` jobs (tags unique to this run)."""
        w, kw = _WORKS[fn]
        tag = f"{self._run}.{next(_tags)}"
        return list(w(group_kwargs=[{kw: a, "tag": f"{tag}.{i}"} for i, a in enumerate(args)]))

    def call(self, fn, arg: Any) -> Any:
        """One work of one job (tag unique to this run)."""
        w, kw = _WORKS[fn]
        return w(**{kw: arg, "tag": f"{self._run}.{next(_tags)}"})


_CURRENT: list[TaskliftSystem | None] = [None]


def _bench_workflow(workloads: list[str]) -> dict[str, float]:
    """The workflow function: everything timed happens in here."""
    system = _CURRENT[0]
    if system is None:
        raise RuntimeError("_bench_workflow runs only from TaskliftSystem.run")
    return system._workflow(workloads)
