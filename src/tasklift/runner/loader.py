"""Loading work functions: a work's function imported from its extracted source archive.

One archive is importable at a time (switching archives removes the previous one's modules);
a worker of a multi-user server gets its archives over the pipe instead of from the store.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasklift import _context
from tasklift.archive import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, ensure_extracted
from tasklift.records import WorkSpec

__all__ = ["SCRIPT_MODULE_PREFIX", "FunctionLoader"]

logger = logging.getLogger(__name__)

SCRIPT_MODULE_PREFIX = "tasklift_script_"


class FunctionLoader:
    """Imports work functions from extracted archives, caching them per (archive, function).

    Only one archive is on ``sys.path`` at a time: switching archives removes the modules
    imported from the previous one, so two workflows with a ``helpers.py`` each never mix.
    Thread-safe: a Dask worker's threads share one loader (loads take turns).
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
        self._lock = threading.Lock()

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
        with self._lock:
            return self._load(work)

    def _load(self, work: WorkSpec) -> Callable[..., Any]:
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
