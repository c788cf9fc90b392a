"""The job runner: loads a work function from its source archive and runs jobs.

``python -m tasklift.runner worker`` is the persistent worker of the ``local`` backend: it
reads batches of jobs as length-prefixed pickle frames on stdin and writes outcomes on its
original stdout; the job's own prints go to a capture file instead, so they never mix.

A worker of a multi-user server (``TASKLIFT_RUNNER_PRIVATE=1``) runs under its own identity and
cannot read the server's archive store: the engine sends each archive over the pipe, and the
worker verifies and extracts it in its private home.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import select
import sys
import tempfile
import threading
import time
import traceback
import types
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasklift import _context
from tasklift.archive import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, ensure_extracted
from tasklift.errors import SerializationError
from tasklift.framing import read_frame, write_frame
from tasklift.records import JobSpec, Outcome, WorkSpec
from tasklift.serializers import get_serializer
from tasklift.settings import Settings

__all__ = ["FunctionLoader", "failure_outcome", "run_job"]

logger = logging.getLogger(__name__)

LOG_HEAD = 16 * 1024
LOG_TAIL = 48 * 1024
SCRIPT_MODULE_PREFIX = "tasklift_script_"


# --------------------------------------------------------------------------- loading
class FunctionLoader:
    """Imports work functions from extracted archives, caching them per (archive, function).

    Only one archive is on ``sys.path`` at a time: switching archives removes the modules
    imported from the previous one, so two workflows with a ``helpers.py`` each never mix.
    """

    def __init__(
        self,
        private_dir: Path | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
    ) -> None:
        self._limits = {"max_bytes": max_bytes, "max_files": max_files}
        self._cache: dict[tuple[str | None, str, str | None], Callable[..., Any]] = {}
        self._current_root: str | None = None
        self._current_sha: str | None = None
        self._private_dir = private_dir
        self._private: dict[str, Path] = {}  # archive sha -> its file in the private dir

    def receive_archive(self, sha256: str, data: bytes) -> None:
        """Keep an archive the engine sent (private mode): written here, verified on use."""
        if self._private_dir is None:
            raise RuntimeError("this worker reads archives from the store, not the pipe")
        folder = self._private_dir / "archives"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"{sha256}.tar.gz"
        path.write_bytes(data)
        self._private[sha256] = path

    @property
    def current_root(self) -> str | None:
        """The extracted archive whose modules are importable now."""
        return self._current_root

    def load(self, work: WorkSpec) -> Callable[..., Any]:
        """Return the plain function of ``work`` (the ``@work`` wrapper removed)."""
        cache_key = (work.archive_sha, work.function, work.script)
        fn = self._cache.get(cache_key)
        root = self._activate(work)  # a cached function's lazy imports need its root too
        if fn is not None:
            return fn
        module_name, _, qualname = work.function.partition(":")
        if work.script is not None:
            if root is None:
                raise ImportError(f"{work.function} was defined in a script but has no archive")
            module = self._import_script(Path(root) / work.script)
        else:
            module = importlib.import_module(module_name)
        obj: Any = module
        for part in qualname.split("."):
            obj = getattr(obj, part)
        fn = getattr(obj, "__tasklift_function__", obj)
        if not callable(fn):
            raise TypeError(f"{work.function} is not callable")
        self._cache[cache_key] = fn
        return fn

    def _activate(self, work: WorkSpec) -> str | None:
        if work.archive_sha is None or work.archive_file is None:
            return None
        if work.archive_sha == self._current_sha:
            return self._current_root
        if self._private_dir is not None:
            archive = self._private.get(work.archive_sha)
            if archive is None:
                raise ImportError(f"archive {work.archive_sha[:12]} was not sent to this worker")
            cache = self._private_dir / "cache"
            root = str(ensure_extracted(work.archive_sha, archive, cache, **self._limits))
        else:
            archive, cache = Path(work.archive_file), Path(work.cache_dir)
            root = str(ensure_extracted(work.archive_sha, archive, cache, **self._limits))
        if root != self._current_root:
            if self._current_root is not None:
                self._forget(self._current_root)
            sys.path.insert(0, root)
            importlib.invalidate_caches()
            self._current_root = root
        self._current_sha = work.archive_sha
        return root

    def _forget(self, root: str) -> None:
        while root in sys.path:
            sys.path.remove(root)
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None) or ""
            if path.startswith(root + os.sep):
                del sys.modules[name]
        self._cache = {k: v for k, v in self._cache.items() if k[0] is not None}

    def _import_script(self, path: Path) -> types.ModuleType:
        """Import a script by path under another name, so ``__main__`` blocks do not run.

        An unguarded ``Workflow(...).run()`` at the script's top level stops the import at that
        line (the functions defined above it stay usable) instead of starting a workflow.
        """
        name = SCRIPT_MODULE_PREFIX + path.stem
        existing = sys.modules.get(name)
        if existing is not None and getattr(existing, "__file__", None) == str(path):
            return existing
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import script {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        token = _context.importing_script.set(True)
        try:
            spec.loader.exec_module(module)
        except _context.ScriptImportStop:
            logger.debug("import of %s stopped at its Workflow.run() call", path)
        finally:
            _context.importing_script.reset(token)
        return module


# --------------------------------------------------------------------------- running
def run_job(fn: Callable[..., Any], work: WorkSpec, job: JobSpec) -> Outcome:
    """Run one attempt of one job in this process and return its outcome (never raises)."""
    serializer = get_serializer(work.serializer)
    started = time.time()
    try:
        call = serializer.loads(job.payload)
        if work.when is not None and not _condition_holds(work, call):
            return Outcome(
                job.job_id,
                job.attempt,
                ok=False,
                skipped=True,
                error_type="Skipped",
                error_message=f"when= condition on {work.when_arg!r} is false",
                started_at=started,
                finished_at=time.time(),
            )
        value = fn(*call.get("args", ()), **call.get("kwargs", {}))
    except Exception as exc:  # noqa: BLE001 - the user's error becomes the job's outcome
        return Outcome(
            job.job_id,
            job.attempt,
            ok=False,
            error_type=_type_name(exc),
            error_message=_one_line(exc),
            traceback=_user_traceback(exc),
            retryable=not (isinstance(exc, TypeError) and _does_not_fit(fn, job, serializer)),
            started_at=started,
            finished_at=time.time(),
        )
    try:
        data = serializer.dumps(value)
    except SerializationError as exc:
        return Outcome(
            job.job_id,
            job.attempt,
            ok=False,
            error_type="ResultNotSerializable",
            error_message=str(exc),
            retryable=False,
            started_at=started,
            finished_at=time.time(),
        )
    return Outcome(
        job.job_id, job.attempt, ok=True, result=data, started_at=started, finished_at=time.time()
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


def failure_outcome(job: JobSpec, exc: BaseException, *, retryable: bool = True) -> Outcome:
    """Turn an error raised before the function ran (import, archive) into an outcome."""
    now = time.time()
    return Outcome(
        job.job_id,
        job.attempt,
        ok=False,
        error_type=_type_name(exc),
        error_message=_one_line(exc),
        traceback="".join(traceback.format_exception(exc)),
        retryable=retryable,
        started_at=now,
        finished_at=now,
    )


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


# --------------------------------------------------------------------------- worker
class _Capture:
    """Redirects fds 1 and 2 into one file and slices out what each job printed."""

    LIMIT = 64 * 1024 * 1024

    def __init__(self) -> None:
        handle, self.path = tempfile.mkstemp(prefix="tasklift-worker-", suffix=".log")
        os.close(handle)
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        os.unlink(self.path)
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)

    def mark(self) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        size = os.fstat(self.fd).st_size
        if size > self.LIMIT:
            os.ftruncate(self.fd, 0)
            return 0
        return size

    def text_since(self, start: int) -> str | None:
        end = self.mark()
        if end <= start:
            return None
        length = end - start
        if length <= LOG_HEAD + LOG_TAIL:
            data = os.pread(self.fd, length, start)
        else:
            skipped = length - LOG_HEAD - LOG_TAIL
            data = (
                os.pread(self.fd, LOG_HEAD, start)
                + f"\n... [{skipped} bytes skipped] ...\n".encode()
                + os.pread(self.fd, LOG_TAIL, end - LOG_TAIL)
            )
        return data.decode("utf-8", errors="replace")


class _Worker:
    """The persistent worker loop of the local backend."""

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        private = os.environ.get("TASKLIFT_RUNNER_PRIVATE") == "1"
        settings = Settings()  # this process's edge: the archive limits of its environment
        self.loader = FunctionLoader(
            Path.home() / "worker" if private else None,
            max_bytes=settings.archive_max_bytes,
            max_files=settings.archive_max_files,
        )
        self.works: dict[int, WorkSpec] = {}
        self.queue: deque[tuple[int, JobSpec]] = deque()
        self.cancelled: set[int] = set()
        self.lock = threading.Lock()
        self.capture = _Capture()
        self.closing = False

    def handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "work":
            spec: WorkSpec = message[1]
            self.works[spec.work_id] = spec
        elif kind == "jobs":
            work_id, jobs = message[1], message[2]
            self.queue.extend((work_id, job) for job in jobs)
        elif kind == "archive":
            self.loader.receive_archive(message[1], message[2])
        elif kind == "forget":
            self.works.pop(message[1], None)
        elif kind == "cancel":
            self.cancelled.update(message[1])
        elif kind == "stop":
            self.closing = True

    def drain_input(self, block: bool) -> None:
        while True:
            if not block:
                ready, _, _ = select.select([self.in_fd], [], [], 0)
                if not ready:
                    return
            self.handle(read_frame(self.in_fd))
            block = False

    def send(self, outcomes: list[Outcome], started: tuple[int, int] | None = None) -> None:
        with self.lock:
            if outcomes:
                write_frame(self.out_fd, ("done", outcomes))
            if started is not None:
                write_frame(self.out_fd, ("started", *started))

    def send_ready(self) -> None:
        """Tell the engine this worker is up (init_env and the interpreter worked)."""
        with self.lock:
            write_frame(self.out_fd, ("ready",))

    def run_next(self) -> None:
        work_id, job = self.queue.popleft()
        if job.job_id in self.cancelled:
            self.cancelled.discard(job.job_id)
            return
        work = self.works[work_id]
        start = self.capture.mark()
        try:
            fn = self.loader.load(work)
        except Exception as exc:  # noqa: BLE001 - import failures are the job's outcome
            outcome = failure_outcome(job, exc)
        else:
            if work.kind == "workflow":  # a remote workflow's function: its works go to the API
                from tasklift.api.run import remote_workflow_call

                fn = remote_workflow_call(fn, work, job.token, self.loader.current_root)
            if work.timeout is not None:
                self.send([], started=(job.job_id, job.attempt))
            outcome = run_job(fn, work, job)
        captured = self.capture.text_since(start)
        if captured:
            outcome.stdout = captured
        # written at once: the engine reads whatever is in the pipe in one go (batching on
        # its side), and a worker that dies next never takes a finished result with it
        self.send([outcome])

    def loop(self) -> None:
        try:
            while not self.closing:
                self.drain_input(block=not self.queue)
                while self.queue and not self.closing:
                    self.run_next()
                    self.drain_input(block=False)
        except EOFError:
            pass  # the engine closed our stdin: exit quietly
        finally:
            self.closing = True


def worker_main() -> None:
    """Entry point of ``python -m tasklift.runner worker``."""
    out_fd = os.dup(1)
    in_fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _context.in_job_runner.set(True)
    os.environ["TASKLIFT_IN_JOB"] = "1"
    worker = _Worker(in_fd, out_fd)
    worker.send_ready()
    worker.loop()


def main(argv: list[str] | None = None) -> int:
    """Command line of the job runner."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"]:
        worker_main()
        return 0
    if args[:1] in (["job"], ["flush-spool"]):
        return _remote_main(args)
    print(
        "usage: python -m tasklift.runner worker | job --batch-dir DIR [--index I] | flush-spool",
        file=sys.stderr,
    )
    return 2


def _remote_main(args: list[str]) -> int:
    """The remote job runner's commands (see :mod:`tasklift.jobrunner`)."""
    import argparse

    from tasklift import jobrunner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s tasklift %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m tasklift.runner")
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="run one job of a batch directory (a Slurm array element)")
    job.add_argument("--batch-dir", required=True)
    job.add_argument("--index", type=int, default=None, help="default: $SLURM_ARRAY_TASK_ID")
    sub.add_parser("flush-spool", help="deliver outcomes spooled while the service was away")
    ns = parser.parse_args(args)
    if ns.command == "flush-spool":
        print(f"{jobrunner.flush_spool(deadline_seconds=30.0)} spooled outcomes delivered")
        return 0
    return jobrunner.batch_main(ns.batch_dir, ns.index)


if __name__ == "__main__":
    sys.exit(main())
