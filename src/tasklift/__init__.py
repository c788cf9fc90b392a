"""tasklift: Function-as-a-Task workflows for scientists.

``@work`` makes a function a distributed task (one job per kwargs dict), ``@workflow`` marks
the steering logic, and ``Workflow(...).run()`` runs it on the embedded engine.
"""

import logging

from tasklift.api.decorators import work, workflow
from tasklift.api.results import AsyncResult, MapResult, Progress, Work
from tasklift.api.run import Workflow, shutdown
from tasklift.errors import (
    ArchiveError,
    BackendError,
    BusError,
    ConfigError,
    JobFailure,
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

__all__ = [
    "ArchiveError",
    "AsyncResult",
    "BackendError",
    "BusError",
    "ConfigError",
    "JobFailure",
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

logging.getLogger(__name__).addHandler(logging.NullHandler())
