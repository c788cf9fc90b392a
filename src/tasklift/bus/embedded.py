"""The ``embedded`` bus: in-process delivery, synchronous on the publisher's thread.

URL format: ``embedded://``. Supports: batches, per-destination fan-out. No persistence
(the DB is the source of truth), no cross-process delivery; nothing is ever missed, so it never
delivers a ``MissedMessages`` event.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from tasklift.bus.base import Bus, Callback, Subscription, deliver

__all__ = ["EmbeddedBus"]


class _EmbeddedSubscription(Subscription):
    def __init__(self, bus: EmbeddedBus, destination: str, callback: Callback) -> None:
        self._bus = bus
        self.destination = destination
        self.callback = callback

    def close(self) -> None:
        self._bus._remove(self)


class EmbeddedBus(Bus):
    """Calls subscribers' callbacks directly when a batch is published."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, list[_EmbeddedSubscription]] = {}

    def publish(self, destination: str, messages: Sequence[Any]) -> None:
        """Deliver ``messages`` to every subscriber of ``destination`` now."""
        if not messages:
            return
        with self._lock:
            subs = list(self._subs.get(destination, ()))
        deliver((sub.callback for sub in subs), messages, destination)

    def subscribe(self, destination: str, callback: Callback) -> Subscription:
        """Register ``callback`` for ``destination``."""
        sub = _EmbeddedSubscription(self, destination, callback)
        with self._lock:
            self._subs.setdefault(destination, []).append(sub)
        return sub

    def _remove(self, sub: _EmbeddedSubscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.destination, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._subs.pop(sub.destination, None)
