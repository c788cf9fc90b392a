"""A workflow while its function runs (:class:`WorkflowRun`, what ``@work`` calls submit
into): the run of a sub-workflow, of a remote workflow inside its job runner, and how a run's
end is stored."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasklift import _context
from tasklift.api.functions import WorkflowDefinition
from tasklift.errors import ConfigError, SerializationError
from tasklift.serializers import get_serializer
from tasklift.states import WorkflowState

if TYPE_CHECKING:
    from tasklift.api.client import EngineClient

__all__ = [
    "WorkflowRun",
    "enter_running",
    "leave_running",
    "remote_workflow_call",
    "run_child",
    "run_recorded",
    "single_running_workflow",
]

_running: list[WorkflowRun] = []


def single_running_workflow() -> WorkflowRun | None:
    """The workflow running in this process when there is exactly one (for helper threads)."""
    if threading.current_thread() is threading.main_thread():
        return None
    return _running[0] if len(_running) == 1 else None


@dataclass
class WorkflowRun:
    """A workflow while its function runs: what ``@work`` calls submit into."""

    engine: EngineClient
    workflow_id: int
    name: str
    source_dir: Path | None
    archive_sha: str | None
    archive_file: str | None
    init_env: str | None
    backend: str
    fresh: bool
    show_progress: bool
    works: list[Any] = field(default_factory=list)


def remote_workflow_call(
    fn: Callable[..., Any], work: Any, token: str | None, root: str | None
) -> Callable[..., Any]:
    """Wrap a remote workflow's function so that, run by a job runner, its ``@work`` calls
    submit works to the service with the runner's job token.

    A ``@workflow``-decorated function runs as the workflow itself, not as a sub-workflow of
    it (its own nested ``@workflow`` calls are the sub-workflows).
    """
    if isinstance(fn, WorkflowDefinition):
        fn = fn.func

    def call(*args: Any, **kwargs: Any) -> Any:
        from tasklift.api.remote import HttpService
        from tasklift.settings import Settings

        if not work.service_url or not token:
            raise ConfigError("a remote workflow job needs the service URL and a job token")
        service = HttpService(work.service_url, token, Settings(quiet=True))
        run = WorkflowRun(
            engine=service,
            workflow_id=work.workflow_id,
            name=work.name,
            source_dir=Path(root) if root else None,
            archive_sha=work.archive_sha,
            archive_file=None,
            init_env=work.init_env,
            backend=work.backend,
            fresh=False,
            show_progress=False,
        )
        context = _context.current_workflow.set(run)
        _running.append(run)
        try:
            return fn(*args, **kwargs)
        finally:
            _context.current_workflow.reset(context)
            _running.remove(run)
            for handle in run.works:
                handle.close()
            service.close()

    return call


def run_child(
    parent: WorkflowRun,
    func: Callable[..., Any],
    options: dict[str, Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
) -> Any:
    """Run ``func`` as a child workflow of ``parent`` (same archive, so finished jobs of an
    earlier identical run are reused), and store its result or error on its own row."""
    engine = parent.engine
    serializer = get_serializer("json")
    try:
        arguments = serializer.dumps({"args": list(args), "kwargs": kwargs})
    except SerializationError:
        arguments = None
    name = options.get("name") or getattr(func, "__name__", "workflow")
    workflow_id = engine.create_workflow(
        name=name,
        function=f"{func.__module__}:{func.__qualname__}",
        parent_id=parent.workflow_id,
        source_dir=str(parent.source_dir) if parent.source_dir else None,
        archive_sha=parent.archive_sha,
        init_env=options.get("init_env") or parent.init_env,
        backend=options.get("backend") or parent.backend,
        fresh=parent.fresh,
        arguments=arguments,
    )
    # on a server, a workflow runner's sub-workflow is reported with a token of its own
    child_engine = engine.for_workflow(workflow_id)
    child = WorkflowRun(
        engine=child_engine,
        workflow_id=workflow_id,
        name=name,
        source_dir=parent.source_dir,
        archive_sha=parent.archive_sha,
        archive_file=parent.archive_file,
        init_env=options.get("init_env") or parent.init_env,
        backend=options.get("backend") or parent.backend,
        fresh=parent.fresh,
        show_progress=parent.show_progress,
    )
    try:
        return run_recorded(child, serializer, lambda: func(*args, **kwargs))
    finally:
        if child_engine is not engine:
            child_engine.close()


def run_recorded(
    run: WorkflowRun,
    serializer: Any,
    call: Callable[[], Any],
    on_exit: Callable[[], None] | None = None,
) -> Any:
    """Run a workflow function as ``run``; store how it ended (its result or its traceback)."""
    token = _context.current_workflow.set(run)
    try:
        result = call()
    except BaseException as exc:
        run.engine.finish_workflow(
            run.workflow_id, WorkflowState.FAILED, None, "".join(traceback.format_exception(exc))
        )
        raise
    finally:
        _context.current_workflow.reset(token)
        if on_exit is not None:
            on_exit()
        for handle in run.works:
            handle.close()
    try:
        stored = serializer.dumps(result)
    except SerializationError:
        stored = serializer.dumps({"__repr__": repr(result)})
    run.engine.finish_workflow(run.workflow_id, WorkflowState.FINISHED, stored, None)
    return result


def enter_running(run: WorkflowRun) -> None:
    """``run`` is running in this process (helper threads find it when it is the only one)."""
    _running.append(run)


def leave_running(run: WorkflowRun) -> None:
    """``run`` ended."""
    _running.remove(run)
