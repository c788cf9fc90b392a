"""What the engine holds in memory: ``LiveWork`` (a work that still has jobs to dispatch or to
hear from), ``Memory`` (all of it: live works, active attempts, the works others take inputs
from), and ``WorkRecord`` (what a caller gets back for a new work).

Changed only on the engine's loop thread (:mod:`tasklift.engine.loop`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from tasklift.engine.attempts import Attempts
from tasklift.records import JobSpec, WorkSpec

__all__ = ["LiveWork", "Memory", "WorkRecord"]


@dataclass
class WorkRecord:
    """What the engine returns for a new work."""

    work_id: int
    n_jobs: int
    n_reused: int


@dataclass
class LiveWork:
    """In-memory state of a work that still has jobs to dispatch or to hear from."""

    spec: WorkSpec
    n_jobs: int
    min_success: float
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    pending: deque[JobSpec] = field(default_factory=deque)
    retries: deque[JobSpec] = field(default_factory=deque)
    page_after: int | None = None  # next DB page starts after this idx (large works)
    idx_of: dict[int, int] = field(default_factory=dict)
    has_refs: bool = False  # inputs come from upstream jobs: fill them in at dispatch
    claimed: set[int] = field(default_factory=set)  # pending here, claimed when inserted
    stored: int | None = None  # jobs 0..stored-1 are in the DB; None: all of them
    store_done: threading.Event | None = None  # set when a chunked store ended

    def has_pending(self) -> bool:
        """True while jobs wait for dispatch: retries, queued ones, or pages still in the DB."""
        if self.retries or self.pending:
            return True
        if self.page_after is None:
            return False
        return self.stored is None or self.page_after + 1 < self.stored


@dataclass
class Memory:
    """Everything the engine holds in memory, owned by its loop thread."""

    works: dict[int, LiveWork] = field(default_factory=dict)
    attempts: Attempts = field(default_factory=Attempts)
    upstream_works: set[int] = field(default_factory=set)
    """Works that other works take inputs from (their ends release or fail dependents)."""
    store_errors: dict[int, str] = field(default_factory=dict)
    """Works whose chunked store stopped short, and why."""
    closed: bool = False
