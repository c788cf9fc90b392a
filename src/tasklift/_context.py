"""Process-local context: the running workflow, and whether this process is a job runner."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["ScriptImportStop", "current_workflow", "importing_script", "in_job_runner"]

current_workflow: ContextVar[Any | None] = ContextVar("tasklift_current_workflow", default=None)
"""The :class:`~tasklift.api.workflow.WorkflowRun` whose function is running in this context."""

importing_script: ContextVar[bool] = ContextVar("tasklift_importing_script", default=False)
"""True while the job runner imports a script that was run as ``__main__``."""

in_job_runner: ContextVar[bool] = ContextVar("tasklift_in_job_runner", default=False)
"""True inside a job runner process."""


class ScriptImportStop(BaseException):
    """Raised by ``Workflow.run`` while a job runner imports a script, to stop the import."""
