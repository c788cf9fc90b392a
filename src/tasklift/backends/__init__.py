"""Backends: where jobs run. ``local`` (worker processes) today; one interface for all."""

from tasklift.backends.base import Backend, OutcomeSink
from tasklift.backends.local import LocalBackend

__all__ = ["Backend", "LocalBackend", "OutcomeSink"]
