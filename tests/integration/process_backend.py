"""A test-only remote backend: one detached ``python -m tasklift.runner job`` process per job.

Not a fake: its runners are real remote job runners talking to the engine's job API over HTTP,
like Slurm array elements, without a batch system. Handles are ``proc:<pid>:<index>:<dir>``
and outlive the engine (the processes run on when the engine stops).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from tasklift.backends.base import Backend, OutcomeSink
from tasklift.records import JobSpec, WorkSpec
from tasklift.runner.batch import write_batch
from tasklift.states import JobState


class ProcessBackend(Backend):
    """Starts each job as its own runner process (test helper)."""

    name: ClassVar[str] = "process"
    handles_outlive_engine: ClassVar[bool] = True
    runs_remotely: ClassVar[bool] = True

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.spool = self.home / "batches"
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.argv: list[list[str]] = []

    def start(self, sink: OutcomeSink) -> None:
        self.spool.mkdir(parents=True, exist_ok=True)

    def submit(self, work: WorkSpec, jobs: Sequence[JobSpec]) -> list[str]:
        assert work.service_url, "the engine gives remote backends the job API's URL"
        batch = Path(tempfile.mkdtemp(prefix=f"w{work.work_id}-", dir=self.spool))
        write_batch(batch, work.service_url, jobs)
        env = dict(os.environ, TASKLIFT_HOME=str(self.home))
        handles = []
        for index in range(len(jobs)):
            argv = [sys.executable, "-m", "tasklift.runner", "job", "--batch-dir", str(batch),
                    "--index", str(index)]
            log = open(batch / f"{index}.log", "wb")  # noqa: SIM115 - the child keeps it
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            log.close()
            self.procs[proc.pid] = proc
            self.argv.append(argv)
            handles.append(f"proc:{proc.pid}:{index}:{batch}")
        return handles

    def poll(self, handles: Sequence[str]) -> dict[str, JobState]:
        states = {}
        for handle in handles:
            pid = int(handle.split(":")[1])
            proc = self.procs.get(pid)
            if proc is None:  # started by an earlier engine: is it still there?
                states[handle] = JobState.RUNNING if _alive(pid) else JobState.FINISHED
                continue
            code = proc.poll()
            if code is None:
                states[handle] = JobState.RUNNING
            elif code < 0:
                states[handle] = JobState.LOST
            else:
                states[handle] = JobState.FINISHED if code == 0 else JobState.FAILED
        return states

    def lost_reason(self, handle: str) -> str | None:
        pid = int(handle.split(":")[1])
        proc = self.procs.get(pid)
        if proc is not None and proc.returncode is not None and proc.returncode < 0:
            return f"runner process {pid} killed by {signal.Signals(-proc.returncode).name}"
        return None

    def cancel(self, handles: Sequence[str]) -> None:
        for handle in handles:
            pid = int(handle.split(":")[1])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def close(self) -> None:
        """Reap the runners (they outlive the engine, not the test)."""
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _status(pid)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return ""
