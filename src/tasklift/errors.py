"""The whole tasklift exception tree.

::

    TaskliftError
    ├── SubmissionError        bad input found before anything runs (nothing was stored)
    ├── WorkFailed             a work ended with fewer successful jobs than its min_success
    ├── JobSkipped             the one job whose result was asked for was skipped (when=)
    ├── WorkTimeout            waiting for results took longer than the caller allowed
    ├── WorkflowFailedError    a workflow (waited for by id) failed or was cancelled
    ├── ConfigError            an unknown name, a malformed URL, an invalid setting
    ├── ArchiveError           packing, uploading or extracting a source archive failed
    ├── BackendError           a backend could not start, submit, poll or cancel
    ├── BusError               the result bus could not connect, publish or subscribe
    ├── NotFoundError          a workflow, work or job id that does not exist (or not yours)
    ├── AuthenticationError    no credential, or a bad/expired/revoked one (HTTP 401)
    ├── PermissionDeniedError  a valid credential used beyond its scope (HTTP 403)
    ├── ConflictError          the request contradicts what is stored (HTTP 409)
    ├── ServiceError           a tasklift server could not be reached or answered 5xx
    └── SerializationError     a value could not be encoded or decoded by its serializer

Every class passes its own arguments to ``super().__init__`` and builds its message in
``__str__``, so each one pickles (exceptions cross process boundaries here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ArchiveError",
    "AuthenticationError",
    "BackendError",
    "BusError",
    "ConfigError",
    "ConflictError",
    "JobFailure",
    "JobSkipped",
    "NotFoundError",
    "PermissionDeniedError",
    "SerializationError",
    "ServiceError",
    "SubmissionError",
    "TaskliftError",
    "WorkFailed",
    "WorkTimeout",
    "WorkflowFailedError",
    "short_repr",
]

REPR_LIMIT = 120
"""Characters of a job's kwargs shown in messages."""


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters (``...`` marks the cut)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TaskliftError(Exception):
    """Root of every error tasklift raises on purpose."""


class SubmissionError(TaskliftError):
    """Bad input found before anything ran; nothing was stored for it."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message, key)
        self.message = message
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), (self.message,), {"key": self.key}))

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class JobFailure:
    """One failed job of a work, as reported to the caller.

    Attributes:
        key: the job key (sha256 of its canonical kwargs).
        kwargs: the job's merged kwargs.
        error_type: the exception's qualified class name, or a tasklift reason such as
            ``Timeout`` or ``WorkerLost``.
        message: the exception message.
        traceback: the formatted traceback from the job runner ("" when none exists).
        attempts: how many times the job ran.
        state: the terminal state (``failed``, ``cancelled``, ...).
    """

    key: str
    kwargs: Any
    error_type: str
    message: str
    traceback: str = ""
    attempts: int = 0
    state: str = "failed"
    job_id: int | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


class WorkFailed(TaskliftError):
    """A work ended with fewer successful jobs than its ``min_success`` requires.

    Attributes:
        work_name: the work's name.
        failures: one :class:`JobFailure` per failed or cancelled job, in submission order.
        n_jobs: how many jobs the work had.
        n_succeeded: how many finished successfully.
    """

    def __init__(
        self,
        work_name: str,
        failures: list[JobFailure],
        n_jobs: int,
        n_succeeded: int,
        min_success: float = 1.0,
    ) -> None:
        super().__init__(work_name, failures, n_jobs, n_succeeded, min_success)
        self.work_name = work_name
        self.failures = failures
        self.n_jobs = n_jobs
        self.n_succeeded = n_succeeded
        self.min_success = min_success

    def __str__(self) -> str:
        head = (
            f"work {self.work_name!r}: {len(self.failures)} of {self.n_jobs} jobs failed "
            f"({self.n_succeeded} succeeded; min_success={self.min_success:g} requires "
            f"{100 * self.min_success:.4g} % of the jobs to succeed)"
        )
        lines = [head]
        for failure in self.failures[:5]:
            lines.append(
                f"  job {failure.key[:12]} {short_repr(failure.kwargs)} after "
                f"{failure.attempts} attempt(s): {failure.error_type}: {failure.message}"
            )
        if len(self.failures) > 5:
            lines.append(f"  ... and {len(self.failures) - 5} more")
        if self.failures and self.failures[0].traceback:
            lines.append("first traceback:\n" + self.failures[0].traceback.rstrip())
        return "\n".join(lines)


class JobSkipped(TaskliftError):
    """The result of a single job was asked for (``Work.result()``, a one-job call) but the
    job was skipped: its ``when=`` condition was false, or an input it needs was skipped.

    Attributes:
        work_name: the work's name.
        failure: the skipped job (state ``skipped``, its reason in ``message``).
    """

    def __init__(self, work_name: str, failure: JobFailure) -> None:
        super().__init__(work_name, failure)
        self.work_name = work_name
        self.failure = failure

    def __str__(self) -> str:
        return (
            f"work {self.work_name!r}: job {self.failure.key[:12]} "
            f"{short_repr(self.failure.kwargs)} was skipped ({self.failure.message})"
        )


class WorkTimeout(TaskliftError):
    """Waiting for a work's results took longer than allowed."""

    def __init__(self, work_name: str, timeout: float, n_done: int, n_jobs: int) -> None:
        super().__init__(work_name, timeout, n_done, n_jobs)
        self.work_name = work_name
        self.timeout = timeout
        self.n_done = n_done
        self.n_jobs = n_jobs

    def __str__(self) -> str:
        return (
            f"work {self.work_name!r}: timed out after {self.timeout:g} s with "
            f"{self.n_done} of {self.n_jobs} jobs done"
        )


class WorkflowFailedError(TaskliftError):
    """A workflow waited for by id failed or was cancelled."""

    def __init__(self, workflow_id: int, status: str, error: str) -> None:
        super().__init__(workflow_id, status, error)
        self.workflow_id = workflow_id
        self.status = status
        self.error = error

    def __str__(self) -> str:
        last = self.error.strip().splitlines()[-1] if self.error.strip() else "(no error text)"
        return f"workflow {self.workflow_id} {self.status}: {last}"


class _MessageError(TaskliftError):
    """Base for errors that carry one message (pickles through ``args``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(_MessageError):
    """An unknown name, a malformed URL or an invalid setting."""


class ArchiveError(_MessageError):
    """Packing, storing or extracting a source archive failed."""


class BackendError(_MessageError):
    """A backend could not start, submit, poll or cancel."""


class BusError(_MessageError):
    """The result bus could not connect, publish or subscribe."""


class NotFoundError(_MessageError):
    """A workflow, work, job or archive that does not exist (or is not yours)."""


class SerializationError(_MessageError):
    """A value could not be encoded or decoded by its serializer."""


def _rebuild(cls: type[Exception], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Exception:
    return cls(*args, **kwargs)


class AuthenticationError(_MessageError):
    """No credential, or a bad, expired or revoked one."""


class PermissionDeniedError(_MessageError):
    """A valid credential used for something outside its scope."""


class ConflictError(_MessageError):
    """The request contradicts what is stored (e.g. an archive whose bytes do not match)."""


class ServiceError(_MessageError):
    """A tasklift server could not be reached, or failed (HTTP 5xx)."""


class DatabaseUnavailable(_MessageError):
    """The engine's database did not answer (down, restarting, refusing connections)."""
