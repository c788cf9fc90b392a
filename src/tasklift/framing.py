"""Length-prefixed pickle frames: the pipe protocol between the local backend and workers.

The engine trusts nothing a worker sends: it reads worker frames with :func:`loads_outcomes`,
an unpickler that builds only plain values and :class:`~tasklift.records.Outcome` records
(a job's code can write to its worker's pipe; it must not reach the engine's process).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from typing import Any

__all__ = [
    "HEADER",
    "MAX_WORKER_FRAME",
    "encode_frame",
    "loads_outcomes",
    "read_frame",
    "write_frame",
]

HEADER = struct.Struct("!I")
MAX_WORKER_FRAME = 1 << 30
"""Largest frame the engine reads from a worker (1 GiB): a larger length is a broken worker."""
_WORKER_CLASSES = frozenset({("tasklift.records", "Outcome")})


class _OutcomeUnpickler(pickle.Unpickler):
    """Builds plain values (tuples, lists, dicts, str, bytes, numbers) and ``Outcome`` only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _WORKER_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a worker frame may not name {module}.{name}")


def loads_outcomes(data: bytes | bytearray | memoryview) -> Any:
    """Unpickle one frame a worker sent, refusing every class but ``Outcome``.

    Raises:
        pickle.UnpicklingError: the frame names another class or is malformed.
    """
    return _OutcomeUnpickler(io.BytesIO(data)).load()


def encode_frame(obj: Any) -> bytes:
    """Return ``obj`` pickled with its 4-byte length prefix."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def write_frame(fd: int, obj: Any) -> None:
    """Write one frame to ``fd`` (blocking until all of it is written)."""
    view = memoryview(encode_frame(obj))
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_frame(fd: int) -> Any:
    """Read one frame from ``fd``; raise ``EOFError`` when the other side closed."""
    (size,) = HEADER.unpack(_read_exact(fd, HEADER.size))
    return pickle.loads(_read_exact(fd, size))


def _read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
