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

Each worker is a :class:`~tasklift.backends.local_workers.WorkerProcess`; they speak the
messages of :mod:`tasklift.runner.protocol`. A worker says when a job that lasts has started
(at once for a work with a timeout): the backend passes it on with ``sink.jobs_started``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import ClassVar

from tasklift.backends.base import Backend, OutcomeSink
from tasklift.backends.identities import Lease
from tasklift.backends.local_workers import (
    PoolKey,
    RunnerIsolation,
    WorkerProcess,
    assign_jobs,
    close_fd,
    kill_group,
    prefetch_window,
    start_worker,
    worker_command,
)
from tasklift.errors import BackendError
from tasklift.records import JobSpec, Outcome, WorkSpec
from tasklift.runner.protocol import Cancel, Done, Jobs, ProtocolError, Ready, Started, Work
from tasklift.states import JobState

__all__ = ["LocalBackend", "RunnerIsolation", "worker_command"]

logger = logging.getLogger(__name__)

MAX_RUNNERS = 64
"""Most workflow functions (remote workflows) running at once, each in its own worker."""


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
        self._pools: dict[PoolKey, list[WorkerProcess]] = {}
        self._last_busy: dict[str, float] = {}  # isolated owner -> last time it had work
        self._waiting: set[str] = set()  # isolated owners waiting for an identity
        self._by_fd: dict[int, WorkerProcess] = {}
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
            close_fd(worker.write_fd)
        deadline = time.monotonic() + 2
        for worker in workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(worker.proc)
                worker.proc.wait(timeout=5)
            close_fd(worker.read_fd)
        if self.isolation is not None:
            self.isolation.identities.close()
        self._selector.close()
        close_fd(self._wake_r)
        close_fd(self._wake_w)

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
            assigned, handles = assign_jobs(pool, work.work_id, jobs, self._window(work))
            for worker in pool:
                batch = assigned.get(worker.proc.pid)
                if not batch:
                    continue
                if work.work_id not in worker.works_sent:
                    worker.works_sent.add(work.work_id)
                    if self.isolation is not None:  # it cannot read the server's store
                        worker.send_archive(work)
                    worker.queue(Work(work))
                worker.queue(Jobs(work.work_id, batch))
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
                    worker.queue(Cancel([e[0] for e in hit]))
                    self._flush(worker)
        for worker in to_kill:
            self._replace(worker, reason=None)

    # ------------------------------------------------------------------ internals
    def _window(self, work: WorkSpec) -> int:
        return prefetch_window(work.kind, self._durations.get(work.work_id))

    def _pool_key(self, work: WorkSpec) -> PoolKey:
        env = work.init_env.strip() if work.init_env and work.init_env.strip() else None
        owner = None if self.isolation is None else self.isolation.owner_of(work.workflow_id)
        return owner, env, work.kind == "workflow"

    def _pool_for(self, work: WorkSpec) -> list[WorkerProcess]:
        return self._pool(self._pool_key(work))

    def _pool(self, key: PoolKey) -> list[WorkerProcess]:
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

    def _spawn(self, pool_key: PoolKey) -> WorkerProcess:
        lease = None
        if self.isolation is not None:
            assert pool_key[0] is not None
            lease = self.isolation.identities.lease(pool_key[0])
            if lease is None:
                raise BackendError(f"no runner identity is free for user {pool_key[0]}")
        worker = start_worker(self.python, pool_key, lease)
        self._by_fd[worker.read_fd] = worker
        self._selector.register(worker.read_fd, selectors.EVENT_READ, worker)
        self._wakeup()
        return worker

    def _flush(self, worker: WorkerProcess) -> None:
        if worker.flush():
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

    def _read(self, worker: WorkerProcess) -> None:
        """Handle what a worker sent (I/O thread)."""
        try:
            messages = worker.read()
        except ProtocolError as exc:
            self._protocol_violation(worker, str(exc))
            return
        if messages is None:
            self._on_death(worker)
            return
        outcomes: list[Outcome] = []
        started: list[tuple[int, int]] = []
        for message in messages:
            match message:
                case Done(done):
                    outcomes.extend(done)
                case Started(job_id, attempt):
                    started.append((job_id, attempt))
                case Ready():
                    pass  # the worker is up (reading it marked the worker as served)
        if started:
            self._note_started(worker, started)
        if outcomes:
            self._take_outcomes(worker, outcomes)

    def _note_started(self, worker: WorkerProcess, started: list[tuple[int, int]]) -> None:
        """The worker started its head job: time it from now, tell the engine it runs."""
        with self._lock:
            head = worker.inflight[0][:2] if worker.inflight else None
            running = [pair for pair in started if pair == head]  # else ended meanwhile
            if running:
                worker.head_started = time.monotonic()
                worker.head_confirmed = True
        if running:
            assert self._sink is not None
            self._sink.jobs_started(running)

    def _take_outcomes(self, worker: WorkerProcess, outcomes: list[Outcome]) -> None:
        """Record the outcomes a worker reported for jobs it was given (I/O thread)."""
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

    def _protocol_violation(self, worker: WorkerProcess, what: str) -> None:
        logger.warning("worker pid %d sent %s: replaced", worker.proc.pid, what)
        self._replace(
            worker,
            reason=("WorkerLost", f"the job's worker process sent {what} and was killed"),
        )

    def _release_idle(self) -> None:
        """End the workers and identity lease of users with nothing to do (I/O thread)."""
        assert self.isolation is not None
        now = time.monotonic()
        ending: list[tuple[str, list[WorkerProcess]]] = []
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
                close_fd(worker.write_fd)
                close_fd(worker.read_fd)
            lease = self.isolation.identities.detach(owner)  # the owner's next work: a new one
            threading.Thread(
                target=self._end_lease, args=(lease, workers), name="tasklift-lease-end"
            ).start()

    def _end_lease(self, lease: Lease | None, workers: list[WorkerProcess]) -> None:
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
        """Seconds until the first running job's time limit (``None``: no limit runs)."""
        ends = [
            limit[1]
            for pool in self._pools.values()
            for worker in pool
            if (limit := worker.head_limit(self._works)) is not None
        ]
        return max(0.0, min(ends) - time.monotonic()) if ends else None

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [
                (worker, limit[0])
                for pool in self._pools.values()
                for worker in pool
                if (limit := worker.head_limit(self._works)) is not None and now > limit[1]
            ]
        for worker, timeout in expired:
            self._replace(
                worker,
                reason=("Timeout", f"job exceeded its timeout of {timeout:g} s and was killed"),
            )

    def _on_death(self, worker: WorkerProcess) -> None:
        """A worker's pipe closed: it died (or failed to start)."""
        how = worker.exit_status()
        if worker.served:
            message = f"worker process {how} while running the job"
        elif worker.pool[1]:
            message = (
                f"worker process {how} before it started: check the work's init_env "
                f"{worker.pool[1]!r} (its output is in the engine's stderr)"
            )
        else:
            message = f"worker process {how} before it started"
        self._replace(worker, reason=("WorkerLost", message))

    def _replace(self, worker: WorkerProcess, reason: tuple[str, str] | None) -> None:
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
            pool = self._pools.get(worker.pool, [])
            if worker in pool:
                pool.remove(worker)
            # a worker that never served (init_env or the interpreter fails at start) is
            # replaced on demand by the next submit, never in a loop here; runner pools refill
            # on demand too
            if not self._closing and not worker.pool[2] and worker.served:
                pool.append(self._spawn(worker.pool))
        worker.kill()
        assert self._sink is not None
        if inflight and reason is not None:
            job_id, attempt, _ = inflight[0]
            self._sink.record_outcomes([Outcome.failure(job_id, attempt, *reason)])
            inflight = inflight[1:]
        if inflight:
            self._sink.requeue([(job_id, attempt) for job_id, attempt, _ in inflight])
        self._sink.capacity_changed()
