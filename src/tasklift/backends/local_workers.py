"""The local backend's handle on one worker process: starting it (under a leased identity on a
multi-user server: :class:`RunnerIsolation`), its pipes, the messages queued for it and those
read from it, killing it; and how jobs are spread over a pool of them.

The messages are those of :mod:`tasklift.runner.protocol`; the worker is
``python -m tasklift.runner worker`` (:mod:`tasklift.runner.worker`), started by name.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tasklift.backends.command import job_environment, runner_command
from tasklift.backends.identities import IdentityPool, Lease, runner_environment
from tasklift.errors import BackendError
from tasklift.records import JobSpec, WorkSpec
from tasklift.runner.protocol import (
    Archive,
    FromWorker,
    ToWorker,
    decode_from_worker,
    encode,
    split_frames,
)

__all__ = [
    "IDLE_RELEASE_SECONDS",
    "PoolKey",
    "RunnerIsolation",
    "WorkerProcess",
    "assign_jobs",
    "close_fd",
    "kill_group",
    "prefetch_window",
    "start_worker",
    "worker_command",
]

logger = logging.getLogger(__name__)

PoolKey = tuple[str | None, str | None, bool]
"""A pool of workers: (owner on a multi-user server, init_env, runs workflow functions)."""

TARGET_QUEUE_SECONDS = 0.02
LONG_JOB_SECONDS = 0.05
"""How much work (by measured duration) to queue at each worker ahead of time."""


IDLE_RELEASE_SECONDS = 30.0
"""An isolated user's workers that had nothing to do for this long end, and so does the lease
of their identity (at once when another user waits for an identity)."""


@dataclass(frozen=True)
class RunnerIsolation:
    """How a multi-user server isolates job runners.

    Attributes:
        identities: the OS identities leased to users (one user per identity at a time).
        owner_of: the owner of a workflow id (the user whose jobs these are).
        idle_seconds: how long an idle user keeps their workers and identity.
    """

    identities: IdentityPool
    owner_of: Callable[[int], str]
    idle_seconds: float = IDLE_RELEASE_SECONDS


def worker_command(python: str, init_env: str | None) -> list[str]:
    """Return the argv that starts one worker, through ``init_env`` when given.

    ``init_env`` is a command prefix, optionally preceded by set-up commands separated by
    ``;`` (as in iDDS): ``"source setup.sh; apptainer exec base.sif"``.
    """
    return runner_command(python, init_env, ["worker"])


@dataclass
class WorkerProcess:
    """One worker process of the local backend and what the backend knows of it.

    ``inflight`` holds ``(job id, attempt, work id)`` of the jobs handed to it, in the order it
    runs them: the head is running (or about to).
    """

    proc: subprocess.Popen[bytes]
    pool: PoolKey
    write_fd: int
    read_fd: int
    inflight: deque[tuple[int, int, int]] = field(default_factory=deque)
    works_sent: set[int] = field(default_factory=set)
    archives_sent: set[str] = field(default_factory=set)
    outbuf: bytearray = field(default_factory=bytearray)
    inbuf: bytearray = field(default_factory=bytearray)
    head_started: float = 0.0
    head_confirmed: bool = False  # the worker said the head job started (timed works only)
    served: bool = False  # the worker has sent a message: it started, init_env worked
    dead: bool = False

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def head_limit(self, works: Mapping[int, WorkSpec]) -> tuple[float, float] | None:
        """(time limit, monotonic deadline) of the running job, once the worker said it started
        a job of a work with a timeout; else ``None``."""
        if self.dead or not self.inflight or not self.head_confirmed:
            return None
        spec = works.get(self.inflight[0][2])
        if spec is None or spec.timeout is None:
            return None
        return spec.timeout, self.head_started + spec.timeout

    def send_archive(self, work: WorkSpec) -> None:
        """Queue ``work``'s archive itself (an isolated worker cannot read the server's store).

        Raises:
            BackendError: the archive is unreadable.
        """
        if work.archive_sha is None or work.archive_file is None:
            return
        if work.archive_sha in self.archives_sent:
            return
        try:
            data = Path(work.archive_file).read_bytes()
        except OSError as exc:
            raise BackendError(f"cannot read archive {work.archive_sha[:12]}: {exc}") from exc
        self.archives_sent.add(work.archive_sha)
        self.queue(Archive(work.archive_sha, data))

    def queue(self, message: ToWorker) -> None:
        """Queue ``message`` for the worker (:meth:`flush` writes it)."""
        self.outbuf += encode(message)

    def flush(self) -> bool:
        """Write what the pipe takes now; True when some is left for later."""
        if self.dead or not self.outbuf:
            return False
        try:
            written = os.write(self.write_fd, self.outbuf)
        except BlockingIOError:
            written = 0
        except OSError:
            return False  # the read side notices the death
        del self.outbuf[:written]
        return bool(self.outbuf)

    def read(self) -> list[FromWorker] | None:
        """The complete messages the worker has sent; ``None`` when its pipe closed.

        Raises:
            ProtocolError: the worker sent something that is not a message.
        """
        try:
            chunk = os.read(self.read_fd, 1 << 20)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        if not chunk:
            return None
        self.inbuf += chunk
        messages = []
        for body in split_frames(self.inbuf):
            messages.append(decode_from_worker(body))
            self.served = True
        return messages

    def kill(self) -> None:
        """Kill the worker's process group and wait for it; close its pipes."""
        kill_group(self.proc)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            logger.warning("worker pid %d did not die after SIGKILL", self.proc.pid)
        self.close_pipes()

    def close_pipes(self) -> None:
        """Close both ends the backend holds."""
        close_fd(self.write_fd)
        close_fd(self.read_fd)

    def exit_status(self) -> str:
        """How the process ended, for a message (waits a second for it to be reaped)."""
        code = self.proc.poll()
        if code is None:
            try:
                code = self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                code = None
        if code is not None and code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"


def prefetch_window(kind: str, duration: float | None) -> int:
    """How many jobs of a work to queue at one worker, by their measured ``duration``."""
    if kind == "workflow":
        return 1
    if duration is None:
        return 2
    if duration >= LONG_JOB_SECONDS:
        # a job queued behind a long one would wait for it while another worker idles;
        # at this length, handing jobs over one at a time costs under 1 %
        return 1
    return max(2, min(512, math.ceil(TARGET_QUEUE_SECONDS / max(duration, 1e-6))))


def assign_jobs(
    pool: Sequence[WorkerProcess], work_id: int, jobs: Sequence[JobSpec], window: int
) -> tuple[dict[int, list[JobSpec]], list[str]]:
    """Hand ``jobs`` to the live workers of ``pool``: the emptiest first, round-robin beyond
    ``window`` jobs each. Returns the jobs per worker pid and one handle per job."""
    assigned: dict[int, list[JobSpec]] = {}
    handles = []
    now = time.monotonic()
    order = sorted(pool, key=lambda w: len(w.inflight))
    i = 0
    for job in jobs:
        worker = order[i % len(order)]
        if len(worker.inflight) >= window:
            order.sort(key=lambda w: len(w.inflight))
            i = 0
            worker = order[0]
        i += 1
        if not worker.inflight:
            worker.head_started = now
        worker.inflight.append((job.job_id, job.attempt, work_id))
        assigned.setdefault(worker.pid, []).append(job)
        handles.append(f"local:{worker.pid}:{job.job_id}")
    return assigned, handles


def start_worker(python: str, pool: PoolKey, lease: Lease | None) -> WorkerProcess:
    """Start one worker of ``pool`` (as ``lease``'s identity when given), pipes non-blocking.

    Raises:
        BackendError: the process could not start.
    """
    argv = worker_command(python, pool[1])
    try:
        if lease is None:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
                env=job_environment(),  # never the server's secrets
            )
        else:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
                user=lease.identity.uid,
                group=lease.identity.gid,
                extra_groups=[],
                umask=0o077,
                cwd=lease.home,
                env=runner_environment(lease, python),  # nothing of the server's
            )
    except OSError as exc:
        raise BackendError(f"cannot start a local worker ({argv[0]}): {exc}") from exc
    assert proc.stdin is not None and proc.stdout is not None
    write_fd = os.dup(proc.stdin.fileno())
    read_fd = os.dup(proc.stdout.fileno())
    proc.stdin.close()
    proc.stdout.close()
    os.set_blocking(write_fd, False)
    os.set_blocking(read_fd, False)
    logger.debug("started local worker pid %d (%s)", proc.pid, pool[1] or "no init_env")
    return WorkerProcess(proc=proc, pool=pool, write_fd=write_fd, read_fd=read_fd)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group ``proc`` leads (the process alone if that is refused)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def close_fd(fd: int) -> None:
    """Close ``fd``, already closed or not."""
    with contextlib.suppress(OSError):
        os.close(fd)
