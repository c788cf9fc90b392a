"""The local backend's pipe protocol: one typed message each; the engine builds only worker
messages and Outcome records from a worker's frames, nothing else."""

from __future__ import annotations

import os
import pickle

import pytest

from tasklift.records import JobSpec, Outcome, WorkSpec
from tasklift.runner.protocol import (
    HEADER,
    MAX_WORKER_FRAME,
    Archive,
    Cancel,
    Done,
    Jobs,
    ProtocolError,
    Ready,
    Started,
    Work,
    decode_from_worker,
    encode,
    read_message,
    split_frames,
    write_message,
)


class _RunsCode:
    def __reduce__(self):  # what a hostile job writes to its worker's pipe
        return (os.system, ("true",))


def _body(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return data


def test_worker_messages_round_trip() -> None:
    outcome = Outcome(7, 2, ok=True, result=b"[1]", stdout="hi", started_at=1.0)
    for message in (Done([outcome]), Started(7, 2), Ready()):
        assert decode_from_worker(encode(message)[HEADER.size :]) == message


def test_engine_messages_reach_the_worker_through_a_pipe() -> None:
    work = WorkSpec(3, "w", "m:f", script=None, archive_sha=None, archive_file=None, cache_dir="c")
    sent = [Work(work), Jobs(3, [JobSpec(1, 1, b"{}")]), Archive("ab", b"x"), Cancel([1])]
    read_fd, write_fd = os.pipe()
    try:
        for message in sent:
            write_message(write_fd, message)
        os.close(write_fd)
        assert [read_message(read_fd) for _ in sent] == sent
        with pytest.raises(EOFError):
            read_message(read_fd)
    finally:
        os.close(read_fd)


@pytest.mark.parametrize("payload", [_RunsCode(), [Outcome(1, 1, ok=True), _RunsCode()], Exception])
def test_any_other_class_is_refused(payload: object) -> None:
    with pytest.raises(ProtocolError, match="may not name"):
        decode_from_worker(_body(Done(payload)))


@pytest.mark.parametrize(
    "message",
    [("done", []), Done("not a list"), Started("7", 2), [Ready()]],
    ids=["tuple", "outcomes-not-a-list", "job-id-not-int", "list"],
)
def test_a_frame_that_is_no_worker_message_is_refused(message: object) -> None:
    with pytest.raises(ProtocolError):
        decode_from_worker(_body(message))


def test_engine_messages_are_refused_from_a_worker() -> None:
    with pytest.raises(ProtocolError, match="may not name"):
        decode_from_worker(encode(Cancel([1]))[HEADER.size :])


def test_frames_are_split_whole_and_an_oversized_one_is_refused() -> None:
    buffer = bytearray(encode(Ready()) + encode(Started(1, 1)))
    half = encode(Done([]))
    buffer += half[:5]
    frames = list(split_frames(buffer))
    assert [decode_from_worker(f) for f in frames] == [Ready(), Started(1, 1)]
    assert bytes(buffer) == half[:5]
    huge = bytearray(HEADER.pack(MAX_WORKER_FRAME + 1))
    with pytest.raises(ProtocolError, match="a frame of"):
        list(split_frames(huge))
