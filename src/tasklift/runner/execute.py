"""The execution core: run one attempt of one job in this process and say what happened.

Both job runners use it: the local worker (:mod:`tasklift.runner.worker`) and the remote runner
of Dask and Slurm (:mod:`tasklift.runner.remote`). It never raises for the user's errors: they
become the job's :class:`~tasklift.records.Outcome`. A workflow function run as a job needs the
client API; the runner that supports it hands that in (:data:`WorkflowCall`), so this core does
not import it.
"""

from __future__ import annotations

import inspect
import time
import traceback
from collections.abc import Callable
from typing import Any

from tasklift.errors import ConfigError, SerializationError
from tasklift.records import JobSpec, Outcome, WorkSpec
from tasklift.runner.loader import FunctionLoader
from tasklift.serializers import get_serializer

__all__ = ["WorkflowCall", "execute", "failure_outcome", "run_job"]

WorkflowCall = Callable[[Callable[..., Any], WorkSpec, str | None, str | None], Callable[..., Any]]
"""``(fn, work, job token, archive root) -> fn``: wraps a remote workflow's function so its
``@work`` calls go to the service (``tasklift.api.workflow_run.remote_workflow_call``)."""


def execute(
    loader: FunctionLoader,
    work: WorkSpec,
    job: JobSpec,
    *,
    workflow_call: WorkflowCall | None = None,
    before_run: Callable[[], None] | None = None,
) -> Outcome:
    """Load ``work``'s function and run ``job`` with it (never raises).

    Args:
        loader: where the function comes from.
        work: the job's work.
        job: the attempt to run.
        workflow_call: how to run a workflow function as a job (``None``: this runner cannot).
        before_run: called once the function is loaded, just before it runs.
    """
    try:
        fn = loader.load(work)
    except Exception as exc:  # noqa: BLE001 - import failures are the job's outcome
        return failure_outcome(job, exc)
    if work.kind == "workflow":
        if workflow_call is None:
            error = ConfigError(f"this job runner cannot run workflow function {work.function}")
            return failure_outcome(job, error, retryable=False)
        fn = workflow_call(fn, work, job.token, loader.current_root)
    if before_run is not None:
        before_run()
    return run_job(fn, work, job)


def run_job(fn: Callable[..., Any], work: WorkSpec, job: JobSpec) -> Outcome:
    """Run one attempt of one job in this process and return its outcome (never raises)."""
    serializer = get_serializer(work.serializer)
    started = time.time()
    try:
        call = serializer.loads(job.payload)
        if work.when is not None and not _condition_holds(work, call):
            outcome = Outcome.failure(
                job.job_id,
                job.attempt,
                "Skipped",
                f"when= condition on {work.when_arg!r} is false",
                started_at=started,
            )
            outcome.skipped = True
            return outcome
        value = fn(*call.get("args", ()), **call.get("kwargs", {}))
    except Exception as exc:  # noqa: BLE001 - the user's error becomes the job's outcome
        return Outcome.failure(
            job.job_id,
            job.attempt,
            _type_name(exc),
            _one_line(exc),
            traceback=_user_traceback(exc),
            retryable=not (isinstance(exc, TypeError) and _does_not_fit(fn, job, serializer)),
            started_at=started,
        )
    try:
        data = serializer.dumps(value)
    except SerializationError as exc:
        return Outcome.failure(
            job.job_id,
            job.attempt,
            "ResultNotSerializable",
            str(exc),
            retryable=False,
            started_at=started,
        )
    return Outcome(
        job.job_id, job.attempt, ok=True, result=data, started_at=started, finished_at=time.time()
    )


def failure_outcome(job: JobSpec, exc: BaseException, *, retryable: bool = True) -> Outcome:
    """Turn an error raised before the function ran (import, archive) into an outcome."""
    return Outcome.failure(
        job.job_id,
        job.attempt,
        _type_name(exc),
        _one_line(exc),
        traceback="".join(traceback.format_exception(exc)),
        retryable=retryable,
    )


def _does_not_fit(fn: Callable[..., Any], job: JobSpec, serializer: Any) -> bool:
    """True when the job's arguments do not fit ``fn``'s signature (a TypeError that every
    retry would raise again, e.g. an unexpected or repeated keyword)."""
    try:
        call = serializer.loads(job.payload)
        inspect.signature(fn).bind(*call.get("args", ()), **call.get("kwargs", {}))
    except TypeError:
        return True
    except Exception:  # noqa: BLE001 - no signature to check, or no call: let retries decide
        return False
    return False


def _condition_holds(work: WorkSpec, call: dict[str, Any]) -> bool:
    """Apply the work's ``when=`` predicate to the upstream result in ``work.when_arg``."""
    import cloudpickle

    predicate = cloudpickle.loads(work.when)  # the user's own code, as for the function
    arg = work.when_arg or ""
    value = call["args"][int(arg[1:])] if arg.startswith("#") else call["kwargs"].get(arg)
    return bool(predicate(value))


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else repr(exc)


def _user_traceback(exc: BaseException) -> str:
    """Format ``exc``'s traceback without the runner's own frames."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # drop run_job's frame
    return "".join(traceback.format_exception(type(exc), exc, tb))
