"""Job keys: the stable id of a job's kwargs (sha256 of canonical JSON)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from tasklift.errors import SubmissionError

__all__ = ["canonical_json", "get_unique_id_for_dict", "job_key"]


def canonical_json(obj: Any) -> str:
    """Return the canonical JSON text of ``obj``: sorted keys, no whitespace, UTF-8.

    Raises:
        TypeError: when ``obj`` holds something JSON cannot represent.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain
    )


def _plain(obj: Any) -> Any:
    """Turn NumPy scalars and arrays into plain Python values (as the JSON serializer does)."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist) and type(obj).__module__ == "numpy":
        return tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def get_unique_id_for_dict(d: Mapping[str, Any]) -> str:
    """Return the job key of a kwargs dict: sha256 hex of its canonical JSON.

    The same kwargs give the same key in every process and on every machine, whatever the
    order in which the dict was built.
    """
    try:
        text = canonical_json(dict(d))
    except TypeError as exc:
        raise SubmissionError(f"kwargs are not JSON-serializable: {exc}") from exc
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def job_key(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """Return the key of one job's merged call: kwargs alone, or args plus kwargs.

    A job called with keyword arguments only has the key ``get_unique_id_for_dict(kwargs)``,
    so users can compute it themselves.
    """
    if not args:
        return get_unique_id_for_dict(kwargs)
    try:
        text = canonical_json({"args": list(args), "kwargs": dict(kwargs)})
    except TypeError as exc:
        raise SubmissionError(f"arguments are not JSON-serializable: {exc}") from exc
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
