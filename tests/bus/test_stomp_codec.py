"""The STOMP bus's frame bodies (``bus.stomp_codec``): batches, references, splitting."""

from __future__ import annotations

import orjson
import pytest

from tasklift.bus.base import MissedMessages
from tasklift.bus.stomp_codec import (
    INLINE_LIMIT,
    REFERENCE_IDX,
    decode_batch,
    encode_batch,
    is_name,
    is_reference,
)
from tasklift.records import ResultRecord


def rec(job_id: int, result: bytes | None = b"1", **kw) -> ResultRecord:
    return ResultRecord(job_id, kw.pop("idx", job_id), kw.pop("state", "finished"), result, **kw)


def test_a_batch_is_one_json_body():
    batch = [rec(i, b"%d" % i, done_seq=i + 1) for i in range(10)]
    (body,) = encode_batch(batch)
    data = orjson.loads(body)
    assert data["v"] == 1 and len(data["m"]) == 10
    assert decode_batch(body) == batch


def test_results_at_the_limit_stay_inline_and_above_it_go_by_reference():
    at_limit, over = (
        rec(1, b"a" * INLINE_LIMIT, done_seq=5),
        rec(2, b"b" * (INLINE_LIMIT + 1), done_seq=6),
    )
    (body,) = encode_batch([at_limit, over])
    items = orjson.loads(body)["m"]
    assert "result_ref" not in items[0]
    assert items[1]["result_ref"] is True and items[1]["result"] is None
    assert items[1]["idx"] == 2 and items[1]["done_seq"] == 6  # on the wire, for other readers
    first, second = decode_batch(body)
    assert first == at_limit
    # decoded: "re-read the DB" (idx < 0), done_seq 0 so a gap-free cursor stays below it
    assert second == ResultRecord(2, REFERENCE_IDX, "finished", None)
    assert is_reference(second) and not is_reference(first)


def test_a_huge_traceback_goes_by_reference_too():
    failed = rec(3, None, state="failed", error_type="E", traceback="x" * (INLINE_LIMIT + 1))
    (decoded,) = decode_batch(encode_batch([failed])[0])
    assert is_reference(decoded)
    assert (decoded.job_id, decoded.state, decoded.error_type) == (3, "failed", "E")
    assert decoded.traceback is None


def test_the_inline_limit_is_configurable():
    (body,) = encode_batch([rec(1, b"x" * 100)], inline_limit=10)
    assert is_reference(decode_batch(body)[0])


def test_a_batch_over_the_frame_limit_is_split_in_order():
    batch = [rec(i, b"z" * 1000) for i in range(100)]
    bodies = encode_batch(batch, max_frame_bytes=20_000)
    assert len(bodies) > 1
    assert all(len(b) <= 20_000 + 2000 for b in bodies)
    assert [m for body in bodies for m in decode_batch(body)] == batch


def test_one_record_larger_than_a_frame_still_travels():
    (body,) = encode_batch([rec(1, b"q" * 5000)], max_frame_bytes=100)
    assert decode_batch(body) == [rec(1, b"q" * 5000)]


def test_json_messages_pass_through():
    batch = [{"event": "cancelled", "work": 3}, [1, 2], "text", 7, None]
    assert decode_batch(encode_batch(batch)[0]) == batch


def test_empty_batches_make_no_frames():
    assert encode_batch([]) == []


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"v": 2, "m": []}',
        b'{"v": 1, "m": [{"idx": 1}]}',
        b'{"v":1,"m":[{"job_id":1,"idx":0,"state":"finished","result":"@@"}]}',
    ],
)
def test_garbage_is_a_value_error(body):
    with pytest.raises(ValueError):
        decode_batch(body)


def test_only_decoded_records_are_references():
    assert not is_reference({"idx": -1})
    assert not is_reference(MissedMessages("reconnected"))  # an event, not a record


def test_destination_names_are_words_joined_by_dots():
    assert is_name("work.42") and is_name("tasklift-test_1.prod")
    assert not any(is_name(bad) for bad in ("", "work..1", "work.*", "/topic/x", "work/1"))
