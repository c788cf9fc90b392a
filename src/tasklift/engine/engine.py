"""The engine: one per service (in-process for ``service="local"``), a small facade over the
collaborators that do the work.

- a work and its jobs are stored (memo reuse, data-flow links, chunks): ``store.py``;
- the commands that change works (submit, cancel, retry, record): ``works.py``;
- pending jobs are claimed and handed to a backend: ``dispatch.py``; one record per handed-out
  attempt: ``attempts.py``;
- a runner's outcome is recorded, retried or published, dependents released: ``outcomes.py``;
- lost, silent and timed-out remote jobs become failures: ``monitor.py``;
- a restarted engine resumes, adopts and scans: ``recovery.py``.

Every change to the engine's memory runs on its loop thread (``loop.py``): no lock is held
across I/O and no backend is called under a lock. The bus, the backend factory and the job
API are handed in by a composition root (:mod:`tasklift.embedded`, ``tasklift.service.app``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine as DBEngine
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from tasklift.archive import PackedArchive, archive_path, store_archive
from tasklift.backends.base import Backend
from tasklift.bus.base import Bus
from tasklift.db import tables
from tasklift.db.archives import upsert_archive
from tasklift.db.results import result_records
from tasklift.db.session import SerialWriter, create_db_engine, upgrade
from tasklift.db.workflows import finish_workflow, insert_workflow
from tasklift.db.works import running_work_ids
from tasklift.engine.announce import Announcer
from tasklift.engine.attempts import Attempt
from tasklift.engine.backend_pool import BackendFactory, BackendPool
from tasklift.engine.dispatch import Dispatcher
from tasklift.engine.job_api_access import JobAPIAccess, JobTokenIssuer, StartedJobAPI
from tasklift.engine.live import Memory, WorkRecord
from tasklift.engine.loop import EngineLoop, LoopStopped
from tasklift.engine.monitor import Monitor
from tasklift.engine.outcomes import HeldOutcomes, OutcomeRecorder
from tasklift.engine.recovery import Recovery, close_orphaned_workflows
from tasklift.engine.store import ChunkedStore, WorkStore
from tasklift.engine.works import WorkControl
from tasklift.errors import DatabaseUnavailable, NotFoundError
from tasklift.records import Outcome, ResultRecord, WorkSpec
from tasklift.settings import Settings
from tasklift.states import WorkflowState
from tasklift.submission import Submission

__all__ = ["Engine", "WorkRecord"]

logger = logging.getLogger(__name__)

JobAPIStarter = Callable[["Engine"], StartedJobAPI]
"""Serves the job API for an embedded engine's remote runners (started on first use)."""


class Engine:
    """Stores, dispatches and records jobs; the same code in-process and in the server."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus: Bus,
        backends: BackendFactory,
        job_api: JobAPIStarter | None = None,
        auto_upgrade: bool = True,
        resume: bool = False,
    ) -> None:
        self.settings = settings
        self.db: DBEngine = create_db_engine(settings.database_url)
        writer = SerialWriter(self.db)  # the per-job write transactions
        self.transaction = writer.begin
        """A short transaction on a connection kept open (``with engine.transaction() as c``):
        cheaper than ``db.begin()`` for the service's per-request reads and writes."""
        if auto_upgrade:
            upgrade(self.db)
        self.engine_id = _engine_id(settings, resume)
        self._announcer = Announcer(bus)
        self.bus = bus
        self.local_bus = self._announcer.local_bus
        self._memory = Memory()
        self._stop = threading.Event()
        self._loop = EngineLoop(f"tasklift-engine-{self.engine_id}")
        self._job_api = JobAPIAccess(None if job_api is None else lambda: job_api(self))
        self._backends = BackendPool(backends, self)
        self.monitor = Monitor(self, settings.monitor_interval, settings.heartbeat_timeout)
        self._dispatcher = Dispatcher(
            self._memory,
            self.db,
            writer,
            self._backends,
            self.engine_id,
            self._job_api,
            fail=self._record_in_loop,
            watch_remote=self.monitor.start,
        )
        self._recorder = OutcomeRecorder(self._memory, writer, self._dispatcher.claim_ahead)
        self._held = HeldOutcomes(
            settings.scan_interval, self._stop, self._retry_held, self.engine_id
        )
        store = WorkStore(self.db, writer, self.engine_id)
        self._recovery = Recovery(
            settings=settings,
            db=self.db,
            memory=self._memory,
            engine_id=self.engine_id,
            backends=self._backends,
            dispatcher=self._dispatcher,
            announcer=self._announcer,
            loop=self._loop,
            watch_remote=self.monitor.start,
            archive_file=self.archive_file,
        )
        self._works = WorkControl(
            memory=self._memory,
            db=self.db,
            store=store,
            chunks=self._chunked_store(store),
            backends=self._backends,
            announcer=self._announcer,
            dispatch=self._dispatch_guarded,
            recovery=self._recovery,
            dispatcher=self._dispatcher,
            loop=self._loop,
            writer=writer,
            engine_id=self.engine_id,
        )
        close_orphaned_workflows(self.db)
        self._resume = resume
        self._started = False

    def _chunked_store(self, store: WorkStore) -> ChunkedStore:
        """The store thread of large works, reaching the engine's memory through the loop."""
        return ChunkedStore(
            store,
            self._stop,
            self.db.dialect.name == "postgresql",
            is_live=lambda work_id: work_id in self._memory.works,
            page_position=self._page_position,
            chunk_stored=lambda *a: self._loop.call(self._works.chunk_stored, *a),
            stopped_short=lambda w, why: self._loop.call(
                self._memory.store_errors.__setitem__, w, why
            ),
            failed=self._store_failed,
            closing=lambda: self._memory.closed,
        )

    def start(self) -> None:
        """Resume running works and start scanning for others' (a server engine: called once
        the job API's URL and token issuer are set, so adopted remote jobs use them)."""
        if not self._resume or self._started:
            return
        self._started = True
        self._loop.call(self._recovery.resume_running_works)
        self._recovery.start_scanning(self._stop, self.capacity_changed)

    # ------------------------------------------------------------------ wiring
    @property
    def job_token_issuer(self) -> JobTokenIssuer | None:
        """Makes the job token of a job whose runner calls the job API (set by a server)."""
        return self._job_api.issuer

    @job_token_issuer.setter
    def job_token_issuer(self, issuer: JobTokenIssuer | None) -> None:
        self._job_api.issuer = issuer

    @property
    def job_api_url(self) -> str | None:
        """Where remote job runners reach the job API (a server's URL; else the engine serves
        one itself when a remote backend first needs it)."""
        return self._job_api.url

    @job_api_url.setter
    def job_api_url(self, url: str | None) -> None:
        self._job_api.url = url

    @property
    def result_latency_observer(self) -> Callable[[float], None] | None:
        """Sees seconds from a job's end to its result's commit (set by the service)."""
        return self._recorder.latency_observer

    @result_latency_observer.setter
    def result_latency_observer(self, observer: Callable[[float], None] | None) -> None:
        self._recorder.latency_observer = observer

    def add_backend(self, name: str, backend: Backend) -> None:
        """Register a backend object under ``name`` (``Workflow(backend=DaskBackend(...))``)."""
        self._backends.add(name, backend)

    def backend(self, name: str) -> Backend:
        """Return the started backend called ``name``."""
        return self._backends.get(name)

    # ------------------------------------------------------------------ workflows, archives
    def create_workflow(self, **values: Any) -> int:
        """Register a workflow run and return its id."""
        values.setdefault("client_host", socket.gethostname())
        values.setdefault("client_pid", os.getpid())
        with self.db.begin() as conn:
            return insert_workflow(conn, **values)

    def finish_workflow(
        self, workflow_id: int, status: WorkflowState, result: bytes | None, error: str | None
    ) -> None:
        """Store the end of a workflow run.

        A workflow that failed or was cancelled (its function raised, Ctrl-C included) leaves
        nothing running: its running works are cancelled too, their open jobs with them. The
        workflow's end is stored first, so whoever sees a work end can read why.
        """
        with self.db.begin() as conn:
            finish_workflow(conn, workflow_id, status.value, result, error)
        if status in (WorkflowState.FAILED, WorkflowState.CANCELLED):
            with self.db.connect() as conn:
                running = running_work_ids(conn, workflow_id)
            reason = (error or "").strip().splitlines()[-1:] or [status.value]
            for work_id in running:
                self.cancel_work(work_id, f"its workflow {status.value}: {reason[0][:300]}")

    def store_archive(self, packed: PackedArchive) -> str:
        """Keep an archive in the content store (once per hash); return its path."""
        path = store_archive(self.settings.archive_dir, packed)
        with self.db.begin() as conn:
            upsert_archive(conn, packed.sha256, len(packed.data), packed.n_files)
        return str(path)

    def archive_file(self, sha256: str) -> str:
        """Where the archive with this hash lives in the content store."""
        return str(archive_path(self.settings.archive_dir, sha256))

    # ------------------------------------------------------------------ works
    def submit_work(
        self, submission: Submission, on_stored: Callable[[WorkRecord], None] | None = None
    ) -> tuple[WorkSpec, WorkRecord]:
        """Store a work with its jobs and queue them (see :class:`WorkControl.submit`)."""
        return self._works.submit(submission, on_stored)

    def store_error(self, work_id: int) -> str | None:
        """Why storing a large work's jobs stopped short (``None``: it did not)."""
        return self._memory.store_errors.get(work_id)

    def wait_stored(self, work_id: int, timeout: float | None = None) -> bool:
        """Wait until every job of a work is stored (large works are stored in chunks while
        they run); False when ``timeout`` passed first."""
        live = self._memory.works.get(work_id)
        done = None if live is None else live.store_done
        return done is None or done.wait(timeout)

    def results(self, work_id: int, since: int = 0, limit: int | None = None) -> list[ResultRecord]:
        """Terminal jobs of a work that ended after the first ``since`` ones (DB order).

        Raises:
            DatabaseUnavailable: the database did not answer.
        """
        try:
            with self.db.connect() as conn:
                return result_records(conn, work_id, since, limit)
        except OperationalError as exc:
            raise DatabaseUnavailable(f"cannot read the results of work {work_id}: {exc}") from exc

    def work_row(self, work_id: int) -> dict[str, Any]:
        """The work's row as a dict."""
        with self.db.connect() as conn:
            row = (
                conn.execute(select(tables.works).where(tables.works.c.id == work_id))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFoundError(f"work {work_id} does not exist")
        return dict(row)

    def cancel_work(self, work_id: int, message: str = "cancelled by the user") -> int:
        """Cancel a work's queued and running jobs; return how many were cancelled."""
        return self._loop.call(self._works.cancel, work_id, message)

    def retry_failed(self, work_id: int) -> int:
        """Run a work's failed jobs again (fresh attempts); return how many."""
        return self._loop.call(self._works.retry_failed, work_id)

    # ------------------------------------------------------------------ attempts
    def is_active(self, job_id: int, attempt: int) -> bool:
        """True while attempt ``attempt`` of ``job_id`` is handed out and not yet reported."""
        return self._memory.attempts.current(job_id, attempt) is not None

    def running_count(self, work_id: int) -> int:
        """How many jobs of a work are handed to a backend right now."""
        return self._memory.attempts.of_work(work_id)

    def note_heartbeat(self, job_id: int) -> float:
        """A remote runner of ``job_id`` is alive now (it has started: recorded ``running``)."""
        attempt = self._memory.attempts.get(job_id)
        if attempt is not None and attempt.heartbeat is None:
            self.jobs_started([(job_id, attempt.number)])
        return self._memory.attempts.beat(job_id)

    def last_heartbeats(self, job_ids: Sequence[int]) -> dict[int, float]:
        """The last heartbeat this engine heard from each job's runner (if any)."""
        return self._memory.attempts.heartbeats(job_ids)

    def remote_jobs(self) -> list[Attempt]:
        """Attempts handed to remote backends and not yet reported (for the monitor)."""
        return self._memory.attempts.remote()

    # ------------------------------------------------------------------ the backends' sink
    def record_outcomes(self, outcomes: list[Outcome], *, hold: bool = True) -> None:
        """Store outcomes (DB commit first), publish terminal ones, queue retries.

        When the database fails (down, restarting), nothing of the batch is recorded: with
        ``hold`` the outcomes stay in memory and a retry thread records them once the database
        answers again (it tries every ``scan_interval``); without, the error is raised (the job
        API answers 5xx and the runner retries or spools).
        """
        if self._loop.in_loop():  # reported from inside a command: after it, attempt known
            self._loop.post(self._works.record, self._recorder, self._held, outcomes, hold)
            return
        self._loop.call(self._works.record, self._recorder, self._held, outcomes, hold)

    def _record_in_loop(self, outcomes: list[Outcome]) -> None:
        self._works.announce_all(self._recorder.record(outcomes))

    def _retry_held(self, held: list[Outcome]) -> bool:
        """The held-outcome thread's try; True ends it (done, or the engine closed)."""
        try:
            return self._loop.call(self._works.retry_held, self._recorder, self._held, held)
        except LoopStopped:
            if held:
                logger.error("engine closed with %d outcomes the database never took", len(held))
            return True

    def requeue(self, jobs: list[tuple[int, int]]) -> None:
        """Put jobs a backend gave back into the queue, without charging an attempt."""
        self._loop.post(self._works.requeue, jobs)

    def capacity_changed(self) -> None:
        """A backend has room again: dispatch more."""
        self._loop.post(self._dispatch_guarded)

    def jobs_started(self, jobs: list[tuple[int, int]]) -> None:
        """Job runners started these attempts (recorded ``running`` in batches)."""
        self._loop.post(self._works.note_started, jobs)

    def _dispatch_guarded(self) -> None:
        """Dispatch; a database failure leaves the jobs queued for the retry thread."""
        if not self._works.dispatch_guarded():
            self._held.wake()

    def _page_position(self, work_id: int) -> int | None:
        live = self._memory.works.get(work_id)
        return None if live is None else live.page_after

    def _store_failed(self, work_id: int, message: str) -> None:
        self._loop.call(self._memory.store_errors.__setitem__, work_id, message)
        self.cancel_work(work_id, message)

    def close(self) -> None:
        """Stop backends and release the database."""
        self._stop.set()
        if self._memory.closed:
            return
        self._loop.call(setattr, self._memory, "closed", True)
        self.monitor.close()
        for backend in self._backends.take_all():
            backend.close()
        self._job_api.close()
        self._loop.stop()
        self.bus.close()
        self.db.dispose()

    def for_workflow(self, workflow_id: int) -> Engine:
        """The engine that acts for workflow ``workflow_id``: this one (an embedded engine
        has no per-workflow credentials; the client interface asks both implementations)."""
        return self


def _engine_id(settings: Settings, resume: bool) -> str:
    """This engine's name in job claims: stable across restarts for a resuming engine."""
    if settings.engine_name:
        return settings.engine_name
    home_tag = hashlib.sha256(str(settings.home).encode()).hexdigest()[:8]
    host = socket.gethostname()
    return (f"{host}:{home_tag}" if resume else f"{host}:pid{os.getpid()}")[:64]
