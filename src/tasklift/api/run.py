"""``Workflow``: packs the source, registers the run, runs the workflow function with the
engine in context, and stores its return value or error."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tasklift import _context
from tasklift.api.decorators import WorkflowFunction, defining_file
from tasklift.archive import PackedArchive, pack_source, state_paths
from tasklift.backends.command import container_init_env
from tasklift.backends.registry import backend_choice, register_backend
from tasklift.errors import ConfigError, SerializationError, SubmissionError
from tasklift.serializers import get_serializer
from tasklift.states import WorkflowState

if TYPE_CHECKING:
    from tasklift.backends.base import Backend
    from tasklift.engine.engine import Engine
    from tasklift.settings import Settings

__all__ = [
    "Workflow",
    "WorkflowHandle",
    "WorkflowRun",
    "embedded_engine",
    "remote_workflow_call",
    "shutdown",
    "single_running_workflow",
]

logger = logging.getLogger(__name__)

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
_running: list[WorkflowRun] = []


def embedded_engine(settings: Settings) -> Engine:
    """The in-process engine for these settings (one per database, reused across runs)."""
    url = settings.database_url
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            from tasklift.embedded import build_engine

            engine = build_engine(settings)
            _engines[url] = engine
        return engine


_remotes: dict[tuple[str, str | None], Any] = {}


def connect(service: str, settings: Settings) -> Any:
    """The engine interface for ``service``: the embedded engine, or a server over HTTP."""
    if service == "local":
        return embedded_engine(settings)
    if not service.startswith(("http://", "https://")):
        raise ConfigError(f"service must be 'local' or an http(s):// URL, got {service!r}")
    from tasklift.api.remote import HttpService
    from tasklift.credentials import load_credentials

    token = settings.token.get_secret_value() if settings.token else None
    creds = load_credentials(service, token)
    token = creds.token if creds else token
    with _engines_lock:
        key = (service.rstrip("/"), token)
        remote = _remotes.get(key)
        if remote is None:
            remote = HttpService(service, token, settings)
            _remotes[key] = remote
        return remote


def shutdown() -> None:
    """Stop every embedded engine and service connection of this process (also at exit)."""
    with _engines_lock:
        engines = list(_engines.values()) + list(_remotes.values())
        _engines.clear()
        _remotes.clear()
    for engine in engines:
        engine.close()


atexit.register(shutdown)


def single_running_workflow() -> WorkflowRun | None:
    """The workflow running in this process when there is exactly one (for helper threads)."""
    if threading.current_thread() is threading.main_thread():
        return None
    return _running[0] if len(_running) == 1 else None


@dataclass
class WorkflowRun:
    """A workflow while its function runs: what ``@work`` calls submit into."""

    engine: Engine
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
    if isinstance(fn, WorkflowFunction):
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
    for_workflow = getattr(engine, "for_workflow", None)
    child_engine = for_workflow(workflow_id) if for_workflow is not None else engine
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
        return _run_recorded(child, serializer, lambda: func(*args, **kwargs))
    finally:
        if child_engine is not engine:
            child_engine.close()


def _run_recorded(
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


class WorkflowHandle:
    """A workflow known by id on a service: its status and, once it ended, its result."""

    def __init__(self, workflow_id: int, service: Any) -> None:
        self.workflow_id = workflow_id
        self._service = service

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.workflow_id}>"

    @property
    def status(self) -> WorkflowState:
        """The workflow's state as stored."""
        return WorkflowState(self._service.get(f"/workflows/{self.workflow_id}")["status"])

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the workflow to end and return its return value.

        Raises:
            WorkflowFailedError: the workflow failed or was cancelled (with its error).
            WorkTimeout: ``timeout`` seconds passed first.
        """
        import time

        from tasklift.errors import WorkflowFailedError, WorkTimeout
        from tasklift.serializers import decode_value

        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.05
        while True:
            wf = self._service.get(f"/workflows/{self.workflow_id}")
            if wf["status"] == WorkflowState.FINISHED.value:
                return decode_value(wf["result"])  # tuples, arrays ... as they were returned
            if wf["status"] in (WorkflowState.FAILED.value, WorkflowState.CANCELLED.value):
                raise WorkflowFailedError(self.workflow_id, wf["status"], wf["error"] or "")
            if deadline is not None and time.monotonic() >= deadline:
                raise WorkTimeout(f"workflow {self.workflow_id}", float(timeout or 0), 0, 1)
            time.sleep(delay if deadline is None else min(delay, deadline - time.monotonic()))
            delay = min(delay * 1.5, 2.0)


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
        if isinstance(func, WorkflowFunction):
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
        handle = WorkflowHandle(workflow_id, connect(url, settings))
        handle.status  # noqa: B018 - read now: an unknown id fails here, not at .result()
        return handle

    def submit(self, *args: Any, **kwargs: Any) -> int:
        """Start a ``remote=True`` workflow on the service and return its id at once."""
        if _context.importing_script.get():
            raise _context.ScriptImportStop()
        if not self.remote:
            raise ConfigError("submit() is for remote=True workflows; use run()")
        from tasklift.api.decorators import WorkFunction
        from tasklift.api.submit import function_location

        service = connect(self.service, self.settings)
        source_dir = self.source_dir
        packed = self._pack(source_dir)
        service.store_archive(packed)
        function, script = function_location(WorkFunction(self.func), source_dir)
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
            return WorkflowHandle(workflow_id, connect(self.service, self.settings)).result()
        if _context.current_workflow.get() is not None:
            return self.func(*args, **kwargs)  # nested call: part of the running workflow
        engine = connect(self.service, self.settings)
        if self._backend_object is not None:
            register_backend(engine, self.backend, self._backend_object)
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
        _running.append(run)

        def ended() -> None:
            _running.remove(run)
            self.current_run = None

        return _run_recorded(run, serializer, lambda: self.func(*args, **kwargs), ended)


def _show_progress(settings: Settings) -> bool:
    if settings.quiet:
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())
