"""The engine: one instance per service (in-process for ``service="local"``).

It stores works and their jobs in bulk, hands jobs to backends in batches, records outcomes
(DB first, then the bus), applies retries, and keeps per-work counters and states.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine as DBEngine
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from tasklift.archive import PackedArchive, archive_path, store_archive
from tasklift.backends.base import Backend
from tasklift.bus.base import Bus, work_destination
from tasklift.bus.embedded import EmbeddedBus
from tasklift.db import hot
from tasklift.db import queries as q
from tasklift.db.session import SerialWriter, create_db_engine, upgrade
from tasklift.engine import dataflow
from tasklift.engine.live import LiveWork, WorkRecord
from tasklift.engine.monitor import Monitor, RemoteJob
from tasklift.engine.recovery import RecoveryMixin
from tasklift.engine.state import decide, state_of, work_state
from tasklift.engine.storing import STORE_CHUNK, ChunkedStoreMixin
from tasklift.errors import (
    BackendError,
    ConfigError,
    DatabaseUnavailable,
    NotFoundError,
    SubmissionError,
)
from tasklift.records import JobSpec, Outcome, WorkSpec
from tasklift.settings import Settings
from tasklift.states import WORK_TERMINAL, JobState, WorkflowState, WorkState

__all__ = ["Engine", "WorkRecord"]

logger = logging.getLogger(__name__)

IN_MEMORY_JOBS = 20_000
"""Works up to this size keep their pending jobs in memory; larger ones page from the DB."""
PAGE = 5_000


class Engine(ChunkedStoreMixin, RecoveryMixin):
    """Stores, dispatches and records jobs; the same code in-process and in the server."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus: Bus | None = None,
        backend_factory: Callable[[str], Backend] | None = None,
        auto_upgrade: bool = True,
        resume: bool = False,
        defer_start: bool = False,
    ) -> None:
        self.settings = settings
        self.db: DBEngine = create_db_engine(settings.database_url)
        self._writer = SerialWriter(self.db)  # the per-job write transactions
        self.transaction = self._writer.begin
        """A short transaction on a connection kept open (``with engine.transaction() as c``):
        cheaper than ``db.begin()`` for the service's per-request reads and writes."""
        if auto_upgrade:
            upgrade(self.db)
        if bus is None:
            from tasklift.bus.registry import bus_from_url

            bus = bus_from_url(settings.bus)  # TASKLIFT_BUS / --bus; default in-process
        self.bus = bus
        self.local_bus: Bus = bus if isinstance(bus, EmbeddedBus) else EmbeddedBus()
        """In-process listeners (the service's waiting requests) get every batch published on
        ``bus`` here too, at once and without a broker round trip."""
        self._backend_factory = backend_factory or self._default_backend
        self._backends: dict[str, Backend] = {}
        self._lock = threading.RLock()
        self._submit_lock = threading.Lock()
        self._live: dict[int, LiveWork] = {}
        self._store_errors: dict[int, str] = {}  # works whose chunked store failed
        self._active: dict[int, tuple[int, int, bytes]] = {}  # job -> work, attempt, payload
        self._held: list[Outcome] = []  # outcomes the database failed to take (retried)
        self._held_retrier: threading.Thread | None = None
        self._handles: dict[int, str] = {}
        self._closed = False
        self._upstream_works: set[int] = set()  # works that other works take inputs from
        self._scanner: threading.Thread | None = None
        self._stop = threading.Event()
        home_tag = hashlib.sha256(str(settings.home).encode()).hexdigest()[:8]
        self.engine_id = (
            settings.engine_name
            or (
                f"{socket.gethostname()}:{home_tag}"
                if resume
                else f"{socket.gethostname()}:pid{os.getpid()}"
            )[:64]
        )
        self.job_token_issuer: Callable[[WorkSpec, JobSpec], str] | None = None
        """Set by the service: makes the job token of a job whose runner calls the job API."""
        self.job_api_url: str | None = None
        """Where remote job runners reach the job API (the server's URL; else the engine serves
        one itself when a remote backend first needs it)."""
        self._job_api: Any = None
        self._remote: dict[int, RemoteJob] = {}  # job -> attempt handed to a remote backend
        self._heartbeats: dict[int, float] = {}  # job -> last heartbeat of its remote runner
        self.monitor = Monitor(self)
        self.result_latency_observer: Callable[[float], None] | None = None
        """Set by the service: sees seconds from a job's end to its result's commit."""
        self.settings.archive_dir.mkdir(parents=True, exist_ok=True)
        self.settings.cache_dir.mkdir(parents=True, exist_ok=True)
        self._recover_orphans()
        self._resume = resume
        if resume and not defer_start:
            self.start()

    def start(self) -> None:
        """Resume running works and start scanning for others' (a server engine).

        The server calls this itself (``defer_start=True``) once it has set
        ``job_token_issuer`` and ``job_api_url``, so adopted remote jobs use them.
        """
        if not self._resume or self._scanner is not None:
            return
        self._resume_running_works()
        self._scanner = threading.Thread(
            target=self._scan_loop, name="tasklift-engine-scan", daemon=True
        )
        self._scanner.start()

    # ------------------------------------------------------------------ backends
    def _default_backend(self, name: str) -> Backend:
        from tasklift.backends.registry import backend_from_settings

        return backend_from_settings(name, self.settings)

    def add_backend(self, name: str, backend: Backend) -> None:
        """Register a backend object under ``name`` (``Workflow(backend=DaskBackend(...))``)."""
        with self._lock:
            known = self._backends.get(name)
            if known is backend:
                return
            if known is not None:
                raise ConfigError(f"another backend is registered as {name!r}")
            backend.start(self)
            self._backends[name] = backend

    def backend(self, name: str) -> Backend:
        """Return the started backend called ``name``."""
        with self._lock:
            backend = self._backends.get(name)
            if backend is None:
                backend = self._backend_factory(name)
                backend.start(self)
                self._backends[name] = backend
            return backend

    # ------------------------------------------------------------------ workflows
    def create_workflow(self, **values: Any) -> int:
        """Register a workflow run and return its id."""
        values.setdefault("client_host", socket.gethostname())
        values.setdefault("client_pid", os.getpid())
        with self.db.begin() as conn:
            return q.insert_workflow(conn, **values)

    def finish_workflow(
        self, workflow_id: int, status: WorkflowState, result: bytes | None, error: str | None
    ) -> None:
        """Store the end of a workflow run.

        A workflow that failed or was cancelled (its function raised, Ctrl-C included) leaves
        nothing running: its running works are cancelled first, their open jobs too.
        """
        if status in (WorkflowState.FAILED, WorkflowState.CANCELLED):
            with self.db.connect() as conn:
                running = q.running_work_ids(conn, workflow_id)
            reason = (error or "").strip().splitlines()[-1:] or [status.value]
            for work_id in running:
                self.cancel_work(work_id, f"its workflow {status.value}: {reason[0][:300]}")
        with self.db.begin() as conn:
            q.finish_workflow(conn, workflow_id, status.value, result, error)

    def store_archive(self, packed: PackedArchive) -> str:
        """Keep an archive in the content store (once per hash); return its path."""
        path = store_archive(self.settings.archive_dir, packed)
        with self.db.begin() as conn:
            q.upsert_archive(conn, packed.sha256, len(packed.data), packed.n_files)
        return str(path)

    def archive_file(self, sha256: str) -> str:
        """Where the archive with this hash lives in the content store."""
        return str(archive_path(self.settings.archive_dir, sha256))

    # ------------------------------------------------------------------ works
    def submit_work(
        self,
        *,
        workflow_id: int,
        spec: WorkSpec,
        memo_key: str,
        options: str,
        min_success: float,
        jobs: Sequence[tuple[str, bytes]],
        reuse: bool,
        on_stored: Callable[[WorkRecord], None] | None = None,
        refs: Sequence[Sequence[dataflow.Ref]] | None = None,
        require_running: bool = False,
    ) -> tuple[WorkSpec, WorkRecord]:
        """Store a work with its jobs and queue them.

        With ``require_running`` the store transaction first checks that the workflow is
        still running (:class:`SubmissionError` if it ended: nothing is stored).

        Up to ``IN_MEMORY_JOBS`` jobs are stored in one transaction, those the backend has
        room for already claimed. A larger work is stored in chunks: this returns once the
        first ``STORE_CHUNK`` jobs are stored and running, a thread of its own stores the rest
        (:meth:`wait_stored`; :meth:`store_error` tells why it stopped short, if it did).

        ``refs`` (one list per job) make jobs wait for upstream jobs and take their results
        as inputs (data-flow); such a job is dispatched as soon as its own inputs are ready.

        Finished jobs of earlier works with the same ``memo_key`` and key are reused (their
        result copied, nothing runs) when ``reuse`` is true.
        """
        # the jobs the backend has room for right now are inserted already claimed: one
        # transaction stores and claims them (data-flow jobs are claimed when their inputs are)
        claim = (
            0
            if refs or len(jobs) > IN_MEMORY_JOBS
            else min(len(jobs), self._room(replace(spec, workflow_id=workflow_id)))
        )
        n_jobs = len(jobs)
        streamed = not refs and n_jobs > IN_MEMORY_JOBS
        # a list: the jobs are read several times below (a lazy sequence computes each time)
        first = list(jobs[:STORE_CHUNK] if streamed else jobs[:])
        # a data-flow work is stored and queued under the engine lock, its upstream works
        # marked first: an upstream job that ends meanwhile then releases it in the DB and in
        # memory, never in the DB only (it would wait forever)
        with self._lock if refs else contextlib.nullcontext():
            if refs:
                self._upstream_works.update(r.work_id for job_refs in refs for r in job_refs)
            for attempt in range(5):
                try:
                    with self._submit_lock:
                        stored = self._store_work(
                            workflow_id,
                            spec,
                            memo_key,
                            options,
                            min_success,
                            first,
                            reuse,
                            refs,
                            claim,
                            n_jobs,
                            require_running,
                        )
                    break
                except IntegrityError:
                    # another engine took the same sequence number: read it again
                    if attempt == 4:
                        raise
            work_id, job_ids, reused, status, not_ready, ended, claimed = stored
            for_bus = [r for r in ended]
            result = self._queue_work(
                spec,
                workflow_id,
                work_id,
                job_ids,
                first,
                reused,
                status,
                min_success,
                on_stored,
                not_ready,
                has_refs=bool(refs),
                claimed=claimed,
                n_jobs=n_jobs,
                stored=len(first) if streamed else None,
            )
        if for_bus:
            self._announce(work_destination(work_id), for_bus)
        if streamed:
            # the rest is stored by a thread of its own: the call returns with the first jobs
            # running (the handle's wait_stored() waits for the whole work)
            with self._lock:
                live = self._live.get(work_id)
                done = threading.Event()
                if live is not None:
                    live.store_done = done
            threading.Thread(
                target=self._store_rest,
                args=(work_id, jobs, len(first), memo_key, reuse, min_success, done),
                name=f"tasklift-store-{work_id}",
                daemon=True,
            ).start()
        return result

    def _store_work(
        self,
        workflow_id: int,
        spec: WorkSpec,
        memo_key: str,
        options: str,
        min_success: float,
        jobs: Sequence[tuple[str, bytes]],
        reuse: bool,
        refs: Sequence[Sequence[dataflow.Ref]] | None,
        claim: int = 0,
        n_jobs: int | None = None,
        require_running: bool = False,
    ) -> tuple[
        int,
        list[int],
        list[tuple[int, int, bytes]],
        WorkState,
        set[int],
        list[q.ResultRecord],
        set[int],
    ]:
        with self._writer.begin() as conn:
            if require_running:
                rows = hot.execute(
                    conn, "SELECT status FROM workflows WHERE id = ?", (workflow_id,)
                )
                if not rows:
                    raise NotFoundError(f"workflow {workflow_id} not found")
                status = rows[0][0]
                if status != WorkflowState.RUNNING.value:
                    raise SubmissionError(f"workflow {workflow_id} is {status}: no new works")
            # earlier identical jobs first: they are never claimed
            memo = q.find_memo(conn, memo_key, [key for key, _ in jobs]) if reuse else {}
            hits = {i for i, (key, _) in enumerate(jobs) if key in memo} if memo else set()
            work_id = q.insert_work(  # takes the workflow's next sequence number
                conn,
                workflow_id=workflow_id,
                name=spec.name,
                function=spec.function,
                script=spec.script,
                archive_sha=spec.archive_sha,
                memo_key=memo_key,
                status=WorkState.RUNNING.value,
                options=options,
                n_jobs=len(jobs) if n_jobs is None else n_jobs,
                when_predicate=spec.when,
                # the rest is stored by this engine's store thread (cleared with the last chunk)
                storing_by=self.engine_id if n_jobs is not None and n_jobs > len(jobs) else None,
            )
            job_ids = q.insert_jobs(
                conn, work_id, jobs, claim=claim, skip=hits, engine_id=self.engine_id
            )
            claimed: set[int] = set()
            if claim:
                for job_id, idx in zip(job_ids, range(len(jobs)), strict=True):
                    if len(claimed) == claim:
                        break
                    if idx not in hits:
                        claimed.add(job_id)
            not_ready: set[int] = set()
            ended: list[q.ResultRecord] = []
            if refs:
                waiting, blocked = dataflow.register(conn, workflow_id, work_id, job_ids, refs)
                not_ready = set(waiting) | set(blocked)
            reused: list[tuple[int, int, bytes]] = []
            if hits:
                for job_id, (key, _) in zip(job_ids, jobs, strict=True):
                    hit = memo.get(key)
                    if hit is not None:
                        reused.append((job_id, hit[0], hit[1]))
                q.mark_reused(conn, reused)
                if reused:
                    q.bump_work_counters(conn, work_id, len(reused), 0, 0)  # done_seq 1..n
                    conn.execute(
                        q.works.update().where(q.works.c.id == work_id).values(n_reused=len(reused))
                    )
            if refs and blocked:
                reused_ids = {r[0] for r in reused}
                idx_of = {job_id: i for i, job_id in enumerate(job_ids)}
                doomed = [
                    (job_id, idx_of[job_id], 0, state, message)
                    for job_id, (state, message) in blocked.items()
                    if job_id not in reused_ids
                ]
                if doomed:
                    ended, _ = dataflow.end_jobs(conn, work_id, doomed)
            n_failed = sum(1 for r in ended if r.state != JobState.SKIPPED.value)
            status = work_state(
                len(jobs) if n_jobs is None else n_jobs,
                len(reused),
                n_failed,
                0,
                min_success,
                len(ended) - n_failed,
            )
            if status in WORK_TERMINAL:
                q.set_work_status(conn, work_id, status.value, finished=True)
        return work_id, job_ids, reused, status, not_ready, ended, claimed

    def _room(self, spec: WorkSpec) -> int:
        """How many jobs of a new work its backend takes at once (0 when closed)."""
        with self._lock:
            if self._closed:
                return 0
            return self.backend(spec.backend).free_slots(spec)

    def _queue_work(
        self,
        spec: WorkSpec,
        workflow_id: int,
        work_id: int,
        job_ids: list[int],
        jobs: Sequence[tuple[str, bytes]],
        reused: list[tuple[int, int, bytes]],
        status: WorkState,
        min_success: float,
        on_stored: Callable[[WorkRecord], None] | None,
        not_ready: set[int],
        has_refs: bool,
        claimed: set[int] | None = None,
        n_jobs: int | None = None,
        stored: int | None = None,
    ) -> tuple[WorkSpec, WorkRecord]:
        spec = WorkSpec(**{**spec.__dict__, "work_id": work_id, "workflow_id": workflow_id})
        n_jobs = len(jobs) if n_jobs is None else n_jobs
        live = LiveWork(spec=spec, n_jobs=n_jobs, min_success=min_success, finished=len(reused))
        live.has_refs = has_refs
        live.claimed = claimed or set()
        live.stored = stored
        reused_ids = {r[0] for r in reused} | not_ready
        if n_jobs <= IN_MEMORY_JOBS:
            for idx, (job_id, (_, payload)) in enumerate(zip(job_ids, jobs, strict=True)):
                if job_id not in reused_ids:
                    live.pending.append(JobSpec(job_id, 1, payload))
                    live.idx_of[job_id] = idx
        else:
            live.page_after = -1
        if reused:
            logger.info("work %s: reused %d of %d finished jobs", spec.name, len(reused), n_jobs)
        record = WorkRecord(work_id=work_id, n_jobs=n_jobs, n_reused=len(reused))
        if on_stored is not None:
            on_stored(record)  # e.g. subscribe before any job can finish
        if status not in WORK_TERMINAL:
            with self._lock:
                self._live[work_id] = live
                self._dispatch()
        return spec, record

    def results(
        self, work_id: int, since: int = 0, limit: int | None = None
    ) -> list[q.ResultRecord]:
        """Terminal jobs of a work that ended after the first ``since`` ones (DB order).

        Raises:
            DatabaseUnavailable: the database did not answer.
        """
        try:
            with self.db.connect() as conn:
                return q.result_records(conn, work_id, since, limit)
        except OperationalError as exc:
            raise DatabaseUnavailable(f"cannot read the results of work {work_id}: {exc}") from exc

    def work_row(self, work_id: int) -> dict[str, Any]:
        """The work's row as a dict."""
        with self.db.connect() as conn:
            row = conn.execute(select(q.works).where(q.works.c.id == work_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"work {work_id} does not exist")
        return dict(row)

    def is_active(self, job_id: int, attempt: int) -> bool:
        """True while attempt ``attempt`` of ``job_id`` is handed out and not yet reported."""
        with self._lock:
            active = self._active.get(job_id)
            return active is not None and active[1] == attempt

    def running_count(self, work_id: int) -> int:
        """How many jobs of a work are handed to a backend right now."""
        with self._lock:
            return sum(1 for w, _, _ in self._active.values() if w == work_id)

    def cancel_work(self, work_id: int, message: str = "cancelled by the user") -> int:
        """Cancel a work's queued and running jobs; return how many were cancelled."""
        with self._lock:
            live = self._live.pop(work_id, None)
            handles = [
                self._handles.pop(job_id)
                for job_id, (w, _, _) in list(self._active.items())
                if w == work_id and job_id in self._handles
            ]
            for job_id, (w, _, _) in list(self._active.items()):
                if w == work_id:
                    del self._active[job_id]
            cascaded: list[tuple[int, q.ResultRecord]] = []
            with self.db.begin() as conn:
                cancelled = q.cancel_open_jobs(conn, work_id, message)
                if cancelled and work_id in self._upstream_works:
                    cascaded, _ = dataflow.cascade(
                        conn,
                        {r.job_id: (JobState.CANCELLED.value, message) for r in cancelled},
                    )
                row = conn.execute(
                    select(
                        q.works.c.n_jobs,
                        q.works.c.n_finished,
                        q.works.c.n_failed,
                        q.works.c.n_cancelled,
                    ).where(q.works.c.id == work_id)
                ).first()
                if row is None:
                    raise NotFoundError(f"work {work_id} does not exist")
                state = work_state(
                    row[0], row[1], row[2], row[3], 1.0 if live is None else live.min_success
                )
                if cancelled:
                    state = WorkState.CANCELLED if state != WorkState.FINISHED else state
                q.set_work_status(conn, work_id, state.value, finished=True)
            if handles and live is not None:
                try:
                    self.backend(live.spec.backend).cancel(handles)
                except BackendError:
                    logger.exception("backend could not cancel jobs of work %d", work_id)
        self._announce(work_destination(work_id), cancelled)
        for other, record in cascaded:
            self._announce(work_destination(other), [record])
        return len(cancelled)

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self) -> None:
        """Hand pending jobs to backends while they have room (call with the lock held)."""
        if self._closed:
            return
        lives = list(self._live.values())
        # jobs that take inputs from other jobs go first (newest chain stage first): a chain
        # then finishes job by job instead of stage by stage (job-level pipelining)
        order = [lv for lv in reversed(lives) if lv.has_refs] + [
            lv for lv in lives if not lv.has_refs
        ]
        for live in order:
            if not live.has_pending():
                continue
            backend = self.backend(live.spec.backend)
            room = backend.free_slots(live.spec)
            if room <= 0:
                continue
            batch = self._take(live, room)
            if not batch:
                continue
            claimed = {j.job_id for j in batch if j.job_id in live.claimed}
            live.claimed -= claimed
            if len(claimed) < len(batch):  # some were not claimed when inserted
                claimed_before = set(claimed)
                try:
                    with self._writer.begin() as conn:
                        claimed |= q.claim_jobs(
                            conn,
                            [j.job_id for j in batch if j.job_id not in claimed],
                            self.engine_id,
                        )
                        if live.has_refs:
                            batch = dataflow.resolve_payloads(
                                conn, [j for j in batch if j.job_id in claimed]
                            )
                except SQLAlchemyError:  # nothing was claimed: queue the batch again
                    live.claimed |= claimed_before
                    live.pending.extendleft(reversed(batch))
                    raise
            if len(claimed) < len(batch):  # another engine took some: they are not ours
                for job in batch:
                    if job.job_id not in claimed:
                        live.idx_of.pop(job.job_id, None)
                batch = [j for j in batch if j.job_id in claimed]
                if not batch:
                    continue
            spec = live.spec
            if backend.runs_remotely:
                spec = self._remote_spec(live)
            if (spec.kind == "workflow" or backend.runs_remotely) and self.job_token_issuer:
                issue = self.job_token_issuer
                batch = [JobSpec(j.job_id, j.attempt, j.payload, issue(spec, j)) for j in batch]
            try:
                handles = backend.submit(spec, batch)
            except BackendError as exc:
                logger.error(
                    "backend %s refused jobs of %s: %s", live.spec.backend, live.spec.name, exc
                )
                self._fail_unsubmitted(live, batch, exc)
                continue
            if backend.handles_outlive_engine:  # e.g. batch-system ids a restart must find
                with self.db.begin() as conn:
                    q.set_handles(conn, [j.job_id for j in batch], handles)
            for job, handle in zip(batch, handles, strict=True):
                self._active[job.job_id] = (live.spec.work_id, job.attempt, job.payload)
                self._handles[job.job_id] = handle
            if backend.runs_remotely:
                now = time.time()
                for job, handle in zip(batch, handles, strict=True):
                    self._remote[job.job_id] = RemoteJob(
                        job.job_id, job.attempt, handle, spec.backend, spec.timeout, now
                    )
                self.monitor.start()

    def _remote_spec(self, live: LiveWork) -> WorkSpec:
        """The work's spec as remote runners get it: with the job API's URL (started on
        first use when no server provides one)."""
        if self.job_api_url is None or self.job_token_issuer is None:
            from tasklift.service.job_api import JobAPIServer

            api = JobAPIServer(self, self.settings)
            self.job_api_url = api.start()
            self.job_token_issuer = api.issuer
            self._job_api = api
        if live.spec.service_url != self.job_api_url:
            live.spec = replace(live.spec, service_url=self.job_api_url)
        return live.spec

    def note_heartbeat(self, job_id: int) -> float:
        """A remote runner of ``job_id`` is alive now (kept in memory for the monitor)."""
        now = time.time()
        self._heartbeats[job_id] = now
        return now

    def last_heartbeats(self, job_ids: Sequence[int]) -> dict[int, float]:
        """The last heartbeat this engine heard from each job's runner (if any)."""
        beats = self._heartbeats
        return {j: beats[j] for j in job_ids if j in beats}

    def remote_jobs(self) -> list[RemoteJob]:
        """Attempts handed to remote backends and not yet reported (for the monitor)."""
        with self._lock:
            gone = [
                job_id
                for job_id, job in self._remote.items()
                if not self.is_active(job_id, job.attempt)
            ]
            for job_id in gone:
                del self._remote[job_id]
                self._heartbeats.pop(job_id, None)
            return list(self._remote.values())

    def _claim_ahead(self, conn: Any) -> list[tuple[LiveWork, set[int]]]:
        """Claim, in the caller's transaction, the queued jobs the next dispatch will hand out
        (the room the recorded outcomes freed): a refill then needs no transaction of its own.
        Only jobs already in memory; data-flow jobs are claimed with their inputs. Returns the
        claims to note in ``live.claimed`` once the transaction has committed."""
        claims: list[tuple[LiveWork, set[int]]] = []
        for live in self._live.values():
            if live.has_refs or not (live.pending or live.retries):
                continue
            backend = self._backends.get(live.spec.backend)
            if backend is None:
                continue
            room = backend.free_slots(live.spec) - len(live.claimed)
            if room <= 0:
                continue
            ids = []
            for job in itertools.chain(live.retries, live.pending):
                if len(ids) == room:
                    break
                if job.job_id not in live.claimed:
                    ids.append(job.job_id)
            if ids:
                claims.append((live, q.claim_jobs(conn, ids, self.engine_id)))
        return claims

    def _take(self, live: LiveWork, room: int) -> list[JobSpec]:
        batch: list[JobSpec] = []
        while live.retries and len(batch) < room:
            batch.append(live.retries.popleft())
        while len(batch) < room:
            if not live.pending and live.page_after is not None:
                self._page_in(live)
            if not live.pending:
                break
            batch.append(live.pending.popleft())
        return batch

    def _page_in(self, live: LiveWork) -> None:
        assert live.page_after is not None
        with self.db.connect() as conn:
            rows = q.pending_jobs(conn, live.spec.work_id, live.page_after, PAGE)
        if not rows:
            if live.stored is None:  # else more jobs are being stored: look again then
                live.page_after = None
            return
        for job_id, idx, attempts, payload in rows:
            live.pending.append(JobSpec(job_id, attempts + 1, payload))
            live.idx_of[job_id] = idx
        live.page_after = rows[-1][1]

    def _fail_unsubmitted(self, live: LiveWork, batch: list[JobSpec], exc: BackendError) -> None:
        now = time.time()
        for job in batch:
            self._active[job.job_id] = (live.spec.work_id, job.attempt, job.payload)
        self._record_locked(
            [
                Outcome(
                    job.job_id,
                    job.attempt,
                    ok=False,
                    error_type="BackendError",
                    error_message=str(exc),
                    retryable=False,
                    started_at=now,
                    finished_at=now,
                )
                for job in batch
            ]
        )

    # ------------------------------------------------------------------ outcomes (sink)
    def _announce(self, destination: str, messages: Sequence[Any]) -> None:
        """Tell in-process listeners, then the bus (call after the DB commit)."""
        if self.local_bus is not self.bus:
            self.local_bus.publish(destination, messages)
        self.bus.publish(destination, messages)

    def record_outcomes(self, outcomes: list[Outcome], *, hold: bool = True) -> None:
        """Store outcomes (DB commit first), publish terminal ones, queue retries.

        When the database fails (down, restarting), nothing of the batch is recorded: with
        ``hold`` the outcomes stay in memory and a retry thread records them once the database
        answers again (it tries every ``scan_interval``); without, the error is raised (the job
        API answers 5xx and the runner retries or spools).
        """
        with self._lock:
            try:
                publish = self._record_locked(outcomes)
            except SQLAlchemyError as exc:
                if not hold:
                    raise
                self._held.extend(outcomes)
                self._start_retrier()
                logger.error(
                    "engine %s: the database failed while recording %d outcomes; holding %d "
                    "in memory until it answers again: %s",
                    self.engine_id,
                    len(outcomes),
                    len(self._held),
                    exc,
                )
                return
            self._dispatch_guarded()
        for destination, messages in publish.items():
            self._announce(destination, messages)

    def _start_retrier(self) -> None:
        """Start the thread that retries what the database refused (call with the lock)."""
        if self._held_retrier is None:
            self._held_retrier = threading.Thread(
                target=self._retry_held, name="tasklift-held-outcomes", daemon=True
            )
            self._held_retrier.start()

    def _retry_held(self) -> None:
        """Thread: every ``scan_interval``, record the held outcomes, then dispatch the jobs a
        failed dispatch left queued; ends when both went through."""
        while not self._stop.wait(self.settings.scan_interval):
            self._record_held()
            with self._lock:
                if self._held:
                    continue
                try:
                    self._dispatch()
                except SQLAlchemyError as exc:
                    logger.error("engine %s: dispatch failed again: %s", self.engine_id, exc)
                    continue
                self._held_retrier = None
                return
        with self._lock:
            self._held_retrier = None

    def _record_held(self) -> None:
        """Record the outcomes held while the database was failing."""
        with self._lock:
            held, self._held = self._held, []
        if held:
            self.record_outcomes(held)
            with self._lock:
                if not self._held:
                    logger.warning(
                        "engine %s: the database answers again; %d held outcomes recorded",
                        self.engine_id,
                        len(held),
                    )

    def _dispatch_guarded(self) -> None:
        """:meth:`_dispatch` from a thread that must outlive a failing database."""
        try:
            self._dispatch()
        except SQLAlchemyError as exc:  # the jobs stay queued: the retry thread dispatches them
            logger.error("engine %s: dispatch failed on the database: %s", self.engine_id, exc)
            self._start_retrier()

    def _record_locked(self, outcomes: list[Outcome]) -> dict[str, list[q.ResultRecord]]:
        terminal_rows: list[dict[str, Any]] = []
        retry_rows: list[dict[str, Any]] = []
        per_work: dict[int, list[int]] = {}
        publish: dict[str, list[q.ResultRecord]] = {}
        retried: list[tuple[LiveWork, JobSpec]] = []
        taken: list[tuple[int, tuple[int, int, bytes], str | None]] = []  # undone on failure
        for outcome in outcomes:
            active = self._active.get(outcome.job_id)
            if active is None or active[1] != outcome.attempt:
                continue  # stale attempt, duplicate, or a job cancelled meanwhile
            work_id, attempt, payload = active
            live = self._live.get(work_id)
            if live is None:
                continue
            del self._active[outcome.job_id]
            handle = self._handles.pop(outcome.job_id, None)
            taken.append((outcome.job_id, active, handle))
            decision = decide(outcome, attempt, live.spec.retries)
            row = {
                "_id": outcome.job_id,
                "_state": decision.state.value,
                "_result": outcome.result,
                "_error_type": outcome.error_type,
                "_error_message": outcome.error_message,
                "_traceback": outcome.traceback,
                "_attempts": attempt,
                "_started_at": outcome.started_at,
                "_finished_at": outcome.finished_at,
                "_stdout": outcome.stdout,
                "_handle": handle,
            }
            if decision.retry:
                retry_rows.append(row)
                retried.append((live, JobSpec(outcome.job_id, attempt + 1, payload)))
                continue
            terminal_rows.append(row)
            counts = per_work.setdefault(work_id, [0, 0, 0])
            slot = {JobState.FINISHED: 0, JobState.SKIPPED: 2}.get(decision.state, 1)
            counts[slot] += 1
            row["_idx"] = live.idx_of.pop(outcome.job_id, -1)
            row["_work"] = work_id
        if not terminal_rows and not retry_rows:
            return publish
        try:
            done_works = self._commit_outcomes(per_work, terminal_rows, retry_rows, publish)
        except BaseException:
            # nothing was stored: the jobs are active again, as before this call
            for job_id, active, handle in taken:
                self._active[job_id] = active
                if handle is not None:
                    self._handles[job_id] = handle
            for row in terminal_rows:
                if row["_idx"] >= 0:
                    self._live[row["_work"]].idx_of[row["_id"]] = row["_idx"]
            raise
        for work_id, (finished, failed, _) in per_work.items():
            live = self._live[work_id]
            live.finished += finished
            live.failed += failed
        if self.result_latency_observer is not None:
            now = time.time()
            for row in terminal_rows:
                if row["_finished_at"]:
                    self.result_latency_observer(max(0.0, now - row["_finished_at"]))
        for row in terminal_rows:
            publish.setdefault(work_destination(row["_work"]), []).append(
                q.ResultRecord(
                    row["_id"],
                    row["_idx"],
                    row["_state"],
                    row["_result"],
                    row["_error_type"],
                    row["_error_message"],
                    row["_traceback"],
                    row["_attempts"],
                    row["_done_seq"],
                )
            )
        for live, job in retried:
            live.retries.append(job)
            logger.info(
                "work %s: job %d failed, retrying (attempt %d)",
                live.spec.name,
                job.job_id,
                job.attempt,
            )
        for work_id in done_works:
            self._live.pop(work_id, None)
        return publish

    def _commit_outcomes(
        self,
        per_work: dict[int, list[int]],
        terminal_rows: list[dict[str, Any]],
        retry_rows: list[dict[str, Any]],
        publish: dict[str, list[q.ResultRecord]],
    ) -> list[int]:
        """The transaction of :meth:`_record_locked`: counters, job rows, data-flow, claims.

        Changes no in-memory state but ``publish``, the rows' ``_done_seq`` and the jobs that
        data-flow releases until it has committed (the caller undoes its own changes when this
        raises; a released job whose release was rolled back fails its claim and is dropped).
        Returns the works that ended.
        """
        done_works: list[int] = []
        claims: list[tuple[LiveWork, set[int]]] = []
        with self._writer.begin() as conn:
            next_seq: dict[int, int] = {}
            for work_id, (finished, failed, skipped) in per_work.items():
                live = self._live[work_id]
                n_finished, n_failed = live.finished + finished, live.failed + failed
                # the end state as this engine's counts see it, set by the same statement
                # once the stored counters say every job is terminal
                guess = work_state(
                    live.n_jobs,
                    n_finished,
                    n_failed,
                    live.cancelled,
                    live.min_success,
                    max(0, live.n_jobs - n_finished - n_failed - live.cancelled),
                )
                counts = q.bump_work_counters(
                    conn, work_id, finished, failed, 0, skipped, done_status=guess.value
                )
                next_seq[work_id] = counts.last_seq - finished - failed - skipped + 1
                # the stored counters decide: other engines may have ended jobs of this work
                state = state_of(counts, live.min_success)
                if state in WORK_TERMINAL:
                    if state != guess:
                        q.set_work_status(conn, work_id, state.value, finished=True)
                    done_works.append(work_id)
            for row in terminal_rows:
                row["_done_seq"] = next_seq[row["_work"]]
                next_seq[row["_work"]] += 1
            q.store_terminal(conn, terminal_rows)
            q.store_retries(conn, retry_rows)
            for row in terminal_rows:
                spec = self._live[row["_work"]].spec
                if spec.kind == "workflow":  # a remote workflow's function ended
                    ok = row["_state"] == JobState.FINISHED.value
                    error = row["_traceback"] or f"{row['_error_type']}: {row['_error_message']}"
                    q.finish_workflow(
                        conn,
                        spec.workflow_id,
                        (WorkflowState.FINISHED if ok else WorkflowState.FAILED).value,
                        row["_result"] if ok else None,
                        None if ok else error,
                    )
            flowing = [row for row in terminal_rows if row["_work"] in self._upstream_works]
            if flowing:
                cascaded = self._flow_locked(conn, flowing)
                for work_id, record in cascaded:
                    publish.setdefault(work_destination(work_id), []).append(record)
            claims = self._claim_ahead(conn)
        for live, claimed in claims:
            live.claimed |= claimed
        return done_works

    def _flow_locked(
        self, conn: Any, rows: list[dict[str, Any]]
    ) -> list[tuple[int, q.ResultRecord]]:
        """Release dependents of finished jobs; end dependents of failed or skipped ones."""
        finished = [r["_id"] for r in rows if r["_state"] == JobState.FINISHED.value]
        broken = {
            r["_id"]: (r["_state"], f"{r['_error_type']}: {r['_error_message']}")
            for r in rows
            if r["_state"] != JobState.FINISHED.value
        }
        if finished:
            for work_id, job_id, idx, payload in dataflow.release(conn, finished):
                live = self._live.get(work_id)
                if live is None:
                    continue  # an engine that knows the work picks it up (scan)
                live.pending.append(JobSpec(job_id, 1, payload))
                live.idx_of[job_id] = idx
        cascaded: list[tuple[int, q.ResultRecord]] = []
        if broken:
            cascaded, states = dataflow.cascade(conn, broken)
            for work_id, state in states.items():
                if state in WORK_TERMINAL:
                    self._live.pop(work_id, None)
        return cascaded

    def requeue(self, jobs: list[tuple[int, int]]) -> None:
        """Put jobs a backend gave back into the queue, without charging an attempt."""
        with self._lock:
            rows = []
            for job_id, attempt in jobs:
                active = self._active.pop(job_id, None)
                if active is None or active[1] != attempt:
                    continue
                self._handles.pop(job_id, None)
                live = self._live.get(active[0])
                if live is None:
                    continue
                live.retries.appendleft(JobSpec(job_id, attempt, active[2]))
                rows.append((job_id, attempt - 1))
            if rows:
                try:
                    with self._writer.begin() as conn:
                        q.requeue_jobs(conn, rows)
                except SQLAlchemyError as exc:  # bookkeeping: the jobs are queued in memory
                    logger.error(
                        "engine %s: could not note %d requeued jobs in the database: %s",
                        self.engine_id,
                        len(rows),
                        exc,
                    )
            self._dispatch_guarded()

    def jobs_started(self, jobs: list[tuple[int, int]]) -> None:
        """Job runners started these attempts (recorded ``running`` in batches)."""
        # recorded by the attempts collaborator of the engine redesign (issue 13)

    def capacity_changed(self) -> None:
        """A backend has room again: dispatch more."""
        with self._lock:
            self._dispatch_guarded()

    # ------------------------------------------------------------------ housekeeping
    def retry_failed(self, work_id: int) -> int:
        """Run a work's failed jobs again (fresh attempts); return how many."""
        with self._lock:
            with self.db.begin() as conn:
                reopened = q.reopen_failed_jobs(conn, work_id)
                downstream = dataflow.reopen_downstream(conn, [r[0] for r in reopened])
            for other in downstream:  # their jobs wait for the retried ones, then run
                if other not in self._live:
                    with self.db.connect() as conn:
                        other_row = (
                            conn.execute(select(q.works).where(q.works.c.id == other))
                            .mappings()
                            .one()
                        )
                    self._live[other] = self._live_from_row(dict(other_row))
            with self.db.connect() as conn:
                row = (
                    conn.execute(select(q.works).where(q.works.c.id == work_id)).mappings().first()
                )
            if row is None:
                raise NotFoundError(f"work {work_id} does not exist")
            if not reopened:
                return 0
            live = self._live.get(work_id)
            if live is None:
                live = self._live_from_row(dict(row))
                self._live[work_id] = live
            else:
                live.failed -= len(reopened)
            for job_id, idx, payload in reopened:
                live.retries.append(JobSpec(job_id, 1, payload))
                live.idx_of[job_id] = idx
            logger.info("work %s: retrying %d failed jobs", live.spec.name, len(reopened))
            self._dispatch()
            return len(reopened)

    def close(self) -> None:
        """Stop backends and release the database."""
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            backends = list(self._backends.values())
        self.monitor.close()
        for backend in backends:
            backend.close()
        if self._job_api is not None:
            self._job_api.close()
        self.bus.close()
        self.db.dispose()
