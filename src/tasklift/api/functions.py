"""What a ``@work`` or ``@workflow`` function is, below the code that runs it: its function
and checked options, how one call expands into jobs (``(args, kwargs)`` per job), and the file
that defines it. The callables the decorators make are in :mod:`tasklift.api.decorators`.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasklift.backends.command import container_init_env
from tasklift.backends.registry import backend_choice
from tasklift.errors import SubmissionError

if TYPE_CHECKING:
    from tasklift.backends.base import Backend

__all__ = ["UNSET", "WorkDefinition", "WorkflowDefinition", "defining_file"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""Marks an argument that was not given (``None`` has a meaning for some)."""

_RESOURCE_KEYS = {"cores", "memory_mb", "walltime", "gpus"}


class WorkDefinition:
    """A ``@work`` function's function and options (checked), and how one call of it expands
    into jobs; calling it is :class:`tasklift.api.decorators.WorkFunction`'s.
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


class WorkflowDefinition:
    """A ``@workflow`` function's function and options (checked); calling it is
    :class:`tasklift.api.decorators.WorkflowFunction`'s."""

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
