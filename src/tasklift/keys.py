"""Job keys: the stable id of a job's kwargs (sha256 of canonical JSON)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from tasklift.errors import SerializationError, SubmissionError
from tasklift.serializers import DICT, encode_value, needs_tags

__all__ = ["canonical_json", "get_unique_id_for_dict", "job_key", "memo_key", "occurrence_key"]


def canonical_json(obj: Any) -> str:
    """Return the canonical JSON text of ``obj``: sorted keys, no whitespace, UTF-8.

    Plain JSON values are written as they are (their keys never change). Values the JSON
    serializer tags (tuples, NumPy arrays, non-string dict keys, nan/inf) are written in that
    tagged form, so a tuple and a list, or an array and a list, make different keys; a NumPy
    scalar makes the key of the Python number.

    Raises:
        TypeError: when ``obj`` holds something the JSON serializer cannot carry unchanged.
    """
    if needs_tags(obj):
        try:
            obj = _sorted_pairs(encode_value(obj))
        except SerializationError as exc:
            raise TypeError(str(exc)) from None
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sorted_pairs(obj: Any) -> Any:
    """Order the pairs of tagged dicts (``{"__dict__": [[k, v], ...]}``) by their key's text,
    so that the key of a dict does not depend on the order it was built in."""
    if isinstance(obj, list):
        return [_sorted_pairs(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and DICT in obj:
        pairs = [[_sorted_pairs(k), _sorted_pairs(v)] for k, v in obj[DICT]]
        pairs.sort(key=lambda kv: json.dumps(kv[0], sort_keys=True, separators=(",", ":")))
        return {DICT: pairs}
    return {k: _sorted_pairs(v) for k, v in obj.items()}


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


def memo_key(
    archive_sha: str | None,
    function: str,
    script: str | None,
    serializer: str,
    *,
    owner: str | None = None,
    when: bytes | None = None,
) -> str:
    """Return the memo key of a work: the finished jobs of works with the same memo key and
    job key are reused. The one formula, for the client and the server.

    The archive hash, function, script and serializer are what makes a job's result the
    same. A server passes the workflow's ``owner``: memo reuse never crosses users (it leads
    the text, as servers always wrote it). ``when`` (the cloudpickled ``when=`` predicate, code
    and captured values) is part of it, so changing the condition never reuses jobs decided by
    another one; works without ``when`` keep the key they always had.
    """
    parts: tuple[Any, ...] = (archive_sha, function, script, serializer)
    if owner is not None:
        parts = (owner, *parts)
    text = "|".join(str(p) for p in parts)
    if when is not None:
        text += "|when:" + hashlib.sha256(when).hexdigest()
    return hashlib.sha256(text.encode()).hexdigest()


def occurrence_key(key: str, occurrence: int) -> str:
    """The key of the ``occurrence``-th repeat (1, 2, ...) of a job whose arguments already
    occur earlier in the same work; the first occurrence keeps ``key`` itself."""
    return hashlib.sha256(f"{key}#{occurrence}".encode()).hexdigest()
