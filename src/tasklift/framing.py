"""Length-prefixed pickle frames: the pipe protocol between the local backend and workers."""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

__all__ = ["HEADER", "encode_frame", "read_frame", "write_frame"]

HEADER = struct.Struct("!I")


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
