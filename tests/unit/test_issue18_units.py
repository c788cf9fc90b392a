"""Issue 18 in isolation: exact JSON round trips, stable keys for plain JSON, the memo key
with and without ``when=``, signature errors not retried, and failure messages."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from tasklift.errors import JobFailure, SerializationError, WorkFailed
from tasklift.keys import canonical_json, get_unique_id_for_dict, job_key, memo_key
from tasklift.records import JobSpec, WorkSpec
from tasklift.runner.execute import run_job
from tasklift.serializers import get_serializer

json_ser = get_serializer("json")


def test_json_round_trips_tuples_arrays_int_keys_and_special_floats():
    value = {
        "t": (1, (2, "x")),
        "a": np.arange(6, dtype=np.int32).reshape(2, 3),
        "f": np.array([1.5, np.nan]),
        "d": {1: "one", (2, 3): "pair"},
        "nan": float("-inf"),
        "looks_like_a_tag": {"__tuple__": [1]},
        "np_scalars": [np.float64(0.5), np.int64(3), np.bool_(True)],
    }
    back = json_ser.loads(json_ser.dumps(value))
    assert back["t"] == (1, (2, "x"))
    assert back["a"].dtype == np.int32 and back["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back["f"][0] == 1.5 and math.isnan(back["f"][1])
    assert back["d"] == {1: "one", (2, 3): "pair"}
    assert back["nan"] == -math.inf
    assert back["looks_like_a_tag"] == {"__tuple__": [1]}
    # NumPy scalars arrive as Python numbers
    assert [type(v) for v in back["np_scalars"]] == [float, int, bool]


def test_plain_json_travels_as_itself():
    plain = {"a": [1, 2.5, "x", None, True], "b": {"c": {}}}
    assert json_ser.dumps(plain) == json.dumps(plain, separators=(",", ":")).encode()


@pytest.mark.parametrize("bad", [{1, 2}, b"raw", object()])
def test_what_json_cannot_carry_is_refused_naming_pickle(bad):
    with pytest.raises(SerializationError, match="serializer='pickle'"):
        json_ser.dumps({"x": bad})


def test_keys_of_plain_json_are_unchanged():
    d = {"b": 1, "a": [1.5, "x", None], "c": {"z": True}}
    old = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert get_unique_id_for_dict(d) == hashlib.sha256(old.encode()).hexdigest()
    assert get_unique_id_for_dict({"x": np.float64(0.5), "n": np.int64(3)}) == \
        get_unique_id_for_dict({"x": 0.5, "n": 3})


def test_keys_tell_tuples_and_arrays_from_lists_and_ignore_dict_order():
    assert get_unique_id_for_dict({"x": (1, 2)}) != get_unique_id_for_dict({"x": [1, 2]})
    assert get_unique_id_for_dict({"x": np.arange(2)}) != get_unique_id_for_dict({"x": [0, 1]})
    assert canonical_json({"d": {2: "b", 1: "a"}}) == canonical_json({"d": {1: "a", 2: "b"}})
    assert job_key([(1,)], {}) != job_key([[1]], {})


def test_memo_key_without_when_is_unchanged_and_when_changes_it():
    old = hashlib.sha256(b"sha|mod:f|None|json").hexdigest()
    assert memo_key("sha", "mod:f", None, "json") == old
    assert memo_key("sha", "mod:f", None, "json", when=b"p1") != old
    assert memo_key("sha", "mod:f", None, "json", when=b"p1") != memo_key(
        "sha", "mod:f", None, "json", when=b"p2")


def _two(a, b):
    return a + b


def _raises_type_error(a, b):
    raise TypeError("inside the function")


def _spec() -> WorkSpec:
    return WorkSpec(work_id=1, name="w", function="m:f", script=None, archive_sha=None,
                    archive_file=None, cache_dir="/tmp", serializer="json", timeout=None,
                    retries=2, init_env=None, backend="local", resources={})


def test_arguments_that_do_not_fit_are_not_retried():
    payload = json_ser.dumps({"kwargs": {"a": 1, "c": 2}})
    outcome = run_job(_two, _spec(), JobSpec(1, 1, payload))
    assert (outcome.ok, outcome.error_type, outcome.retryable) == (False, "TypeError", False)
    fits = json_ser.dumps({"kwargs": {"a": 1, "b": 2}})
    inside = run_job(_raises_type_error, _spec(), JobSpec(1, 1, fits))
    assert (inside.ok, inside.retryable) == (False, True)  # the function's own error


def test_work_failed_says_min_success_as_a_share_and_names_kwargs():
    failure = JobFailure(key="ab" * 32, kwargs={"x": 1, "blob": "y" * 500}, error_type="E",
                         message="boom", attempts=3)
    text = str(WorkFailed("w", [failure], 4, 3, min_success=1.0))
    assert "100 % of the jobs" in text
    assert "{'x': 1, 'blob': 'yyy" in text and "..." in text
    assert len(text.splitlines()[1]) < 250  # kwargs truncated
