"""Dispatch: hand the pending jobs of live works to their backends while the backends have
room, claiming them in the database first (so no two engines run one job), and note each
handed-out attempt. Runs on the engine's loop thread (:mod:`tasklift.engine.loop`).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine as DBEngine
from sqlalchemy.exc import SQLAlchemyError

from tasklift.db import dataflow
from tasklift.db.jobs import claim_jobs, pending_jobs, set_handles
from tasklift.db.session import SerialWriter
from tasklift.engine.attempts import Attempt
from tasklift.engine.backend_pool import BackendPool
from tasklift.engine.job_api_access import JobAPIAccess
from tasklift.engine.live import LiveWork, Memory
from tasklift.errors import BackendError
from tasklift.records import JobSpec, Outcome, WorkSpec

__all__ = ["PAGE", "Dispatcher"]

logger = logging.getLogger(__name__)

PAGE = 5_000
"""Jobs of a large work paged into memory at a time."""


@dataclass(eq=False, repr=False)
class Dispatcher:
    """Hands pending jobs to backends (loop thread)."""

    memory: Memory
    db: DBEngine
    writer: SerialWriter
    backends: BackendPool
    engine_id: str
    job_api: JobAPIAccess
    fail: Callable[[list[Outcome]], None]
    """Records failures of attempts the backend refused (on the loop thread)."""
    watch_remote: Callable[[], None]
    """Starts the monitor once attempts run remotely."""

    def dispatch(self) -> None:
        """Hand pending jobs to backends while they have room.

        Raises:
            SQLAlchemyError: claiming failed; the jobs stay queued in memory.
        """
        memory = self.memory
        if memory.closed:
            return
        lives = list(memory.works.values())
        # jobs that take inputs from other jobs go first (newest chain stage first): a chain
        # then finishes job by job instead of stage by stage (job-level pipelining)
        order = [lv for lv in reversed(lives) if lv.has_refs] + [
            lv for lv in lives if not lv.has_refs
        ]
        for live in order:
            if live.has_pending():
                self._dispatch_work(live)

    def _dispatch_work(self, live: LiveWork) -> None:
        backend = self.backends.get(live.spec.backend)
        room = backend.free_slots(live.spec)
        if room <= 0:
            return
        batch = self._claim(live, self._take(live, room))
        if not batch:
            return
        spec = live.spec
        if backend.runs_remotely:
            spec = self.remote_spec(live)
        issue = self.job_api.issuer  # set for remote backends by remote_spec above
        if (spec.kind == "workflow" or backend.runs_remotely) and issue is not None:
            batch = [JobSpec(j.job_id, j.attempt, j.payload, issue(spec, j)) for j in batch]
        try:
            handles = backend.submit(spec, batch)
        except BackendError as exc:
            logger.error(
                "backend %s refused jobs of %s: %s", live.spec.backend, live.spec.name, exc
            )
            self._fail_unsubmitted(live, batch, exc)
            return
        if backend.handles_outlive_engine:  # e.g. batch-system ids a restart must find
            with self.db.begin() as conn:
                set_handles(conn, [j.job_id for j in batch], handles)
        now = time.time()
        remote = backend.runs_remotely
        for job, handle in zip(batch, handles, strict=True):
            self.memory.attempts.add(
                Attempt(
                    job.job_id,
                    spec.work_id,
                    job.attempt,
                    job.payload,
                    handle,
                    spec.backend,
                    remote,
                    spec.timeout,
                    now,
                )
            )
        if remote:
            self.watch_remote()

    def _claim(self, live: LiveWork, batch: list[JobSpec]) -> list[JobSpec]:
        """Claim a batch in the database (those not claimed when inserted); the jobs another
        engine took are dropped. Data-flow jobs get their inputs filled in."""
        if not batch:
            return batch
        claimed = {j.job_id for j in batch if j.job_id in live.claimed}
        live.claimed -= claimed
        if len(claimed) < len(batch) or live.has_refs:  # some were not claimed when inserted
            claimed_before = set(claimed)
            try:
                with self.writer.begin() as conn:
                    rest = [j.job_id for j in batch if j.job_id not in claimed]
                    if rest:
                        claimed |= claim_jobs(conn, rest, self.engine_id)
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
        return batch

    def remote_spec(self, live: LiveWork) -> WorkSpec:
        """The work's spec as remote runners get it: with the job API's URL."""
        url, _ = self.job_api.ensure()
        if live.spec.service_url != url:
            live.spec = replace(live.spec, service_url=url)
        return live.spec

    def claim_ahead(self, conn: Any) -> list[tuple[LiveWork, set[int]]]:
        """Claim, in the caller's transaction, the queued jobs the next dispatch will hand out
        (the room the recorded outcomes freed): a refill then needs no transaction of its own.
        Only jobs already in memory; data-flow jobs are claimed with their inputs. Returns the
        claims to note in ``live.claimed`` once the transaction has committed."""
        claims: list[tuple[LiveWork, set[int]]] = []
        for live in self.memory.works.values():
            if live.has_refs or not (live.pending or live.retries):
                continue
            backend = self.backends.started(live.spec.backend)
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
                claims.append((live, claim_jobs(conn, ids, self.engine_id)))
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
            rows = pending_jobs(conn, live.spec.work_id, live.page_after, PAGE)
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
            self.memory.attempts.add(
                Attempt(job.job_id, live.spec.work_id, job.attempt, job.payload)
            )
        self.fail(
            [
                Outcome.failure(
                    job.job_id,
                    job.attempt,
                    "BackendError",
                    str(exc),
                    retryable=False,
                    started_at=now,
                    finished_at=now,
                )
                for job in batch
            ]
        )
