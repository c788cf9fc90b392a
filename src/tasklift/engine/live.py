"""The engine's in-memory records of a work: ``WorkRecord`` (what a caller gets back for a
new work) and ``LiveWork`` (the state of a work that still has jobs to dispatch or hear from)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from tasklift.records import JobSpec, WorkSpec

__all__ = ["LiveWork", "WorkRecord"]


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
