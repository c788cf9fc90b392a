"""The engine's backends by name: made by the factory the composition root hands in (the engine
never picks a backend class by name itself), started once with the engine as their sink."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tasklift.backends.base import Backend, OutcomeSink
from tasklift.errors import ConfigError

__all__ = ["BackendFactory", "BackendPool"]

BackendFactory = Callable[[str], Backend]
"""Makes the backend called ``name`` (``local``, ``dask``, ... or an alias), not yet started."""


class BackendPool:
    """Started backends by name."""

    def __init__(self, factory: BackendFactory, sink: OutcomeSink) -> None:
        self._factory = factory
        self._sink = sink
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()  # guards the dict: two threads never start one name twice

    def add(self, name: str, backend: Backend) -> None:
        """Register and start a backend object under ``name``."""
        with self._lock:
            known = self._backends.get(name)
            if known is backend:
                return
            if known is not None:
                raise ConfigError(f"another backend is registered as {name!r}")
            backend.start(self._sink)
            self._backends[name] = backend

    def get(self, name: str) -> Backend:
        """The started backend called ``name`` (made and started on first use)."""
        backend = self._backends.get(name)
        if backend is not None:
            return backend
        with self._lock:
            backend = self._backends.get(name)
            if backend is None:
                backend = self._factory(name)
                backend.start(self._sink)
                self._backends[name] = backend
            return backend

    def started(self, name: str) -> Backend | None:
        """The backend called ``name`` if it was started, else ``None`` (never starts one)."""
        return self._backends.get(name)

    def take_all(self) -> list[Backend]:
        """Every started backend, forgotten here (the engine closes them)."""
        with self._lock:
            backends = list(self._backends.values())
            self._backends.clear()
            return backends
