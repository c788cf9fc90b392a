"""The pipe protocol between the local backend and its worker processes.

Each message is one dataclass below, defined once and used by both ends; on the pipe it is one
length-prefixed pickle frame (:func:`encode`). The engine sends :data:`ToWorker` messages, a
worker answers with :data:`FromWorker` ones.

The engine trusts nothing a worker sends: it decodes worker frames with
:func:`decode_from_worker`, an unpickler that builds only plain values, the worker's message
classes and :class:`~tasklift.records.Outcome` records (a job's code can write to its worker's
pipe; it must not reach the engine's process), and checks the message's shape.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tasklift.records import JobSpec, Outcome, WorkSpec

__all__ = [
    "HEADER",
    "MAX_WORKER_FRAME",
    "Archive",
    "Cancel",
    "Done",
    "FromWorker",
    "Jobs",
    "ProtocolError",
    "Ready",
    "Started",
    "ToWorker",
    "Work",
    "decode_from_worker",
    "encode",
    "read_message",
    "split_frames",
    "write_message",
]

HEADER = struct.Struct("!I")
MAX_WORKER_FRAME = 1 << 30
"""Largest frame the engine reads from a worker (1 GiB): a larger length is a broken worker."""


class ProtocolError(Exception):
    """A worker sent something that is not a message of this protocol."""


# ---------------------------------------------------------------- engine -> worker
@dataclass(frozen=True)
class Work:
    """A work whose jobs follow (sent once per worker and work)."""

    spec: WorkSpec


@dataclass(frozen=True)
class Jobs:
    """Jobs of a work sent before, to run in this order."""

    work_id: int
    jobs: list[JobSpec]


@dataclass(frozen=True)
class Archive:
    """A source archive itself, for an isolated worker that cannot read the archive store."""

    sha256: str
    data: bytes


@dataclass(frozen=True)
class Cancel:
    """Jobs the worker must drop from its queue (a running one is killed with its worker)."""

    job_ids: list[int]


ToWorker = Work | Jobs | Archive | Cancel


# ---------------------------------------------------------------- worker -> engine
@dataclass(frozen=True)
class Ready:
    """The worker is up: its interpreter and the work's ``init_env`` worked."""


@dataclass(frozen=True)
class Started:
    """The worker started this attempt: at once for works with a timeout (the backend times
    it from here), else only once it has run for a while (the engine records ``running``)."""

    job_id: int
    attempt: int


@dataclass(frozen=True)
class Done:
    """Outcomes of attempts the worker finished."""

    outcomes: list[Outcome]


FromWorker = Ready | Started | Done

_WORKER_CLASSES = frozenset(
    {("tasklift.records", "Outcome")}
    | {(cls.__module__, cls.__qualname__) for cls in (Ready, Started, Done)}
)


# ---------------------------------------------------------------- frames
def encode(message: ToWorker | FromWorker) -> bytes:
    """Return ``message`` as one frame: pickled, with its 4-byte length prefix."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def write_message(fd: int, message: ToWorker | FromWorker) -> None:
    """Write one message to ``fd`` (blocking until all of it is written)."""
    view = memoryview(encode(message))
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_message(fd: int) -> ToWorker:
    """Read one message the engine sent (worker side); ``EOFError`` when the engine closed.

    Raises:
        ProtocolError: the frame is not a message for a worker.
    """
    (size,) = HEADER.unpack(_read_exact(fd, HEADER.size))
    message = pickle.loads(_read_exact(fd, size))  # the engine is trusted
    if not isinstance(message, Work | Jobs | Archive | Cancel):
        raise ProtocolError(f"not a message for a worker: {type(message).__name__}")
    return message


def split_frames(buffer: bytearray) -> Iterator[bytes]:
    """Take the complete frames off the front of ``buffer`` (engine side), in order.

    Raises:
        ProtocolError: a frame is longer than :data:`MAX_WORKER_FRAME`.
    """
    while len(buffer) >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer)
        if size > MAX_WORKER_FRAME:
            raise ProtocolError(f"a frame of {size} bytes")
        if len(buffer) < HEADER.size + size:
            return
        body = bytes(buffer[HEADER.size : HEADER.size + size])
        del buffer[: HEADER.size + size]
        yield body


class _WorkerUnpickler(pickle.Unpickler):
    """Builds plain values, the worker's messages and ``Outcome`` only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _WORKER_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a worker frame may not name {module}.{name}")


def decode_from_worker(body: bytes | bytearray | memoryview) -> FromWorker:
    """Decode one frame a worker sent, refusing every class but its messages and ``Outcome``.

    Raises:
        ProtocolError: the frame names another class, is malformed or is not a message.
    """
    try:
        message = _WorkerUnpickler(io.BytesIO(body)).load()
    except (pickle.UnpicklingError, ValueError, EOFError, TypeError) as exc:
        raise ProtocolError(f"an unreadable frame ({exc})") from exc
    if isinstance(message, Done):
        if not isinstance(message.outcomes, list):
            raise ProtocolError("a Done message without a list of outcomes")
        return Done([o for o in message.outcomes if isinstance(o, Outcome)])
    if isinstance(message, Started):
        if type(message.job_id) is not int or type(message.attempt) is not int:
            raise ProtocolError("a Started message without job id and attempt")
        return message
    if isinstance(message, Ready):
        return message
    raise ProtocolError("a frame that is not a message")


def _read_exact(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
