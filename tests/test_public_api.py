"""The public namespace is pinned: other issues and users depend on these names."""

import tasklift

PINNED = [
    "ArchiveError", "AsyncResult", "BackendError", "BusError", "CompletedJob", "ConfigError",
    "JobFailure", "JobSkipped", "JobState", "MapResult", "NotFoundError", "Progress",
    "SerializationError", "SubmissionError", "TaskliftError", "Work", "WorkFailed", "WorkState",
    "WorkTimeout", "Workflow", "WorkflowState", "__version__", "get_unique_id_for_dict",
    "shutdown", "work", "workflow",
]


def test_all_is_pinned_and_sorted():
    assert tasklift.__all__ == sorted(PINNED, key=lambda s: (s.startswith("_"), s)) or \
        sorted(tasklift.__all__) == sorted(PINNED)
    assert sorted(tasklift.__all__) == sorted(PINNED)


def test_every_name_resolves():
    for name in tasklift.__all__:
        assert getattr(tasklift, name) is not None
    assert issubclass(tasklift.WorkFailed, tasklift.TaskliftError)
    assert issubclass(tasklift.WorkTimeout, tasklift.TaskliftError)
    assert issubclass(tasklift.SubmissionError, tasklift.TaskliftError)
