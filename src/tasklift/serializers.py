"""Serializers for kwargs and results: ``json`` (default, via orjson) and ``pickle`` (opt-in).

Supports: ``json`` encodes dicts, lists, str, int, float, bool, None, and NumPy scalars and
arrays (as lists); tuples come back as lists. ``pickle`` round-trips any picklable object.
"""

from __future__ import annotations

import pickle
from typing import Any, ClassVar, Protocol

import orjson

from tasklift.errors import ConfigError, SerializationError

__all__ = ["JsonSerializer", "PickleSerializer", "Serializer", "get_serializer"]


class Serializer(Protocol):
    """Turns values into bytes and back."""

    name: str

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``; raise :class:`SerializationError` when it cannot."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode bytes made by :meth:`dumps`."""
        ...


class JsonSerializer:
    """JSON through orjson, with NumPy values and non-string dict keys accepted."""

    name: ClassVar[str] = "json"
    _OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` as JSON bytes."""
        try:
            return orjson.dumps(obj, option=self._OPTIONS)
        except TypeError as exc:
            raise SerializationError(
                f"value of type {type(obj).__name__} is not JSON-serializable ({exc}); "
                "return plain Python/NumPy values or use @work(serializer='pickle')"
            ) from exc

    def loads(self, data: bytes) -> Any:
        """Decode JSON bytes."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SerializationError(f"stored value is not valid JSON: {exc}") from exc


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
