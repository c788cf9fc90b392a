"""Serializers for kwargs and results: ``json`` (default, via orjson) and ``pickle`` (opt-in).

``json`` round-trips what it accepts exactly: plain JSON values travel as themselves; tuples,
NumPy arrays, dicts with non-string keys and non-finite floats travel tagged (see
:func:`encode_value`); NumPy scalars arrive as Python numbers. Anything else is refused with a
message naming ``serializer="pickle"``. ``pickle`` round-trips any picklable object.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

import orjson

from tasklift.errors import ConfigError, SerializationError

__all__ = [
    "JsonSerializer",
    "PickleSerializer",
    "Serializer",
    "decode_value",
    "encode_value",
    "get_serializer",
    "needs_tags",
]

TUPLE = "__tuple__"
NDARRAY = "__ndarray__"
DICT = "__dict__"
FLOAT = "__float__"
TAGS = frozenset({TUPLE, NDARRAY, DICT, FLOAT})
_MARKERS = tuple(f'"{t}"'.encode() for t in TAGS)
_SCALARS = frozenset({str, int, bool, type(None)})
_ARRAY_KINDS = frozenset("biuf")
_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class Serializer(Protocol):
    """Turns values into bytes and back."""

    name: str

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``; raise :class:`SerializationError` when it cannot."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode bytes made by :meth:`dumps`."""
        ...


def needs_tags(obj: Any) -> bool:
    """True when ``obj`` is not plain JSON (str-keyed dicts, lists, str, int, finite float,
    bool, None), so it must go through :func:`encode_value` to travel unchanged."""
    t = type(obj)
    if t is dict:
        if len(obj) == 1 and next(iter(obj)) in TAGS:
            return True  # a user dict that looks like a tag is escaped
        for k in obj:
            if type(k) is not str:
                return True
        return _any_needs_tags(obj.values())
    if t is list:
        return _any_needs_tags(obj)
    if t in _SCALARS:
        return False
    if t is float:
        return not math.isfinite(obj)
    return True


def _any_needs_tags(values: Iterable[Any]) -> bool:
    """True when one of ``values`` needs tags (see :func:`needs_tags`)."""
    for v in values:  # a plain loop, scalars inline: this runs for every payload
        tv = type(v)
        if tv in _SCALARS or (tv is float and v - v == 0.0):
            continue
        if needs_tags(v):
            return True
    return False


def encode_value(obj: Any, where: str = "value") -> Any:
    """Return ``obj`` as plain JSON data, tagging what JSON would change.

    ``(1, 2)`` -> ``{"__tuple__": [1, 2]}``; a NumPy array -> ``{"__ndarray__": {"dtype",
    "shape", "data"}}``; a dict with a non-string key (or a single key that is a tag) ->
    ``{"__dict__": [[k, v], ...]}``; ``nan``/``inf`` -> ``{"__float__": "nan"}``; a NumPy
    scalar -> the Python number. Plain JSON is returned as it is.

    Raises:
        SerializationError: a value JSON cannot carry unchanged (named by its path ``where``).
    """
    t = type(obj)
    if t in _SCALARS:
        return obj
    if t is float:
        return obj if math.isfinite(obj) else {FLOAT: repr(obj)}
    if t is dict:
        if all(type(k) is str for k in obj) and not (len(obj) == 1 and next(iter(obj)) in TAGS):
            return {k: encode_value(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return {
            DICT: [
                [encode_value(k, f"{where} key {k!r}"), encode_value(v, f"{where}[{k!r}]")]
                for k, v in obj.items()
            ]
        }
    if t is list:
        return [encode_value(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if t is tuple:
        return {TUPLE: [encode_value(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if t.__module__ == "numpy":
        return _encode_numpy(obj, where)
    raise SerializationError(
        f"{where} of type {t.__name__} cannot travel as JSON unchanged; convert it to plain "
        "values (dict, list, tuple, str, int, float, bool, None, NumPy array) or use "
        "@work(serializer='pickle')"
    )


def _encode_numpy(obj: Any, where: str) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ARRAY_KINDS:
            raise SerializationError(
                f"{where} is a NumPy array of dtype {obj.dtype}, which JSON cannot carry; "
                "use @work(serializer='pickle')"
            )
        data = obj.ravel().tolist()
        if obj.dtype.kind == "f" and not np.isfinite(obj).all():
            data = [encode_value(v, where) for v in data]
        return {NDARRAY: {"dtype": obj.dtype.str, "shape": list(obj.shape), "data": data}}
    if isinstance(obj, np.generic):
        value = obj.item()
        if type(value) in _SCALARS or type(value) is float:
            return encode_value(value, where)
    raise SerializationError(
        f"{where} of type numpy.{type(obj).__name__} cannot travel as JSON unchanged; "
        "use @work(serializer='pickle')"
    )


def decode_value(obj: Any) -> Any:
    """Undo :func:`encode_value` (plain JSON comes back as it is)."""
    t = type(obj)
    if t is list:
        return [decode_value(v) for v in obj]
    if t is not dict:
        return obj
    if len(obj) == 1:
        tag, inner = next(iter(obj.items()))
        if tag == TUPLE:
            return tuple(decode_value(v) for v in inner)
        if tag == DICT:
            return {decode_value(k): decode_value(v) for k, v in inner}
        if tag == FLOAT:
            return _SPECIAL[inner]
        if tag == NDARRAY:
            return _decode_array(inner)
    return {k: decode_value(v) for k, v in obj.items()}


def _decode_array(spec: dict[str, Any]) -> Any:
    try:
        import numpy as np
    except ImportError as exc:
        raise SerializationError(
            "a NumPy array arrived but numpy is not installed here; install numpy"
        ) from exc
    data = decode_value(spec["data"])
    return np.array(data, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"])


class JsonSerializer:
    """JSON through orjson; types JSON would change travel tagged (see :func:`encode_value`)."""

    name: ClassVar[str] = "json"

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` as JSON bytes."""
        if needs_tags(obj):
            obj = encode_value(obj)
        try:
            return orjson.dumps(obj)
        except TypeError as exc:  # e.g. an int beyond 64 bits
            raise SerializationError(
                f"value of type {type(obj).__name__} is not JSON-serializable ({exc}); "
                "return plain Python/NumPy values or use @work(serializer='pickle')"
            ) from exc

    def loads(self, data: bytes) -> Any:
        """Decode JSON bytes."""
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SerializationError(f"stored value is not valid JSON: {exc}") from exc
        if b'"__' in data and any(marker in data for marker in _MARKERS):
            return decode_value(value)
        return value


class PickleSerializer:
    """Python pickle (highest protocol). Only for trusted code: loading runs code."""

    name: ClassVar[str] = "pickle"

    def dumps(self, obj: Any) -> bytes:
        """Pickle ``obj``."""
        try:
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializationError(
                f"value of type {type(obj).__name__} cannot be pickled: {exc}"
            ) from exc

    def loads(self, data: bytes) -> Any:
        """Unpickle bytes."""
        try:
            return pickle.loads(data)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise SerializationError(f"stored value cannot be unpickled: {exc}") from exc


_SERIALIZERS: dict[str, Serializer] = {"json": JsonSerializer(), "pickle": PickleSerializer()}


def get_serializer(name: str) -> Serializer:
    """Return the serializer called ``name`` (``json`` or ``pickle``)."""
    try:
        return _SERIALIZERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown serializer {name!r}; known: {', '.join(sorted(_SERIALIZERS))}"
        ) from None
