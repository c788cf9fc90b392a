"""How an engine finds its work again: resuming running works after a restart (adopting the
remote jobs that outlived it), closing workflows whose submitting process died, and scanning
for works that other engines created."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from tasklift.bus.base import work_destination
from tasklift.db import dataflow, tables
from tasklift.db.jobs import cancel_open_jobs, requeue_jobs, store_unstored_jobs
from tasklift.db.workflows import finish_workflow
from tasklift.db.works import running_work_ids, set_storing_by, set_work_status
from tasklift.engine.announce import Announcer
from tasklift.engine.attempts import Attempt
from tasklift.engine.backend_pool import BackendPool
from tasklift.engine.dispatch import Dispatcher
from tasklift.engine.live import LiveWork, Memory
from tasklift.engine.loop import EngineLoop, LoopStopped
from tasklift.errors import BackendError, ConfigError
from tasklift.records import WorkOptions
from tasklift.settings import Settings
from tasklift.states import JobState, WorkflowState, WorkState
from tasklift.submission import spec_from_row

__all__ = ["Recovery", "close_orphaned_workflows", "process_alive"]

logger = logging.getLogger(__name__)


@dataclass(eq=False, repr=False, kw_only=True)
class Recovery:
    """Resume, adopt and scan for one engine. Its methods that change the engine's memory run
    on the engine's loop thread; the scan thread only reads the database and hands the loop
    what it found."""

    settings: Settings
    db: Engine
    memory: Memory
    engine_id: str
    backends: BackendPool
    dispatcher: Dispatcher
    announcer: Announcer
    loop: EngineLoop
    watch_remote: Callable[[], None]
    archive_file: Callable[[str], str]
    _scanner: threading.Thread | None = field(default=None, init=False)

    def start_scanning(self, stop: threading.Event, dispatch: Callable[[], None]) -> None:
        """Scan for works other engines created, every ``scan_interval`` (a server engine)."""
        if self._scanner is not None:
            return
        self._scanner = threading.Thread(
            target=self._scan_loop, args=(stop, dispatch), name="tasklift-engine-scan", daemon=True
        )
        self._scanner.start()

    def resume_running_works(self) -> None:
        """Queue again the unfinished jobs of running works (a restarted server); end those
        whose jobs this engine was still storing when it stopped (the rest never exists).
        Loop thread."""
        with self.db.begin() as conn:
            running = (
                conn.execute(
                    select(tables.works).where(tables.works.c.status == WorkState.RUNNING.value)
                )
                .mappings()
                .all()
            )
        for row in [r for r in running if r["storing_by"] == self.engine_id]:
            self._end_interrupted_store(dict(row))
        # works other engines are storing are theirs: they run as any other
        rows = [r for r in running if r["storing_by"] != self.engine_id]
        adopted = self._take_back_jobs(rows)
        for row in rows:
            live = self.live_from_row(dict(row))
            live.page_after = -1
            self.memory.works[row["id"]] = live
            self._adopt(live, adopted.get(row["id"], []))
            logger.info("resumed work %s (id %d)", row["name"], row["id"])
        if rows:
            self.dispatcher.dispatch()

    def _take_back_jobs(self, rows: Sequence[Any]) -> dict[int, list[Any]]:
        """Jobs this engine handed out before it restarted and never heard back from go back
        to the queue (not the job's fault); those still running on a batch system are
        returned, to be watched again rather than rerun. Jobs other engines hold are theirs."""
        active = [JobState.QUEUED.value, JobState.RUNNING.value]
        adopted: dict[int, list[Any]] = {}
        with self.db.begin() as conn:
            for row in rows:
                mine = (
                    tables.jobs.c.work_id == row["id"],
                    tables.jobs.c.state.in_(active),
                    tables.jobs.c.claimed_by == self.engine_id,
                )
                if self._runners_outlive_engine(row):
                    adopted[row["id"]] = list(
                        conn.execute(
                            select(
                                tables.jobs.c.id,
                                tables.jobs.c.idx,
                                tables.jobs.c.attempts,
                                tables.jobs.c.payload,
                                tables.jobs.c.backend_handle,
                            ).where(*mine, tables.jobs.c.backend_handle.is_not(None))
                        )
                    )
                    mine = (*mine, tables.jobs.c.backend_handle.is_(None))
                taken = conn.execute(select(tables.jobs.c.id, tables.jobs.c.attempts).where(*mine))
                requeue_jobs(conn, [(int(j), int(n) - 1) for j, n in taken])
        return adopted

    def _end_interrupted_store(self, row: dict[str, Any]) -> None:
        """Cancel a work whose jobs this engine was storing when it stopped: its missing jobs
        get placeholder rows, cancelled with its open ones in one transaction, so every job
        of the work ends and its readers (counting ``n_jobs`` results) see it end."""
        work_id, n_jobs = int(row["id"]), int(row["n_jobs"])
        live = self.live_from_row(row)  # notes whether other works take its results
        with self.db.begin() as conn:
            stored = store_unstored_jobs(conn, work_id, n_jobs)
            message = (
                f"the engine stopped while storing this work's jobs ({stored} of {n_jobs} "
                "stored): run the workflow again; its finished jobs are reused"
            )
            cancelled = cancel_open_jobs(conn, work_id, message)
            cascaded: list[tuple[int, Any]] = []
            if cancelled and work_id in self.memory.upstream_works:
                cascaded, _ = dataflow.cascade(
                    conn,
                    {r.job_id: (JobState.CANCELLED.value, message) for r in cancelled},
                )
            set_work_status(conn, work_id, WorkState.CANCELLED.value, finished=True)
            set_storing_by(conn, work_id, None)
        self.memory.store_errors[work_id] = message
        logger.warning("work %s (id %d) cancelled: %s", live.spec.name, work_id, message)
        self.announcer.announce(work_destination(work_id), cancelled)
        for other, record in cascaded:
            self.announcer.announce(work_destination(other), [record])

    def _runners_outlive_engine(self, row: Any) -> bool:
        """True when the work's backend runs jobs that survive this engine (e.g. Slurm)."""
        name = WorkOptions.from_json(row["options"]).backend
        try:
            return self.backends.get(name).handles_outlive_engine
        except (ConfigError, BackendError) as exc:
            logger.error("work %d: backend %s unavailable after restart: %s", row["id"], name, exc)
            return False

    def _adopt(self, live: LiveWork, jobs: list[Any]) -> None:
        """Take back jobs that kept running on the backend while the engine was away."""
        if not jobs:
            return
        backend = self.backends.get(live.spec.backend)
        remote = backend.runs_remotely
        spec = self.dispatcher.remote_spec(live) if remote else live.spec
        for job_id, idx, attempts, payload, handle in jobs:
            self.memory.attempts.add(
                Attempt(
                    job_id,
                    spec.work_id,
                    max(1, int(attempts)),
                    payload,
                    handle,
                    spec.backend,
                    remote,
                    spec.timeout,
                    0.0,
                )
            )
            live.idx_of[job_id] = idx
        if remote:
            self.watch_remote()
        logger.info("work %s: %d running jobs adopted from the backend", spec.name, len(jobs))

    def _scan_loop(self, stop: threading.Event, dispatch: Callable[[], None]) -> None:
        """Pick up running works that other engines (or servers) created; drop ended ones."""
        while not stop.wait(self.settings.scan_interval):
            try:
                with self.db.connect() as conn:
                    running = {
                        int(r["id"]): dict(r)
                        for r in conn.execute(
                            select(tables.works).where(
                                tables.works.c.status == WorkState.RUNNING.value
                            )
                        ).mappings()
                    }
                self.loop.call(self._apply_scan, running)
                dispatch()  # jobs a failed dispatch left queued
            except LoopStopped:
                return
            except Exception:  # keep scanning; the next round retries
                logger.exception("engine %s: scanning for works failed", self.engine_id)

    def _apply_scan(self, running: dict[int, dict[str, Any]]) -> None:
        """Loop thread: forget works that ended elsewhere, take up the new ones."""
        memory = self.memory
        if memory.closed:
            return
        busy = {a.work_id for a in memory.attempts.snapshot()}
        for work_id in [w for w in memory.works if w not in running]:
            if work_id not in busy:
                del memory.works[work_id]  # ended elsewhere (another engine, a cancel)
        added = False
        for work_id, row in running.items():
            live = memory.works.get(work_id)
            if live is None:
                live = self.live_from_row(row)
                memory.works[work_id] = live
            if live.page_after is None and not live.pending and not live.retries:
                live.page_after = -1  # look (again) for pending jobs in the DB
                added = True
        if added:
            self.dispatcher.dispatch()

    def live_from_row(self, row: dict[str, Any]) -> LiveWork:
        """Rebuild a work's in-memory state from its stored row and options."""
        options = WorkOptions.from_json(row["options"])
        spec = spec_from_row(
            row,
            options=options,
            cache_dir=str(self.settings.cache_dir),
            archive_file=self.archive_file,
        )
        with self.db.connect() as conn:
            upstream = (
                conn.execute(
                    select(tables.edges.c.upstream_work_id).where(
                        tables.edges.c.work_id == row["id"]
                    )
                )
                .scalars()
                .all()
            )
            has_dependents = conn.execute(
                select(tables.edges.c.id)
                .where(tables.edges.c.upstream_work_id == row["id"])
                .limit(1)
            ).first()
        if has_dependents is not None:
            self.memory.upstream_works.add(int(row["id"]))
        live = LiveWork(
            spec=spec,
            n_jobs=row["n_jobs"],
            min_success=options.min_success,
            finished=row["n_finished"],
            failed=row["n_failed"],
            cancelled=row["n_cancelled"],
        )
        live.has_refs = bool(upstream)
        return live


def close_orphaned_workflows(db: Engine) -> list[int]:
    """Close the running workflows whose submitting process on this host is gone.

    Their open jobs become ``cancelled`` (counted as cancelled), their running works and the
    workflow itself ``cancelled``, with the reason as the workflow's error: states and counts
    agree. Called when an engine starts and by ``tasklift ls``/``show`` on a local database.

    Returns:
        The ids of the workflows closed.
    """
    host = socket.gethostname()
    closed = []
    with db.begin() as conn:
        rows = conn.execute(
            select(
                tables.workflows.c.id, tables.workflows.c.client_pid, tables.workflows.c.created_at
            ).where(
                tables.workflows.c.status == WorkflowState.RUNNING.value,
                tables.workflows.c.client_host == host,
            )
        ).all()
        for workflow_id, pid, created_at in rows:
            if pid is None or process_alive(int(pid), float(created_at)):
                continue  # created through the service, or its process still runs
            message = (
                f"the submitting process (pid {pid}) exited before the workflow ended; "
                "its open jobs were cancelled"
            )
            for work_id in running_work_ids(conn, workflow_id):
                cancel_open_jobs(conn, work_id, message)
                set_work_status(conn, work_id, WorkState.CANCELLED.value, finished=True)
            finish_workflow(conn, workflow_id, WorkflowState.CANCELLED.value, None, message)
            logger.info("workflow %d cancelled: %s", workflow_id, message)
            closed.append(int(workflow_id))
    return closed


def process_alive(pid: int, since: float) -> bool:
    """True when process ``pid`` runs and started no later than ``since`` (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: a zombie has ended; the start time tells a reused pid apart
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if stat[0] in ("Z", "X"):
            return False
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        started = boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    return started <= since + 2.0
