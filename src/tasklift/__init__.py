"""tasklift: Function-as-a-Task workflows for scientists.

``@work`` makes a function a distributed task (one job per kwargs dict), ``@workflow`` marks
the steering logic, and ``Workflow(...).run()`` runs it on the embedded engine.

Names are imported on first use (a job runner that only needs ``work`` does not pay for the
database layer); ``__all__`` lists every public name.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasklift.api.decorators import work, workflow
    from tasklift.api.engines import shutdown
    from tasklift.api.map_result import MapResult
    from tasklift.api.results import CompletedJob, Progress, Work
    from tasklift.api.run import Workflow
    from tasklift.api.waiting import AsyncResult
    from tasklift.errors import (
        ArchiveError,
        BackendError,
        BusError,
        ConfigError,
        JobFailure,
        JobSkipped,
        NotFoundError,
        SerializationError,
        SubmissionError,
        TaskliftError,
        WorkFailed,
        WorkTimeout,
    )
    from tasklift.keys import get_unique_id_for_dict
    from tasklift.states import JobState, WorkflowState, WorkState

__version__ = "0.1.0"

_WHERE: dict[str, str] = {
    "ArchiveError": "tasklift.errors",
    "AsyncResult": "tasklift.api.waiting",
    "BackendError": "tasklift.errors",
    "BusError": "tasklift.errors",
    "CompletedJob": "tasklift.api.results",
    "ConfigError": "tasklift.errors",
    "JobFailure": "tasklift.errors",
    "JobSkipped": "tasklift.errors",
    "JobState": "tasklift.states",
    "MapResult": "tasklift.api.map_result",
    "NotFoundError": "tasklift.errors",
    "Progress": "tasklift.api.results",
    "SerializationError": "tasklift.errors",
    "SubmissionError": "tasklift.errors",
    "TaskliftError": "tasklift.errors",
    "Work": "tasklift.api.results",
    "WorkFailed": "tasklift.errors",
    "WorkState": "tasklift.states",
    "WorkTimeout": "tasklift.errors",
    "Workflow": "tasklift.api.run",
    "WorkflowState": "tasklift.states",
    "get_unique_id_for_dict": "tasklift.keys",
    "shutdown": "tasklift.api.engines",
    "work": "tasklift.api.decorators",
    "workflow": "tasklift.api.decorators",
}

__all__ = [
    "ArchiveError",
    "AsyncResult",
    "BackendError",
    "BusError",
    "CompletedJob",
    "ConfigError",
    "JobFailure",
    "JobSkipped",
    "JobState",
    "MapResult",
    "NotFoundError",
    "Progress",
    "SerializationError",
    "SubmissionError",
    "TaskliftError",
    "Work",
    "WorkFailed",
    "WorkState",
    "WorkTimeout",
    "Workflow",
    "WorkflowState",
    "__version__",
    "get_unique_id_for_dict",
    "shutdown",
    "work",
    "workflow",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tasklift' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


logging.getLogger(__name__).addHandler(logging.NullHandler())
