"""The ``@work`` and ``@workflow`` decorators and the callables they make of a function: a
work submitted into the running workflow (or called here outside one), a workflow run."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, overload

from tasklift import _context
from tasklift.api.functions import UNSET, WorkDefinition, WorkflowDefinition, defining_file
from tasklift.errors import SubmissionError

__all__ = ["UNSET", "WorkFunction", "WorkflowFunction", "defining_file", "work", "workflow"]


class WorkFunction(WorkDefinition):
    """A ``@work`` function: a distributed task inside a workflow, a plain call outside one.

    Call-time keywords: ``group_kwargs=[...]`` (alias ``multi_jobs_kwargs_list``) makes one job
    per element; ``workflow=`` names the workflow explicitly; ``return_work=`` overrides the
    decorator's choice.

    ``container="docker://python:3.11"`` runs the work's job runners in that image through
    apptainer or singularity (after ``init_env``'s commands, if both are given); see
    :mod:`tasklift.backends.command`.
    """

    def __repr__(self) -> str:
        return f"<work {self.name}>"

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return functools.partial(self.__call__, instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Submit one work (inside a workflow) or run the function here (outside one)."""
        group = kwargs.pop("group_kwargs", UNSET)
        alias = kwargs.pop("multi_jobs_kwargs_list", UNSET)
        if alias is not UNSET:
            if group is not UNSET:
                raise SubmissionError("give group_kwargs or multi_jobs_kwargs_list, not both")
            group = alias
        explicit = kwargs.pop("workflow", None)
        return_work = kwargs.pop("return_work", self.return_work)
        when = kwargs.pop("when", None)
        run = _find_run(explicit)
        if run is None:
            if when is not None:
                raise SubmissionError("when= needs a running workflow (inputs from other works)")
            return self._call_in_process(args, kwargs, group)
        from tasklift.api.submit import submit_work

        return submit_work(run, self, args, kwargs, group, return_work, when=when)

    def _call_in_process(self, args: Sequence[Any], kwargs: dict[str, Any], group: Any) -> Any:
        calls = self.calls(args, kwargs, group)
        if group is UNSET:
            a, k = calls[0]
            return self.func(*a, **k)
        values = [self.func(*a, **k) for a, k in calls]
        if not self.map_results:
            return values
        from tasklift.api.map_result import MapResult
        from tasklift.keys import job_key, occurrence_key

        keys: list[str] = []
        repeats: dict[str, int] = {}
        for a, k in calls:  # repeated arguments get keys of their own, as in a workflow
            key = job_key(a, k)
            repeats[key] = repeats.get(key, -1) + 1
            keys.append(occurrence_key(key, repeats[key]) if repeats[key] else key)
        return MapResult(
            dict(zip(keys, values, strict=True)),
            [],
            {"n_jobs": len(values), "in_process": True},
            list(args),
            {**self.pre_kwargs, **kwargs},
            keys=keys,
            elements=list(group),
        )


def _find_run(explicit: Any) -> Any:
    if explicit is not None:
        run = getattr(explicit, "current_run", explicit)
        if run is None:
            raise SubmissionError("workflow= names a Workflow that is not running")
        return run
    run = _context.current_workflow.get()
    if run is not None:
        return run
    from tasklift.api.workflow_run import single_running_workflow

    return single_running_workflow()


@overload
def work(func: Callable[..., Any], /) -> WorkFunction: ...
@overload
def work(func: None = None, /, **options: Any) -> Callable[[Callable[..., Any]], WorkFunction]: ...
def work(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Make a function a distributed task: one job per kwargs dict inside a workflow.

    Usable bare (``@work``) or with options (``@work(map_results=True, retries=3)``); see
    :class:`WorkFunction` for the options.
    """
    if func is not None:
        return WorkFunction(func, **options)

    def decorate(f: Callable[..., Any]) -> WorkFunction:
        return WorkFunction(f, **options)

    return decorate


class WorkflowFunction(WorkflowDefinition):
    """A ``@workflow`` function: calling it runs ``Workflow(func=f, ...).run(...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the workflow (or, inside a running one, just call the function)."""
        parent = _context.current_workflow.get()
        if parent is not None:  # a sub-workflow: its own row, nested under the running one
            from tasklift.api.workflow_run import run_child

            return run_child(parent, self.func, self.options, args, kwargs)
        from tasklift.api.run import Workflow

        return Workflow(func=self.func, **self.options).run(*args, **kwargs)


def workflow(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Mark the steering function of a workflow (bare or with ``name``, ``init_env``, ...)."""
    if func is not None:
        return WorkflowFunction(func, **options)

    def decorate(f: Callable[..., Any]) -> WorkflowFunction:
        return WorkflowFunction(f, **options)

    return decorate
