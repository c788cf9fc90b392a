"""A real Dask cluster for tests: ``dask scheduler`` and ``dask worker`` subprocesses.

The scheduler listens on a free loopback port without a dashboard; each worker is
``dask worker --nworkers 1 --nthreads 1`` (a nanny and its worker process), started from the
test venv. Without dask installed the tests skip, except in CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT = 60.0


def require_dask() -> None:
    """Skip (or fail in CI) when dask.distributed is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        message = f"dask.distributed is not installed ({exc}): pip install -e '.[dask]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dask_cli(command: str) -> list[str]:
    script = Path(sys.executable).with_name("dask")
    if script.exists():
        return [str(script), command]
    return [sys.executable, "-m", f"distributed.cli.dask_{command}"]


@dataclass
class DaskCluster:
    """Processes of a hand-started cluster and how to reach it."""

    address: str
    directory: Path
    env: dict[str, str]
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 - kept by the process
        proc = subprocess.Popen(
            [
                *_dask_cli("worker"),
                self.address,
                "--nworkers",
                "1",
                "--nthreads",
                "1",
                "--name",
                name,
                "--no-dashboard",
                "--local-directory",
                str(self.directory / name),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.directory,
            start_new_session=True,
        )
        log.close()
        self.workers.append(proc)
        return proc

    def worker_pids(self) -> dict[str, int]:
        """``{worker address: pid of its worker process}`` (not the nanny's)."""
        from distributed import Client

        with Client(self.address, timeout=20, set_as_default=False) as client:
            return client.run(os.getpid)

    def wait_for_workers(self, n: int, timeout: float = START_TIMEOUT) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout, set_as_default=False) as client:
            try:
                client.wait_for_workers(n, timeout=timeout)
            except TimeoutError as exc:
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text()[-1500:]}" for p in self.directory.glob("*.log")
                )
                raise RuntimeError(
                    f"{n} Dask workers did not start in {timeout} s\n{logs}"
                ) from exc

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@contextlib.contextmanager
def dask_cluster(
    directory: Path, n_workers: int = 2, env: Mapping[str, str] | None = None
) -> Iterator[DaskCluster]:
    """Start a scheduler and ``n_workers`` workers; stop them all afterwards."""
    require_dask()
    directory.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    full_env.pop("DASK_SCHEDULER_ADDRESS", None)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(directory / "scheduler.log", "ab")  # noqa: SIM115 - kept by the process
    scheduler = subprocess.Popen(
        [
            *_dask_cli("scheduler"),
            *("--host", "127.0.0.1", "--port", str(port)),
            *("--no-dashboard", "--dashboard-address", "127.0.0.1:0"),  # HTTP on a free port
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=directory,
        start_new_session=True,
    )
    log.close()
    cluster = DaskCluster(address, directory, full_env, scheduler)
    try:
        for i in range(n_workers):
            cluster.start_worker(f"w{i}")
        cluster.wait_for_workers(n_workers)
        yield cluster
    finally:
        cluster.stop()
