"""Job keys and serializers."""

import hashlib

import numpy as np
import pytest

from tasklift.errors import ConfigError, SerializationError
from tasklift.keys import canonical_json, get_unique_id_for_dict, job_key
from tasklift.serializers import get_serializer


def test_key_is_sha256_of_canonical_json():
    d = {"b": 1, "a": [1.5, "x"]}
    assert canonical_json(d) == '{"a":[1.5,"x"],"b":1}'
    assert get_unique_id_for_dict(d) == hashlib.sha256(b'{"a":[1.5,"x"],"b":1}').hexdigest()
    assert get_unique_id_for_dict({"a": [1.5, "x"], "b": 1}) == get_unique_id_for_dict(d)


def test_numpy_values_key_like_plain_ones():
    assert get_unique_id_for_dict({"x": np.float64(0.5), "n": np.int64(3)}) == \
        get_unique_id_for_dict({"x": 0.5, "n": 3})


def test_positional_keys_differ_from_kwargs():
    assert job_key([1], {}) != job_key([], {"x": 1})
    assert job_key([], {"x": 1}) == get_unique_id_for_dict({"x": 1})


def test_json_serializer_round_trip_and_errors():
    s = get_serializer("json")
    assert s.loads(s.dumps({"a": [0, None, ""], "f": np.float32(1.5)})) == {
        "a": [0, None, ""], "f": 1.5}
    with pytest.raises(SerializationError, match="serializer='pickle'"):
        s.dumps({1, 2})
    with pytest.raises(ConfigError, match="known: json, pickle"):
        get_serializer("yaml")


def test_pickle_serializer_round_trip():
    s = get_serializer("pickle")
    assert s.loads(s.dumps({1, 2})) == {1, 2}
