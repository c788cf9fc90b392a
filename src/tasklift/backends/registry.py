"""Backends by name: ``local``, ``dask``, ``slurm``, and the ones configured in settings.

``tasklift.toml`` (or ``TASKLIFT_BACKENDS`` as JSON) names backends; a queue is such a name::

    [backends.gpu]
    type = "slurm"
    partition = "gpu"
    max_running = 50

    [backends.cluster]
    type = "dask"
    address = "tcp://scheduler:8786"

``@work(queue="gpu")`` (or ``backend="gpu"``) then runs on the first. ``type`` may also name a
site's own :class:`~tasklift.backends.base.Backend` subclass as ``"package.module:Class"``.
A backend object passed to ``Workflow(backend=...)`` or ``@work(backend=...)`` is registered
under :func:`object_name`.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from tasklift.errors import ConfigError

if TYPE_CHECKING:
    from tasklift.backends.base import Backend
    from tasklift.backends.local import RunnerIsolation
    from tasklift.settings import Settings

__all__ = ["KINDS", "backend_choice", "backend_from_settings", "object_name"]

KINDS = ("local", "dask", "slurm")


def _class(kind: str) -> type[Backend]:
    if kind == "local":
        from tasklift.backends.local import LocalBackend

        return LocalBackend
    if kind == "dask":
        from tasklift.backends.dask import DaskBackend

        return DaskBackend
    if kind == "slurm":
        from tasklift.backends.slurm import SlurmBackend

        return SlurmBackend
    if ":" in kind:  # a site's own backend class: "package.module:ClassName"
        from tasklift.backends.base import Backend

        module_name, _, attr = kind.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"backend type {kind!r} cannot be imported: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise ConfigError(f"backend type {kind!r} is not a tasklift Backend class")
        return cls
    raise ConfigError(
        f"unknown backend type {kind!r}; known: {', '.join(KINDS)}, or 'package.module:Class'"
    )


def backend_from_settings(
    name: str, settings: Settings, *, isolation: RunnerIsolation | None = None
) -> Backend:
    """Build the backend called ``name`` (a built-in kind or a configured name).

    ``isolation`` (a multi-user server's) goes to every ``local`` backend it builds.

    Raises:
        ConfigError: an unknown name, an unknown type, or arguments the backend refuses.
    """
    config: dict[str, Any] | None = settings.backends.get(name)
    if config is None:
        if name not in KINDS:
            known = sorted({*KINDS, *settings.backends})
            raise ConfigError(
                f"unknown backend or queue {name!r}; known: {', '.join(known)} "
                "(configure more under [backends.NAME] in tasklift.toml)"
            )
        config = {"type": name}
    params = dict(config)
    kind = params.pop("type", None)
    if not isinstance(kind, str):
        raise ConfigError(f"backend {name!r} needs a type ({', '.join(KINDS)})")
    cls = _class(kind)
    if kind in KINDS:  # the built-ins take the interpreter; local and dask the worker count
        params.setdefault("python", settings.job_python)
        if kind != "slurm":
            params.setdefault("workers", settings.workers)
        if kind == "local" and isolation is not None:
            params["isolation"] = isolation
        if isolation is not None:
            _multi_user(name, kind, params)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"backend {name!r} ({kind}): {exc}") from exc


def _multi_user(name: str, kind: str, params: dict[str, Any]) -> None:
    """What a multi-user server changes or refuses in a built-in backend's arguments.

    Dask runs every job in a process of its own (never a worker thread shared by users'
    jobs). Slurm jobs run as the account that submits them: a server running as root would
    run users' jobs as root, so it refuses.

    Raises:
        ConfigError: ``isolate=False`` for Dask, or Slurm under a root server.
    """
    if kind == "dask":
        if params.get("isolate") is False:
            raise ConfigError(
                f"backend {name!r}: a multi-user server runs each Dask job in a process of its "
                "own; isolate=False is refused"
            )
        params["isolate"] = True
    elif kind == "slurm" and os.geteuid() == 0:
        raise ConfigError(
            f"backend {name!r}: Slurm jobs run as the account that submits them, and this "
            "server runs as root; run the server as an unprivileged account to use Slurm"
        )


def object_name(backend: Backend) -> str:
    """The name a backend object is registered under with the embedded engine."""
    return f"{backend.name}-{id(backend):x}"


def backend_choice(
    backend: str | Backend | None, queue: str | None = None
) -> tuple[str | None, Backend | None]:
    """Split a user's ``backend=``/``queue=`` into a name and, for an object, the object.

    Raises:
        ConfigError: both given, or a value that is neither a name nor a backend.
    """
    from tasklift.backends.base import Backend

    if queue is not None:
        if backend is not None:
            raise ConfigError("give backend= or queue=, not both (a queue names a backend)")
        backend = queue
    if backend is None:
        return None, None
    if isinstance(backend, Backend):
        return object_name(backend), backend
    if not isinstance(backend, str) or not backend.strip():
        raise ConfigError(f"backend must be a name or a Backend object, got {backend!r}")
    return backend.strip(), None
