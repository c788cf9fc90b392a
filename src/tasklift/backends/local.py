"""The ``local`` backend: persistent worker processes on this machine, fed over pipes.

URL format: ``local`` (``TASKLIFT_WORKERS`` workers, default: number of cores).
Supports: batches, adaptive prefetch, per-job timeouts (the worker is killed and replaced),
worker death (the running job is retried, queued ones are requeued), ``init_env`` (a pool of
workers started through the prefix), cancel.

On a multi-user server (``isolation=``) each tasklift user's workers run under an OS identity
leased to that user alone (:mod:`tasklift.backends.identities`), with a private home, an
environment of their own and the archive handed over the pipe: a job cannot read the server's
files, another user's archives, or share a process with another user's jobs. Whatever a worker
sends back is checked: only outcomes of jobs that worker was given, unpickled without code.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tasklift.backends.base import Backend, OutcomeSink
from tasklift.backends.command import job_environment, runner_command
from tasklift.backends.identities import IdentityPool, Lease, runner_environment
from tasklift.errors import BackendError
from tasklift.framing import HEADER, MAX_WORKER_FRAME, encode_frame, loads_outcomes
from tasklift.records import JobSpec, Outcome, WorkSpec
from tasklift.states import JobState

__all__ = ["LocalBackend", "RunnerIsolation", "worker_command"]

logger = logging.getLogger(__name__)

MAX_RUNNERS = 64
"""Most workflow functions (remote workflows) running at once, each in its own worker."""

TARGET_QUEUE_SECONDS = 0.02
LONG_JOB_SECONDS = 0.05
"""How much work (by measured duration) to queue at each worker ahead of time."""


IDLE_RELEASE_SECONDS = 30.0
"""An isolated user's workers that had nothing to do for this long end, and so does the lease
of their identity (at once when another user waits for an identity)."""

_PoolKey = tuple[str | None, str | None, bool]  # (owner, init_env, runs workflow functions)


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
class _Worker:
    proc: subprocess.Popen[bytes]
    env_key: _PoolKey
    write_fd: int
    read_fd: int
    inflight: deque[tuple[int, int, int]] = field(default_factory=deque)  # job, attempt, work
    works_sent: set[int] = field(default_factory=set)
    archives_sent: set[str] = field(default_factory=set)
    outbuf: bytearray = field(default_factory=bytearray)
    inbuf: bytearray = field(default_factory=bytearray)
    head_started: float = 0.0
    head_confirmed: bool = False  # the worker said the head job started (timed works only)
    served: bool = False  # the worker has sent a message: it started, init_env worked
    dead: bool = False


class LocalBackend(Backend):
    """Runs jobs in persistent worker processes on this machine."""

    name: ClassVar[str] = "local"
    handles_outlive_engine: ClassVar[bool] = False  # workers end with their engine

    def __init__(
        self,
        *,
        workers: int | None = None,
        python: str | None = None,
        isolation: RunnerIsolation | None = None,
    ) -> None:
        self.n_workers = workers or os.cpu_count() or 1
        self.python = python or sys.executable
        self.isolation = isolation
        self._sink: OutcomeSink | None = None
        self._lock = threading.RLock()
        self._pools: dict[_PoolKey, list[_Worker]] = {}
        self._last_busy: dict[str, float] = {}  # isolated owner -> last time it had work
        self._waiting: set[str] = set()  # isolated owners waiting for an identity
        self._by_fd: dict[int, _Worker] = {}
        self._works: dict[int, WorkSpec] = {}
        self._durations: dict[int, float] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._closing = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, sink: OutcomeSink) -> None:
        """Start the I/O thread and the default pool of workers."""
        self._sink = sink
        if self.isolation is None:  # isolated pools start when their user's first work comes
            with self._lock:
                self._pool((None, None, False))
        self._thread = threading.Thread(target=self._io_loop, name="tasklift-local-io", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop all workers (closing their stdin, then killing stragglers)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            workers = [w for pool in self._pools.values() for w in pool]
        self._wakeup()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for worker in workers:
            _close_fd(worker.write_fd)
        deadline = time.monotonic() + 2
        for worker in workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(worker.proc)
                worker.proc.wait(timeout=5)
            _close_fd(worker.read_fd)
        if self.isolation is not None:
            self.isolation.identities.close()
        self._selector.close()
        _close_fd(self._wake_r)
        _close_fd(self._wake_w)

    # ------------------------------------------------------------------ interface
    def free_slots(self, work: WorkSpec) -> int:
        """Jobs of ``work`` that fit in the workers' prefetch windows right now."""
        with self._lock:
            if self._closing:
                return 0
            if self.isolation is not None and self._lease_for(work) is None:
                return 0  # every identity is leased to other users: wait for one
            pool = self._pool_for(work)
            window = self._window(work)
            free = sum(max(0, window - len(w.inflight)) for w in pool if not w.dead)
            if work.kind == "workflow":
                free += max(0, MAX_RUNNERS - len(pool))  # runner workers start on demand
            else:  # workers that died before they served are replaced on demand
                free += window * max(0, self.n_workers - len(pool))
            return free

    def submit(self, work: WorkSpec, jobs: Sequence[JobSpec]) -> list[str]:
        """Queue ``jobs`` at the least busy workers of ``work``'s pool."""
        if not jobs:
            return []
        with self._lock:
            if self._closing:
                raise BackendError("local backend is closed")
            self._works[work.work_id] = work
            key = self._pool_key(work)
            if self.isolation is not None and self._lease_for(work) is None:
                raise BackendError("no runner identity is free for this work's user")
            if work.kind == "workflow":
                # a workflow function waits for its own works: give it a worker of its own,
                # never a queue shared with the jobs it waits for
                pool = self._pool_for(work)
                idle = sum(1 for w in pool if not w.dead and not w.inflight)
                for _ in range(max(0, len(jobs) - idle)):
                    pool.append(self._spawn(key))
            else:
                pool = self._pool_for(work)
                for _ in range(max(0, self.n_workers - len(pool))):
                    pool.append(self._spawn(key))
            pool = [w for w in self._pool_for(work) if not w.dead]
            if not pool:
                raise BackendError("local backend has no live workers")
            window = self._window(work)
            assigned: dict[int, list[JobSpec]] = {}
            handles = []
            now = time.monotonic()
            order = sorted(pool, key=lambda w: len(w.inflight))
            i = 0
            for job in jobs:
                # fill the emptiest workers first, round-robin beyond the window
                worker = order[i % len(order)]
                if len(worker.inflight) >= window:
                    order.sort(key=lambda w: len(w.inflight))
                    i = 0
                    worker = order[0]
                i += 1
                if not worker.inflight:
                    worker.head_started = now
                worker.inflight.append((job.job_id, job.attempt, work.work_id))
                assigned.setdefault(worker.proc.pid, []).append(job)
                handles.append(f"local:{worker.proc.pid}:{job.job_id}")
            for worker in pool:
                batch = assigned.get(worker.proc.pid)
                if not batch:
                    continue
                if work.work_id not in worker.works_sent:
                    worker.works_sent.add(work.work_id)
                    self._send_archive(worker, work)
                    self._queue_frame(worker, ("work", work))
                self._queue_frame(worker, ("jobs", work.work_id, batch))
                self._flush(worker)
        return handles

    def poll(self, handles: Sequence[str]) -> dict[str, JobState]:
        """Report RUNNING for a worker's head job, QUEUED behind it, LOST when unknown."""
        with self._lock:
            where: dict[int, JobState] = {}
            for pool in self._pools.values():
                for worker in pool:
                    for position, (job_id, _, _) in enumerate(worker.inflight):
                        where[job_id] = JobState.RUNNING if position == 0 else JobState.QUEUED
        return {h: where.get(int(h.rsplit(":", 1)[1]), JobState.LOST) for h in handles}

    def cancel(self, handles: Sequence[str]) -> None:
        """Drop queued jobs at their workers; kill the worker of a running one."""
        ids = {int(h.rsplit(":", 1)[1]) for h in handles}
        to_kill = []
        with self._lock:
            for pool in self._pools.values():
                for worker in pool:
                    hit = [entry for entry in worker.inflight if entry[0] in ids]
                    if not hit:
                        continue
                    if worker.inflight[0][0] in ids:
                        to_kill.append(worker)
                    worker.inflight = deque(e for e in worker.inflight if e[0] not in ids)
                    self._queue_frame(worker, ("cancel", [e[0] for e in hit]))
                    self._flush(worker)
        for worker in to_kill:
            self._replace(worker, reason=None)

    # ------------------------------------------------------------------ internals
    def _window(self, work: WorkSpec) -> int:
        if work.kind == "workflow":
            return 1
        duration = self._durations.get(work.work_id)
        if duration is None:
            return 2
        if duration >= LONG_JOB_SECONDS:
            # a job queued behind a long one would wait for it while another worker idles;
            # at this length, handing jobs over one at a time costs under 1 %
            return 1
        return max(2, min(512, math.ceil(TARGET_QUEUE_SECONDS / max(duration, 1e-6))))

    def _pool_key(self, work: WorkSpec) -> _PoolKey:
        env = work.init_env.strip() if work.init_env and work.init_env.strip() else None
        owner = None if self.isolation is None else self.isolation.owner_of(work.workflow_id)
        return owner, env, work.kind == "workflow"

    def _pool_for(self, work: WorkSpec) -> list[_Worker]:
        return self._pool(self._pool_key(work))

    def _pool(self, key: _PoolKey) -> list[_Worker]:
        pool = self._pools.get(key)
        if pool is None:
            runners = key[2]
            pool = [] if runners else [self._spawn(key) for _ in range(self.n_workers)]
            self._pools[key] = pool
        if key[0] is not None:
            self._last_busy[key[0]] = time.monotonic()
        return pool

    def _lease_for(self, work: WorkSpec) -> Lease | None:
        """The identity lease of ``work``'s owner; frees an idle one when all are taken."""
        assert self.isolation is not None
        owner = self.isolation.owner_of(work.workflow_id)
        lease = self.isolation.identities.lease(owner)
        if lease is None:
            self._waiting.add(owner)
            self._wakeup()  # the I/O thread ends an idle lease for it
            return None
        self._waiting.discard(owner)
        self._last_busy[owner] = time.monotonic()
        return lease

    def _send_archive(self, worker: _Worker, work: WorkSpec) -> None:
        """Hand an isolated worker the archive itself: it cannot read the server's store."""
        if self.isolation is None or work.archive_sha is None or work.archive_file is None:
            return
        if work.archive_sha in worker.archives_sent:
            return
        try:
            data = Path(work.archive_file).read_bytes()
        except OSError as exc:
            raise BackendError(f"cannot read archive {work.archive_sha[:12]}: {exc}") from exc
        worker.archives_sent.add(work.archive_sha)
        self._queue_frame(worker, ("archive", work.archive_sha, data))

    def _spawn(self, env_key: _PoolKey) -> _Worker:
        argv = worker_command(self.python, env_key[1])
        lease = None
        if self.isolation is not None:
            assert env_key[0] is not None
            lease = self.isolation.identities.lease(env_key[0])
            if lease is None:
                raise BackendError(f"no runner identity is free for user {env_key[0]}")
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
                    env=runner_environment(lease, self.python),  # nothing of the server's
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
        worker = _Worker(proc=proc, env_key=env_key, write_fd=write_fd, read_fd=read_fd)
        self._by_fd[read_fd] = worker
        self._selector.register(read_fd, selectors.EVENT_READ, worker)
        self._wakeup()
        logger.debug("started local worker pid %d (%s)", proc.pid, env_key[1] or "no init_env")
        return worker

    def _queue_frame(self, worker: _Worker, message: object) -> None:
        worker.outbuf += encode_frame(message)

    def _flush(self, worker: _Worker) -> None:
        if worker.dead or not worker.outbuf:
            return
        try:
            written = os.write(worker.write_fd, worker.outbuf)
        except BlockingIOError:
            written = 0
        except (BrokenPipeError, OSError):
            return  # the read side notices the death
        del worker.outbuf[:written]
        if worker.outbuf:
            self._wakeup()  # the I/O thread finishes the write when the pipe drains

    def _wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def _io_loop(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                timeout = self._next_deadline()
                if self.isolation is not None:
                    timeout = 1.0 if timeout is None else min(timeout, 1.0)
                writers = [w for pool in self._pools.values() for w in pool if w.outbuf]
            for worker in writers:
                with self._lock:
                    self._flush(worker)
            events = self._selector.select(timeout)
            for key, _ in events:
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 65536)
                    continue
                self._read(key.data)
            self._check_timeouts()
            if self.isolation is not None:
                self._release_idle()

    def _read(self, worker: _Worker) -> None:
        try:
            chunk = os.read(worker.read_fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._on_death(worker)
            return
        worker.inbuf += chunk
        outcomes: list[Outcome] = []
        while len(worker.inbuf) >= HEADER.size:
            (size,) = HEADER.unpack_from(worker.inbuf)
            if size > MAX_WORKER_FRAME:
                self._protocol_violation(worker, f"a frame of {size} bytes")
                return
            if len(worker.inbuf) < HEADER.size + size:
                break
            try:
                message = loads_outcomes(worker.inbuf[HEADER.size : HEADER.size + size])
            except (pickle.UnpicklingError, ValueError, EOFError, TypeError) as exc:
                self._protocol_violation(worker, f"an unreadable frame ({exc})")
                return
            del worker.inbuf[: HEADER.size + size]
            worker.served = True
            if not isinstance(message, tuple) or not message:
                self._protocol_violation(worker, "a frame that is not a message")
                return
            if message[0] == "done" and isinstance(message[1], list):
                outcomes.extend(o for o in message[1] if isinstance(o, Outcome))
            elif message[0] == "started":
                with self._lock:
                    if worker.inflight and worker.inflight[0][:2] == message[1:3]:
                        worker.head_started = time.monotonic()
                        worker.head_confirmed = True
        if not outcomes:
            return
        now = time.monotonic()
        with self._lock:
            # a worker reports only the jobs it was given: anything else is dropped, so a job
            # cannot write another job's (another user's) result through its worker's pipe
            given = {(e[0], e[1]) for e in worker.inflight}
            forged = [o for o in outcomes if (o.job_id, o.attempt) not in given]
            if forged:
                logger.warning(
                    "worker pid %d reported %d job(s) it was not running (e.g. job %s): dropped",
                    worker.proc.pid,
                    len(forged),
                    forged[0].job_id,
                )
                outcomes = [o for o in outcomes if (o.job_id, o.attempt) in given]
            done = {(o.job_id, o.attempt) for o in outcomes}
            work_of = {e[0]: e[2] for e in worker.inflight}
            worker.inflight = deque(e for e in worker.inflight if (e[0], e[1]) not in done)
            worker.head_started = now
            worker.head_confirmed = False
            for outcome in outcomes:
                work_id = work_of.get(outcome.job_id)
                if work_id is not None and outcome.started_at and outcome.finished_at:
                    self._learn(work_id, outcome.finished_at - outcome.started_at)
        if not outcomes:
            return
        assert self._sink is not None
        # record_outcomes dispatches into the room these outcomes freed, before it publishes
        # them: nothing is left for this thread to do when the waiting caller wakes up
        self._sink.record_outcomes(outcomes)

    def _protocol_violation(self, worker: _Worker, what: str) -> None:
        logger.warning("worker pid %d sent %s: replaced", worker.proc.pid, what)
        self._replace(
            worker,
            reason=("WorkerLost", f"the job's worker process sent {what} and was killed"),
        )

    def _release_idle(self) -> None:
        """End the workers and identity lease of users with nothing to do (I/O thread)."""
        assert self.isolation is not None
        now = time.monotonic()
        ending: list[tuple[str, list[_Worker]]] = []
        with self._lock:
            if self._closing:
                return
            for owner, lease in self.isolation.identities.leased().items():
                keys = [k for k in self._pools if k[0] == owner]
                if any(w.inflight for k in keys for w in self._pools[k]):
                    self._last_busy[owner] = now
                    continue
                idle = now - self._last_busy.get(owner, 0.0)
                limit = 0.5 if self._waiting - {owner} else self.isolation.idle_seconds
                if idle < limit:
                    continue
                workers = [w for k in keys for w in self._pools.pop(k)]
                for worker in workers:
                    worker.dead = True
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.unregister(worker.read_fd)
                    self._by_fd.pop(worker.read_fd, None)
                self._last_busy.pop(owner, None)
                ending.append((lease.user, workers))
        for owner, workers in ending:
            for worker in workers:
                _close_fd(worker.write_fd)
                _close_fd(worker.read_fd)
            lease = self.isolation.identities.detach(owner)  # the owner's next work: a new one
            threading.Thread(
                target=self._end_lease, args=(lease, workers), name="tasklift-lease-end"
            ).start()

    def _end_lease(self, lease: Lease | None, workers: list[_Worker]) -> None:
        """Let the workers exit, kill what they left behind (daemons a job started, too),
        free the identity, and tell the engine a waiting user may now get it."""
        assert self.isolation is not None
        deadline = time.monotonic() + 2
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        if lease is not None:
            self.isolation.identities.recycle(lease)
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=5)
        if self._waiting and self._sink is not None and not self._closing:
            self._sink.capacity_changed()

    def _learn(self, work_id: int, duration: float) -> None:
        old = self._durations.get(work_id)
        self._durations[work_id] = duration if old is None else 0.7 * old + 0.3 * duration

    def _next_deadline(self) -> float | None:
        deadline = None
        now = time.monotonic()
        for pool in self._pools.values():
            for worker in pool:
                if not worker.inflight:
                    continue
                spec = self._works.get(worker.inflight[0][2])
                if spec is None or spec.timeout is None or not worker.head_confirmed:
                    continue
                remaining = worker.head_started + spec.timeout - now
                deadline = remaining if deadline is None else min(deadline, remaining)
        if deadline is None:
            return None
        return max(0.0, deadline)

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        expired = []
        with self._lock:
            for pool in self._pools.values():
                for worker in pool:
                    if not worker.inflight or worker.dead:
                        continue
                    spec = self._works.get(worker.inflight[0][2])
                    if (
                        spec
                        and spec.timeout is not None
                        and worker.head_confirmed
                        and now - worker.head_started > spec.timeout
                    ):
                        expired.append((worker, spec.timeout))
        for worker, timeout in expired:
            self._replace(
                worker,
                reason=("Timeout", f"job exceeded its timeout of {timeout:g} s and was killed"),
            )

    def _on_death(self, worker: _Worker) -> None:
        code = worker.proc.poll()
        if code is None:
            try:
                code = worker.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                code = None
        if code is not None and code < 0:
            how = f"killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        if worker.served:
            message = f"worker process {how} while running the job"
        elif worker.env_key[1]:
            message = (
                f"worker process {how} before it started: check the work's init_env "
                f"{worker.env_key[1]!r} (its output is in the engine's stderr)"
            )
        else:
            message = f"worker process {how} before it started"
        self._replace(worker, reason=("WorkerLost", message))

    def _replace(self, worker: _Worker, reason: tuple[str, str] | None) -> None:
        """Kill ``worker``, report its running job, requeue the rest, start a new one."""
        with self._lock:
            if worker.dead:
                return
            worker.dead = True
            inflight = list(worker.inflight)
            worker.inflight.clear()
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.read_fd)
            self._by_fd.pop(worker.read_fd, None)
            pool = self._pools.get(worker.env_key, [])
            if worker in pool:
                pool.remove(worker)
            # a worker that never served (init_env or the interpreter fails at start) is
            # replaced on demand by the next submit, never in a loop here; runner pools refill
            # on demand too
            if not self._closing and not worker.env_key[2] and worker.served:
                pool.append(self._spawn(worker.env_key))
        _kill(worker.proc)
        try:
            worker.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            logger.warning("worker pid %d did not die after SIGKILL", worker.proc.pid)
        _close_fd(worker.write_fd)
        _close_fd(worker.read_fd)
        assert self._sink is not None
        if inflight and reason is not None:
            job_id, attempt, _ = inflight[0]
            now = time.time()
            self._sink.record_outcomes(
                [
                    Outcome(
                        job_id,
                        attempt,
                        ok=False,
                        error_type=reason[0],
                        error_message=reason[1],
                        started_at=now,
                        finished_at=now,
                    )
                ]
            )
            inflight = inflight[1:]
        if inflight:
            self._sink.requeue([(job_id, attempt) for job_id, attempt, _ in inflight])
        self._sink.capacity_changed()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
