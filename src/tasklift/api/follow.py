"""``WorkflowHandle``: a workflow known by id on a server, followed until it ends."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tasklift.errors import WorkflowFailedError, WorkTimeout
from tasklift.serializers import decode_value
from tasklift.states import WorkflowState

if TYPE_CHECKING:
    from tasklift.api.http import HttpClient

__all__ = ["WorkflowHandle"]


class WorkflowHandle:
    """A workflow known by id on a service: its status and, once it ended, its result."""

    def __init__(self, workflow_id: int, service: HttpClient) -> None:
        self.workflow_id = workflow_id
        self._service = service

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.workflow_id}>"

    @property
    def status(self) -> WorkflowState:
        """The workflow's state as stored."""
        return WorkflowState(self._service.get(f"/workflows/{self.workflow_id}")["status"])

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the workflow to end and return its return value.

        Raises:
            WorkflowFailedError: the workflow failed or was cancelled (with its error).
            WorkTimeout: ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.05
        while True:
            wf = self._service.get(f"/workflows/{self.workflow_id}")
            if wf["status"] == WorkflowState.FINISHED.value:
                return decode_value(wf["result"])  # tuples, arrays ... as they were returned
            if wf["status"] in (WorkflowState.FAILED.value, WorkflowState.CANCELLED.value):
                raise WorkflowFailedError(self.workflow_id, wf["status"], wf["error"] or "")
            if deadline is not None and time.monotonic() >= deadline:
                raise WorkTimeout(f"workflow {self.workflow_id}", float(timeout or 0), 0, 1)
            time.sleep(delay if deadline is None else min(delay, deadline - time.monotonic()))
            delay = min(delay * 1.5, 2.0)
