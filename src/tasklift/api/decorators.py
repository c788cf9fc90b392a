"""The ``@work`` and ``@workflow`` decorators and the callable they make of a work function."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from tasklift import _context
from tasklift.backends.command import container_init_env
from tasklift.backends.registry import backend_choice
from tasklift.errors import SubmissionError

if TYPE_CHECKING:
    from tasklift.backends.base import Backend

__all__ = ["UNSET", "WorkFunction", "WorkflowFunction", "work", "workflow"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""Marks an argument that was not given (``None`` has a meaning for some)."""

_RESOURCE_KEYS = {"cores", "memory_mb", "walltime", "gpus"}


class WorkFunction:
    """A ``@work`` function: a distributed task inside a workflow, a plain call outside one.

    Call-time keywords: ``group_kwargs=[...]`` (alias ``multi_jobs_kwargs_list``) makes one job
    per element; ``workflow=`` names the workflow explicitly; ``return_work=`` overrides the
    decorator's choice.

    ``container="docker://python:3.11"`` runs the work's job runners in that image through
    apptainer or singularity (after ``init_env``'s commands, if both are given); see
    :mod:`tasklift.backends.command`.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        map_results: bool = False,
        name: str | None = None,
        pre_kwargs: Mapping[str, Any] | None = None,
        init_env: str | None = None,
        container: str | None = None,
        retries: int = 2,
        timeout: float | None = None,
        resources: Mapping[str, Any] | None = None,
        backend: str | Backend | None = None,
        queue: str | None = None,
        return_work: bool = False,
        min_success: float = 1.0,
        serializer: str = "json",
    ) -> None:
        if not callable(func):
            raise TypeError("@work decorates a function")
        if retries < 0:
            raise SubmissionError(f"retries must be >= 0, got {retries}")
        if timeout is not None and timeout <= 0:
            raise SubmissionError(f"timeout must be positive seconds, got {timeout}")
        if not 0.0 <= min_success <= 1.0:
            raise SubmissionError(f"min_success is a fraction in [0, 1], got {min_success}")
        if serializer not in ("json", "pickle"):
            raise SubmissionError(f"serializer must be 'json' or 'pickle', got {serializer!r}")
        unknown = set(resources or {}) - _RESOURCE_KEYS
        if unknown:
            raise SubmissionError(
                f"unknown resources {sorted(unknown)}; known: {sorted(_RESOURCE_KEYS)}"
            )
        self.func = func
        self.map_results = map_results
        self.name = name or func.__name__
        self.pre_kwargs = dict(pre_kwargs or {})
        self.init_env = container_init_env(container, init_env)
        self.retries = retries
        self.timeout = timeout
        self.resources = dict(resources or {})
        self.backend, self.backend_object = backend_choice(backend, queue)
        self.return_work = return_work
        self.min_success = min_success
        self.serializer = serializer
        functools.update_wrapper(self, func)
        # the job runner finds the plain function through this attribute
        self.__tasklift_function__ = func

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

    def calls(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], group: Any
    ) -> list[tuple[list[Any], dict[str, Any]]]:
        """Expand a call into one ``(args, kwargs)`` per job (merging as documented)."""
        base = {**self.pre_kwargs, **kwargs}
        if group is UNSET:
            return [(list(args), base)]
        if isinstance(group, (str, bytes, Mapping)) or not isinstance(group, Sequence):
            try:
                group = list(group)
            except TypeError:
                raise SubmissionError(
                    f"group_kwargs must be a list of dicts (or of argument lists), "
                    f"got {type(group).__name__}"
                ) from None
            if isinstance(group, list) and group and isinstance(group[0], str):
                raise SubmissionError("group_kwargs must be a list of dicts, got a string/dict")
        calls = []
        for i, element in enumerate(group):
            if isinstance(element, Mapping):
                calls.append((list(args), {**base, **element}))
            elif isinstance(element, (list, tuple)):
                calls.append((list(element), dict(base)))
            else:
                raise SubmissionError(
                    f"group_kwargs[{i}] is a {type(element).__name__}; each element must be a "
                    "dict of keyword arguments or a list/tuple of positional arguments"
                )
        return calls

    def _call_in_process(self, args: Sequence[Any], kwargs: dict[str, Any], group: Any) -> Any:
        calls = self.calls(args, kwargs, group)
        if group is UNSET:
            a, k = calls[0]
            return self.func(*a, **k)
        values = [self.func(*a, **k) for a, k in calls]
        if not self.map_results:
            return values
        from tasklift.api.results import MapResult
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


class WorkflowFunction:
    """A ``@workflow`` function: calling it runs ``Workflow(func=f, ...).run(...)``."""

    def __init__(self, func: Callable[..., Any], **options: Any) -> None:
        allowed = {
            *("name", "init_env", "container", "source_dir", "exclude"),
            *("backend", "service", "fresh"),
        }
        unknown = set(options) - allowed
        if unknown:
            raise TypeError(f"@workflow got unknown options {sorted(unknown)}")
        if "container" in options:  # fold into init_env, so sub-workflows get it too
            options["init_env"] = container_init_env(
                options.pop("container"), options.get("init_env")
            )
        self.func = func
        self.options = options
        functools.update_wrapper(self, func)

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


def defining_file(func: Callable[..., Any]) -> Path | None:
    """The source file that defines ``func`` (``None`` for the REPL and builtins)."""
    target = inspect.unwrap(getattr(func, "func", func))
    try:
        path = inspect.getsourcefile(target)
    except TypeError:
        return None
    if path is None or not os.path.exists(path):
        return None
    return Path(path).resolve()
