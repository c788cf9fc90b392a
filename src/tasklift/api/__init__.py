"""The client API: ``work``, ``workflow``, ``Workflow``, and the handles they return."""

from tasklift.api.decorators import WorkFunction, work, workflow
from tasklift.api.results import AsyncResult, MapResult, Progress, Work
from tasklift.api.run import Workflow

__all__ = [
    "AsyncResult",
    "MapResult",
    "Progress",
    "Work",
    "WorkFunction",
    "Workflow",
    "work",
    "workflow",
]
