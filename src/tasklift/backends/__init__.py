"""Backends: where jobs run: ``local`` (worker processes), ``dask``, ``slurm``; one interface."""

from importlib import import_module
from typing import Any

from tasklift.backends.base import Backend, OutcomeSink
from tasklift.backends.local import LocalBackend

__all__ = ["Backend", "DaskBackend", "LocalBackend", "OutcomeSink", "SlurmBackend"]

_LAZY = {"DaskBackend": "tasklift.backends.dask", "SlurmBackend": "tasklift.backends.slurm"}
"""Backends imported on first use (``import tasklift`` never imports dask)."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tasklift.backends' has no attribute {name!r}")
    return getattr(import_module(module), name)
