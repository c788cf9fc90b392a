"""The ``dask`` backend: each job is one task on a Dask cluster, running the remote job runner.

URL format: ``DaskBackend("tcp://host:8786")`` (also ``dask://host:8786``, ``tls://...``), a
``distributed.Client``, any cluster object (``LocalCluster``, dask-jobqueue's ``SLURMCluster``,
dask-kubernetes' ``KubeCluster``), or ``None``: a ``LocalCluster`` owned by the backend.
Supports: batches (one ``client.map`` per submit), cancel, lost workers (Dask reschedules the
task itself; a task whose workers keep dying ends ``KilledWorker`` -> ``LOST``), ``init_env`` and
``container=`` (the runner then starts as a child process of the worker through the prefix),
opt-in Dask worker resources.

The task runs the remote job runner, :func:`tasklift.runner.remote.run_remote_job` (or,
isolated, ``python -m tasklift.runner job`` in a child process): it fetches its spec and the
archive from the job API (or the shared archive cache), heartbeats, runs the function and POSTs
the outcome. Nothing of the user's module is pickled, and no result travels back through Dask:
the backend only submits, polls and cancels.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tasklift.backends.base import Backend, OutcomeSink
from tasklift.errors import BackendError, ConfigError
from tasklift.records import JobSpec, WorkSpec
from tasklift.runner.batch import RemoteAttempt, write_batch
from tasklift.runner.remote import run_remote_job
from tasklift.states import JobState
from tasklift.submission import runner_spec

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = ["DEFAULT_RESOURCE_NAMES", "DaskBackend", "run_isolated_job"]

logger = logging.getLogger(__name__)

DEFAULT_RESOURCE_NAMES: Mapping[str, str] = {"cores": "CPU", "gpus": "GPU", "memory_mb": "MEMORY"}
"""tasklift resource -> Dask worker resource, with ``map_resources=True``. ``MEMORY`` is in
bytes (workers started with ``--resources "CPU=8,GPU=1,MEMORY=32e9"``)."""

DONE_MEMORY = 100_000
"""How many ended handles the backend remembers for ``poll`` and ``lost_reason``."""

CONNECT_TIMEOUT = 30.0
"""Seconds to wait for the Dask scheduler when the backend starts."""

CALL_TIMEOUT = 10.0
"""Seconds one scheduler query (``processing``) may take before ``poll`` gives up on it."""

RUNNER_POLL = 0.2
"""Seconds between an isolated task's checks of its child runner and of its own cancellation."""


class DaskBackend(Backend):
    """Runs jobs as tasks on a Dask cluster; their runners report through the job API.

    Args:
        address: the scheduler's address (``tcp://host:8786``; ``dask://`` means ``tcp://``),
            a ``distributed.Client``, a cluster object, or ``None`` for a ``LocalCluster`` of
            ``workers`` single-threaded processes owned (and closed) by the backend.
        client_kwargs: extra arguments of ``distributed.Client`` (e.g. ``security=``).
        workers: worker processes of the owned ``LocalCluster`` (default: number of cores).
        python: interpreter of isolated runners on the workers (default: the worker's).
        isolate: where a job runs on its worker. ``None`` (default): in a child process of
            the worker when its work has a ``timeout`` (so the monitor can stop it) or an
            ``init_env``/``container`` (a prefix wraps a process), else in the worker's own
            thread (no process start-up). ``True``: always a child process (cancel stops
            every job). ``False``: a child process only for ``init_env``.
        map_resources: ask Dask for worker resources from ``@work(resources=...)``: ``True``
            uses :data:`DEFAULT_RESOURCE_NAMES`, a mapping renames (``{"gpus": "GPU"}``; keys
            left out are not asked for). Default ``False``: no resources, so tasks run on any
            worker of any cluster (a task asking for a resource no worker has never starts).
        max_pending: most jobs handed to Dask and not yet ended (more wait in tasklift's queue).
    """

    name: ClassVar[str] = "dask"
    handles_outlive_engine: ClassVar[bool] = False  # futures end with their client
    runs_remotely: ClassVar[bool] = True

    def __init__(
        self,
        address: Any = None,
        *,
        client_kwargs: Mapping[str, Any] | None = None,
        workers: int | None = None,
        python: str | None = None,
        isolate: bool | None = None,
        map_resources: bool | Mapping[str, str] = False,
        max_pending: int = 20_000,
    ) -> None:
        if isinstance(address, str):
            address = address.strip()
            if address.startswith("dask://"):
                address = "tcp://" + address[len("dask://") :]
            if not address:
                raise ConfigError("DaskBackend: empty scheduler address (give tcp://host:8786)")
        if workers is not None and workers < 1:
            raise ConfigError(f"DaskBackend: workers must be at least 1, got {workers}")
        if max_pending < 1:
            raise ConfigError(f"DaskBackend: max_pending must be at least 1, got {max_pending}")
        self.address = address
        self.client_kwargs = dict(client_kwargs or {})
        self.workers = workers
        self.python = python
        self.isolate = isolate
        self.resource_names = _resource_names(map_resources)
        self.max_pending = max_pending
        self._client: Client | None = None
        self._owned: list[Any] = []  # client / cluster objects this backend closes
        self._sink: OutcomeSink | None = None
        self._lock = threading.Lock()
        self._futures: dict[str, Future[Any]] = {}
        self._done: OrderedDict[str, tuple[JobState, str | None]] = OrderedDict()
        self._cancelled: set[str] = set()
        self._full = False
        self._closed = False
        # Dask merges tasks of equal keys, even from other clients: job ids restart with
        # each database, so a per-backend tag keeps two engines' "job 5" apart
        self._tag = secrets.token_hex(3)

    # ------------------------------------------------------------------ lifecycle
    def start(self, sink: OutcomeSink) -> None:
        """Connect to the scheduler (or start the owned ``LocalCluster``)."""
        self._sink = sink
        self._client = self._connect()

    def _connect(self) -> Client:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise ConfigError(
                "the dask backend needs dask.distributed: pip install 'tasklift[dask]'"
            ) from exc
        if isinstance(self.address, Client):
            return self.address
        kwargs: dict[str, Any] = {"timeout": CONNECT_TIMEOUT, **self.client_kwargs}
        kwargs["set_as_default"] = False
        target = self.address
        try:
            if target is None:
                target = LocalCluster(
                    n_workers=self.workers or os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    # no dashboard; its HTTP server (health, metrics) on a free port
                    dashboard_address=":0",
                    scheduler_kwargs={"dashboard": False},
                )
                self._owned.append(target)
            client = Client(target, **kwargs)
        except (OSError, TimeoutError) as exc:
            where = getattr(target, "scheduler_address", target)
            raise BackendError(f"cannot connect to the Dask scheduler at {where}: {exc}") from exc
        self._owned.insert(0, client)
        return client

    def close(self) -> None:
        """Cancel the jobs still on the cluster and close what the backend owns."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._futures.values())
        client = self._client
        if client is not None and pending:
            with contextlib.suppress(OSError, TimeoutError, RuntimeError):
                client.cancel(pending, force=True)
        for owned in self._owned:
            try:
                owned.close(timeout=10) if owned is client else owned.close()
            except (OSError, TimeoutError, RuntimeError) as exc:
                logger.warning("closing %s failed: %s", type(owned).__name__, exc)
        self._owned.clear()

    # ------------------------------------------------------------------ interface
    def free_slots(self, work: WorkSpec) -> int:
        """Room below ``max_pending`` jobs handed to Dask and not yet ended."""
        with self._lock:
            if self._closed:
                return 0
            free = self.max_pending - len(self._futures)
            self._full = free <= 0
            return max(0, free)

    def submit(self, work: WorkSpec, jobs: Sequence[JobSpec]) -> list[str]:
        """Hand ``jobs`` to Dask in one ``client.map`` call; handles are the task keys,
        ``tasklift-<job id>-<attempt>-<backend tag>``."""
        if not jobs:
            return []
        client = self._client
        if client is None or self._closed:
            raise BackendError("the dask backend is not started (or already closed)")
        api_url = work.service_url
        if not api_url:
            raise BackendError(
                f"work {work.name}: no job API URL (WorkSpec.service_url) for Dask workers"
            )
        missing = [j.job_id for j in jobs if not j.token]
        if missing:
            raise BackendError(f"jobs {missing[:5]} have no job token: the engine fills them in")
        keys = [f"tasklift-{j.job_id}-{j.attempt}-{self._tag}" for j in jobs]
        with self._lock:
            fresh = [(k, j) for k, j in zip(keys, jobs, strict=True) if k not in self._futures]
        if fresh:
            self._map(client, work, api_url, fresh)
        return keys

    def _map(
        self, client: Client, work: WorkSpec, api_url: str, fresh: list[tuple[str, JobSpec]]
    ) -> None:
        options: dict[str, Any] = {"pure": False, "retries": 0}
        resources = self._resources(work)
        if resources:
            options["resources"] = resources
        init_env = work.init_env if work.init_env and work.init_env.strip() else None
        timed = work.timeout is not None and self.isolate is None
        columns: list[list[Any]] = [
            [RemoteAttempt(api_url, job.job_id, job.attempt, job.token or "") for _, job in fresh]
        ]
        func: Any = _run_in_thread
        if init_env or self.isolate or timed:
            func = run_isolated_job
            options.update(python=self.python, init_env=init_env)
        else:  # in the worker's thread: the spec travels with the task
            columns.append([runner_spec(work, job) for _, job in fresh])
        n = len(fresh)
        try:
            futures = client.map(func, *columns, key=[k for k, _ in fresh], **options)
        except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
            raise BackendError(f"Dask refused {n} jobs of {work.name}: {exc}") from exc
        with self._lock:
            for (key, _), future in zip(fresh, futures, strict=True):
                self._futures[key] = future
                self._done.pop(key, None)
        for future in futures:
            future.add_done_callback(self._on_done)

    def poll(self, handles: Sequence[str]) -> dict[str, JobState]:
        """QUEUED or RUNNING (by the scheduler's ``processing``) while pending; then the end."""
        states: dict[str, JobState] = {}
        pending: list[str] = []
        with self._lock:
            for handle in handles:
                if handle in self._futures:
                    pending.append(handle)
                elif handle in self._done:
                    states[handle] = self._done[handle][0]
                else:
                    states[handle] = JobState.LOST
        if pending:
            running = self._processing()
            for handle in pending:
                states[handle] = JobState.RUNNING if handle in running else JobState.QUEUED
        return states

    def cancel(self, handles: Sequence[str]) -> None:
        """Cancel the tasks (``force=True``); an isolated runner's process is killed too.

        A job running in a worker's thread (``isolate=False``, or no ``timeout``) cannot be
        stopped by Dask: its outcome is ignored (stale attempt), but the thread stays busy
        until the function returns.
        """
        with self._lock:
            futures = [self._futures[h] for h in handles if h in self._futures]
            self._cancelled.update(h for h in handles if h in self._futures)
        if not futures or self._client is None:
            return
        try:
            self._client.cancel(futures, force=True)
        except (OSError, TimeoutError, RuntimeError) as exc:
            raise BackendError(f"Dask could not cancel {len(futures)} jobs: {exc}") from exc

    def lost_reason(self, handle: str) -> str | None:
        """Why ``poll`` said ``LOST`` for ``handle``."""
        with self._lock:
            if handle in self._done:
                return self._done[handle][1]
            if handle in self._futures:
                return None
        return "the Dask backend does not know this job (its engine restarted?)"

    # ------------------------------------------------------------------ internals
    def _resources(self, work: WorkSpec) -> dict[str, float]:
        asked: dict[str, float] = {}
        for ours, theirs in self.resource_names.items():
            value = work.resources.get(ours)
            if value is None:
                continue
            amount = float(value)
            if ours == "memory_mb":
                amount *= 1024 * 1024
            asked[theirs] = amount
        return asked

    def _processing(self) -> set[str]:
        client = self._client
        if client is None:
            return set()
        try:
            where = client.sync(
                client.scheduler.processing, workers=None, callback_timeout=CALL_TIMEOUT
            )
        except (OSError, TimeoutError, RuntimeError) as exc:
            logger.warning("cannot ask the Dask scheduler which tasks run: %s", exc)
            return set()
        return {str(key) for keys in where.values() for key in keys}

    def _on_done(self, future: Future[Any]) -> None:
        """Record how a task ended and let go of its future (a finished task whose worker
        dies later would otherwise be computed again for the future still held)."""
        handle = str(future.key)
        state, reason = self._ending(handle, future)
        notify = False
        with self._lock:
            if self._futures.get(handle) is not future:
                return  # an older future of the same key
            del self._futures[handle]
            self._cancelled.discard(handle)
            self._done[handle] = (state, reason)
            while len(self._done) > DONE_MEMORY:
                self._done.popitem(last=False)
            if self._full and len(self._futures) <= self.max_pending // 2:
                self._full = False
                notify = True
        if state is JobState.LOST:
            logger.info("dask job %s lost: %s", handle, reason)
        if notify and self._sink is not None:
            self._sink.capacity_changed()

    def _ending(self, handle: str, future: Future[Any]) -> tuple[JobState, str | None]:
        status = future.status
        if status == "finished":
            return JobState.FINISHED, None
        if status == "cancelled":
            with self._lock:
                ours = handle in self._cancelled
            why = "cancelled by tasklift" if ours else "cancelled on the Dask cluster"
            return JobState.LOST, f"Dask task {handle} was {why}"
        if status == "error":
            try:
                exc = future.exception(timeout=CALL_TIMEOUT)
            except (OSError, TimeoutError, RuntimeError) as err:
                return JobState.LOST, f"Dask task {handle} failed (its error is unreadable: {err})"
            from distributed import KilledWorker

            if isinstance(exc, KilledWorker):
                return JobState.LOST, f"Dask gave up on task {handle}: workers died: {exc}"
            # the runner itself failed (it reports the function's own errors), so no outcome
            # reached the job API: LOST with the reason, not FAILED (which waits for one)
            return JobState.LOST, (
                f"the job runner of {handle} on a Dask worker failed before reporting: "
                f"{type(exc).__name__}: {exc}"
            )
        return JobState.LOST, f"Dask task {handle} ended as {status!r}"


def _resource_names(choice: bool | Mapping[str, str]) -> dict[str, str]:
    if choice is True:
        return dict(DEFAULT_RESOURCE_NAMES)
    if choice is False or choice is None:
        return {}
    if not isinstance(choice, Mapping):
        raise ConfigError(
            f"DaskBackend: map_resources is True, False or a mapping like {{'gpus': 'GPU'}}, "
            f"got {choice!r}"
        )
    unknown = set(choice) - set(DEFAULT_RESOURCE_NAMES)
    if unknown:
        raise ConfigError(
            f"DaskBackend: map_resources names unknown tasklift resources {sorted(unknown)}; "
            f"known: {sorted(DEFAULT_RESOURCE_NAMES)}"
        )
    return {str(k): str(v) for k, v in choice.items()}


# ---------------------------------------------------------------------- on the workers
def _run_in_thread(job: RemoteAttempt, spec: dict[str, Any]) -> str:
    """Run one attempt in this Dask worker's thread with the spec that came with the task."""
    status: str = run_remote_job(job, spec=spec)
    return status


def run_isolated_job(
    job: RemoteAttempt, *, python: str | None = None, init_env: str | None = None
) -> str:
    """Run one attempt in a child process of this Dask worker (through ``init_env``).

    The job's token reaches the child in a private batch directory (mode 0600), never on its
    command line. The child is killed when the task is cancelled, and dies with the worker.

    Returns:
        ``"reported"`` (or ``"stale"``), ``"spooled"``, or ``"cancelled"``.

    Raises:
        BackendError: the runner could not start or ended with an error (its output's tail).
    """
    from tasklift.backends.command import runner_command

    is_cancelled = _cancel_check()
    with tempfile.TemporaryDirectory(prefix=f"tasklift-{job.job_id}-{job.attempt}-") as tmp:
        attempt = JobSpec(job.job_id, job.attempt, b"", job.token)
        batch = write_batch(Path(tmp) / "batch", job.api_url, [attempt])
        log = Path(tmp) / "runner.log"
        argv = runner_command(
            python or sys.executable, init_env, ["job", "--batch-dir", str(batch), "--index", "0"]
        )
        with open(log, "wb") as out:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise BackendError(f"cannot start the job runner ({argv[0]}): {exc}") from exc
        try:
            while True:
                try:
                    code = proc.wait(timeout=RUNNER_POLL)
                    break
                except subprocess.TimeoutExpired:
                    if is_cancelled():
                        _kill_group(proc)
                        return "cancelled"
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        if code == 0:
            return "reported"
        if code == 4:
            return "spooled"
        tail = log.read_bytes()[-2000:].decode(errors="replace").strip()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        raise BackendError(f"job runner ended with {how}: {tail or '(no output)'}")


def _cancel_check() -> Any:
    """A function saying whether the current Dask task was cancelled (released)."""
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
    except ValueError:  # not inside a Dask task (called directly)
        return lambda: False

    def cancelled() -> bool:
        task = worker.state.tasks.get(key)
        return task is None or task.state in ("cancelled", "released", "forgotten")

    return cancelled


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the worker that started it dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.warning("job runner pid %d did not die after SIGKILL", proc.pid)
