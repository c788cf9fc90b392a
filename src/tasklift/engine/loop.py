"""The engine's loop: one thread owns the engine's memory, so no lock is held across I/O.

Every change to what the engine holds in memory (live works, attempts, held outcomes) runs as a
command on this one thread, in the order the commands arrive (dask/distributed's scheduler does
the same behind its event loop). Backends, the job API, the monitor and the store thread never
touch that memory: they hand the loop a command and, when they need its answer, wait for it.
A backend that reports from its own thread therefore never re-enters the engine, and the
engine never calls a backend while anything else is locked.

A command the loop thread hands itself (:meth:`EngineLoop.call` from a command) runs at once;
:meth:`EngineLoop.post` always queues, so a report that arrives while a command runs (e.g. an
outcome a backend sends from inside ``submit``) is handled after it, once its attempt is known.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from tasklift.errors import ConfigError

__all__ = ["EngineLoop", "LoopStopped"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

ALIVE_CHECK = 1.0
"""Seconds between checks that the loop still runs while a caller waits for an answer."""


class LoopStopped(ConfigError):
    """The engine's loop has stopped (the engine was closed): nothing more runs."""


_STOP = object()


class EngineLoop:
    """A thread that runs commands one at a time, in arrival order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def in_loop(self) -> bool:
        """True on the loop's own thread."""
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the loop and return its result (or raise its exception).

        Raises:
            LoopStopped: the loop stopped before the command ran.
        """
        if self.in_loop():
            return fn(*args)
        if self._stopped.is_set():
            raise LoopStopped("the engine is closed")
        future: Future[T] = Future()
        self._queue.put((fn, args, future))
        while True:
            try:
                return future.result(timeout=ALIVE_CHECK)
            except TimeoutError:
                if not self._thread.is_alive() and not future.done():
                    raise LoopStopped("the engine's loop stopped before answering") from None

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` on the loop; its errors are logged. Dropped once stopped."""
        if self._stopped.is_set():
            logger.debug("engine loop stopped: dropped %s", getattr(fn, "__name__", fn))
            return
        self._queue.put((fn, args, None))

    def stop(self, timeout: float = 30.0) -> None:
        """Run what is queued, then end the thread (waits up to ``timeout`` seconds)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._queue.put(_STOP)
        if not self.in_loop():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error("the engine's loop did not stop within %.0f s", timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args, future = item
            if future is not None and not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # the caller gets it; posted commands are logged
                if future is not None:
                    future.set_exception(exc)
                else:
                    logger.exception("engine command %s failed", getattr(fn, "__name__", fn))
                if not isinstance(exc, Exception):
                    raise
            else:
                if future is not None:
                    future.set_result(result)
