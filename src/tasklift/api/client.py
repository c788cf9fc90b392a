"""``EngineClient``: the one interface between the client API and what serves it.

The client API (``Workflow``, ``@work``, ``Work``, ``AsyncResult``) reaches its engine only
through these members. Two implementations:

- :class:`tasklift.engine.engine.Engine`, the embedded engine (``service="local"``);
- :class:`tasklift.api.remote.HttpService`, a ``tasklift server`` over HTTP (``service=URL``).

``tests/integration/test_engine_client.py`` calls every member on both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tasklift.archive import PackedArchive
    from tasklift.backends.base import Backend
    from tasklift.bus.base import Bus
    from tasklift.engine.live import WorkRecord
    from tasklift.records import ResultRecord, WorkSpec
    from tasklift.settings import Settings
    from tasklift.states import WorkflowState
    from tasklift.submission import Submission

__all__ = ["WORK_ROW_KEYS", "EngineClient"]

WORK_ROW_KEYS = frozenset(
    {"id", "workflow_id", "name", "status", "n_jobs", "n_finished", "n_failed", "n_cancelled"}
)
"""What :meth:`EngineClient.work_row` holds on either side (with the same meaning)."""


@runtime_checkable
class EngineClient(Protocol):
    """What the client API asks of its engine, embedded or over HTTP."""

    settings: Settings
    """The client's settings (``cache_dir`` goes into every work's spec)."""
    bus: Bus
    """Where a work's results are announced (``work.<id>``): subscribe before dispatch."""

    def create_workflow(self, **values: Any) -> int:
        """Register a workflow run (name, function, source_dir, archive_sha, archive_size,
        init_env, backend, fresh, parent_id, arguments as JSON bytes); return its id."""
        ...

    def for_workflow(self, workflow_id: int) -> EngineClient:
        """The client that acts for workflow ``workflow_id``: this one, or one with that
        sub-workflow's own credentials (then the caller closes it)."""
        ...

    def finish_workflow(
        self, workflow_id: int, status: WorkflowState, result: bytes | None, error: str | None
    ) -> None:
        """Store how a workflow run ended (its JSON result or its error text).

        Raises:
            WorkflowFailedError: it had been cancelled meanwhile (over HTTP).
        """
        ...

    def store_archive(self, packed: PackedArchive) -> str | None:
        """Keep the workflow's source archive (once per hash). Return where this engine's
        jobs find it, or ``None`` when the server places it itself."""
        ...

    def add_backend(self, name: str, backend: Backend) -> None:
        """Run works named ``backend=name`` on this backend object.

        Raises:
            ConfigError: the engine is a server (an object cannot travel there).
        """
        ...

    def submit_work(
        self, submission: Submission, on_stored: Callable[[WorkRecord], None] | None = None
    ) -> tuple[WorkSpec, WorkRecord]:
        """Store a work with its jobs and queue them; ``on_stored`` is called with the new
        work before any of its jobs can end (subscribe to its results there)."""
        ...

    def wait_stored(self, work_id: int, timeout: float | None = None) -> bool:
        """Wait until every job of a work is stored; False when ``timeout`` passed first."""
        ...

    def store_error(self, work_id: int) -> str | None:
        """Why storing a work's jobs stopped short (``None``: it did not, or cannot tell)."""
        ...

    def results(self, work_id: int, since: int = 0, limit: int | None = None) -> list[ResultRecord]:
        """Terminal jobs of a work that ended after the first ``since`` ones.

        Raises:
            DatabaseUnavailable: the embedded engine's database did not answer.
        """
        ...

    def work_row(self, work_id: int) -> dict[str, Any]:
        """The work: at least :data:`WORK_ROW_KEYS`.

        Raises:
            NotFoundError: there is no such work.
        """
        ...

    def running_count(self, work_id: int) -> int:
        """How many jobs of a work are handed to a backend right now (queued or running)."""
        ...

    def cancel_work(self, work_id: int, message: str = "cancelled by the user") -> int:
        """Cancel a work's open jobs; return how many were cancelled."""
        ...

    def close(self) -> None:
        """Release what the client holds (an engine: its backends and database)."""
        ...
