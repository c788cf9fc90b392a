"""Every exception pickles (they cross process boundaries) and sits under TaskliftError."""

import pickle

import pytest

from tasklift import errors


def instances():
    failure = errors.JobFailure("k" * 64, {"x": 1}, "ValueError", "bad", "Traceback...", 3)
    return [
        errors.SubmissionError("bad input", key="x"),
        errors.WorkFailed("w", [failure], 2, 1, 1.0),
        errors.WorkTimeout("w", 1.5, 1, 2),
        errors.ConfigError("c"),
        errors.ArchiveError("a"),
        errors.BackendError("b"),
        errors.BusError("u"),
        errors.NotFoundError("n"),
        errors.SerializationError("s"),
    ]


@pytest.mark.parametrize("exc", instances(), ids=lambda e: type(e).__name__)
def test_pickles_with_fields_and_message(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert vars(back) == vars(exc)
    assert isinstance(back, errors.TaskliftError)


def test_work_failed_message_names_failures():
    failure = errors.JobFailure("ab" * 32, {"x": 1}, "ValueError", "bad x", "Traceback: here", 3)
    text = str(errors.WorkFailed("evaluate", [failure], 10, 9))
    assert "1 of 10 jobs failed" in text and "ValueError: bad x" in text
    assert "Traceback: here" in text
