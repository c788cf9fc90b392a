"""``Workflow``: packs the source, registers the run, runs the workflow function with the
engine in context, and stores its return value or error.

The run itself is in :mod:`tasklift.api.workflow_run`, the process's engines in
:mod:`tasklift.api.engines`, a workflow followed by id in :mod:`tasklift.api.follow`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tasklift import _context
from tasklift.api.engines import connect, connect_service
from tasklift.api.follow import WorkflowHandle
from tasklift.api.functions import WorkDefinition, WorkflowDefinition, defining_file
from tasklift.api.workflow_run import (
    WorkflowRun,
    enter_running,
    leave_running,
    run_recorded,
)
from tasklift.archive import PackedArchive, pack_source, state_paths
from tasklift.backends.command import container_init_env
from tasklift.backends.registry import backend_choice
from tasklift.errors import ConfigError, SerializationError, SubmissionError
from tasklift.serializers import get_serializer

if TYPE_CHECKING:
    from tasklift.backends.base import Backend
    from tasklift.settings import Settings

__all__ = ["Workflow"]

logger = logging.getLogger(__name__)


class Workflow:
    """One workflow: a steering function plus where and how its works run.

    Args:
        func: the workflow function (plain or ``@workflow``-decorated).
        service: ``"local"`` for the embedded engine (default).
        name: shown in listings; default: the function's name.
        source_dir: the directory shipped to jobs; default: the directory of the file that
            defines ``func``.
        exclude: extra gitignore-style patterns left out of the archive.
        init_env: command prefix (and ``;``-separated set-up) for job runners.
        container: run job runners in this apptainer/singularity image
            (``"docker://python:3.11"``, ``"base.sif"``), after ``init_env``'s commands.
        backend: where jobs run (``"local"``).
        fresh: do not reuse finished jobs of earlier identical runs.
        bus: result bus URL for the embedded engine (``stomp://...``); default in-process.
        remote: run the workflow function itself as a job on the service (``submit()``
            returns at once; ``Workflow.attach(id, service=URL).result()`` waits).
        settings: explicit :class:`~tasklift.settings.Settings` (default: environment).
    """

    def __init__(
        self,
        func: Callable[..., Any],
        service: str | None = None,
        name: str | None = None,
        source_dir: str | os.PathLike[str] | None = None,
        exclude: Sequence[str] = (),
        init_env: str | None = None,
        backend: str | Backend | None = None,
        fresh: bool = False,
        *,
        remote: bool = False,
        bus: str | None = None,
        settings: Settings | None = None,
        container: str | None = None,
    ) -> None:
        if isinstance(func, WorkflowDefinition):
            options = func.options
            func = func.func
            name = name or options.get("name")
            source_dir = source_dir or options.get("source_dir")
            exclude = tuple(exclude) or tuple(options.get("exclude", ()))
            init_env = init_env or options.get("init_env")
            backend = backend or options.get("backend")
            service = service or options.get("service")
        self.func = func
        if settings is None:
            from tasklift.settings import Settings

            settings = Settings()
        if bus is not None:
            settings = settings.with_overrides(bus=bus)
        self.settings = settings
        self.service = service or self.settings.service
        if self.service != "local" and not self.service.startswith(("http://", "https://")):
            raise ConfigError(f"service must be 'local' or an http(s):// URL, got {self.service!r}")
        self.name = name or getattr(func, "__name__", "workflow")
        self.exclude = tuple(exclude)
        self.init_env = container_init_env(container, init_env)
        backend_name, self._backend_object = backend_choice(backend)
        self.backend = backend_name or self.settings.backend
        if remote and self._backend_object is not None:
            raise ConfigError(
                "a remote workflow runs on the server: name a backend configured there "
                "(backend='gpu'), not a backend object"
            )
        self.fresh = fresh
        self.remote = remote
        if remote and self.service == "local":
            raise ConfigError(
                "remote=True runs the workflow function on a service: give "
                "service='http://host:port'"
            )
        self._source_dir = Path(source_dir).resolve() if source_dir is not None else None
        self.current_run: WorkflowRun | None = None
        self.workflow_id: int | None = None

    @property
    def source_dir(self) -> Path:
        """The directory shipped with the workflow."""
        if self._source_dir is not None:
            return self._source_dir
        path = defining_file(self.func)
        if path is None:
            raise SubmissionError(
                f"cannot find the file that defines {self.name!r} (interactive session?); "
                "pass Workflow(source_dir=...)"
            )
        return path.parent

    @classmethod
    def attach(
        cls, workflow_id: int, service: str | None = None, *, settings: Settings | None = None
    ) -> WorkflowHandle:
        """A handle on an existing workflow of a service (e.g. to re-attach and wait).

        Raises:
            NotFoundError: the service has no such workflow (or not one of yours).
        """
        if settings is None:
            from tasklift.settings import Settings

            settings = Settings()
        url = service or settings.service
        if url == "local":
            raise ConfigError("attach needs a service URL (service='http://host:port')")
        handle = WorkflowHandle(workflow_id, connect_service(url, settings))
        handle.status  # noqa: B018 - read now: an unknown id fails here, not at .result()
        return handle

    def submit(self, *args: Any, **kwargs: Any) -> int:
        """Start a ``remote=True`` workflow on the service and return its id at once."""
        if _context.importing_script.get():
            raise _context.ScriptImportStop()
        if not self.remote:
            raise ConfigError("submit() is for remote=True workflows; use run()")
        from tasklift.api.submit import function_location

        service = connect_service(self.service, self.settings)
        source_dir = self.source_dir
        packed = self._pack(source_dir)
        service.store_archive(packed)
        function, script = function_location(WorkDefinition(self.func), source_dir)
        try:
            arguments = orjson.loads(
                get_serializer("json").dumps({"args": list(args), "kwargs": kwargs})
            )
        except SerializationError as exc:
            raise SubmissionError(f"remote workflow arguments must be JSON: {exc}") from exc
        created = service.post(
            "/workflows",
            {
                "name": self.name,
                "function": function,
                "script": script,
                "source_dir": str(source_dir),
                "archive_sha": packed.sha256,
                "archive_size": len(packed.data),
                "init_env": self.init_env,
                "backend": self.backend,
                "fresh": self.fresh,
                "arguments": arguments,
                "remote": True,
            },
        )
        self.workflow_id = int(created["id"])
        logger.info("remote workflow %s submitted as id %d", self.name, self.workflow_id)
        return self.workflow_id

    def _pack(self, source_dir: Path) -> PackedArchive:
        """Pack ``source_dir`` under the settings' limits, leaving tasklift's own state out."""
        return pack_source(
            source_dir,
            exclude=self.exclude,
            max_bytes=self.settings.archive_max_bytes,
            max_files=self.settings.archive_max_files,
            skip=state_paths(self.settings),
        )

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the workflow function and return its return value (stored too).

        With ``remote=True`` the function runs as a job on the service; this submits it and
        waits for its result.
        """
        if _context.importing_script.get():
            raise _context.ScriptImportStop()
        if self.remote:
            workflow_id = self.submit(*args, **kwargs)
            return WorkflowHandle(
                workflow_id, connect_service(self.service, self.settings)
            ).result()
        if _context.current_workflow.get() is not None:
            return self.func(*args, **kwargs)  # nested call: part of the running workflow
        engine = connect(self.service, self.settings)
        if self._backend_object is not None:
            engine.add_backend(self.backend, self._backend_object)
        source_dir = self.source_dir
        packed = self._pack(source_dir)
        archive_file = engine.store_archive(packed)
        function = f"{self.func.__module__}:{self.func.__qualname__}"
        if not self.fresh:
            from tasklift.api.reuse_hint import warn_if_nothing_reusable

            warn_if_nothing_reusable(
                engine, function=function, source_dir=str(source_dir), archive_sha=packed.sha256
            )
        serializer = get_serializer("json")
        try:
            arguments = serializer.dumps({"args": list(args), "kwargs": kwargs})
        except SerializationError:
            arguments = None
        workflow_id = engine.create_workflow(
            name=self.name,
            function=function,
            source_dir=str(source_dir),
            archive_sha=packed.sha256,
            archive_size=len(packed.data),
            init_env=self.init_env,
            backend=self.backend,
            fresh=self.fresh,
            arguments=arguments,
        )
        self.workflow_id = workflow_id
        logger.info(
            "workflow %s (id %d) started, archive %s", self.name, workflow_id, packed.sha256[:12]
        )
        run = WorkflowRun(
            engine=engine,
            workflow_id=workflow_id,
            name=self.name,
            source_dir=source_dir,
            archive_sha=packed.sha256,
            archive_file=archive_file,
            init_env=self.init_env,
            backend=self.backend,
            fresh=self.fresh,
            show_progress=_show_progress(self.settings),
        )
        self.current_run = run
        enter_running(run)

        def ended() -> None:
            leave_running(run)
            self.current_run = None

        return run_recorded(run, serializer, lambda: self.func(*args, **kwargs), ended)


def _show_progress(settings: Settings) -> bool:
    if settings.quiet:
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())
