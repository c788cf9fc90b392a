"""How stored values look on a page: decoded kwargs and results, summaries, log tails.

Pickled values are never unpickled here: a page shows their size only.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson

from tasklift.records import WorkOptions

__all__ = [
    "MAX_SHOWN",
    "decode_json",
    "first_line",
    "kwargs_of",
    "kwargs_summary",
    "options_of",
    "pretty",
    "tail",
]

logger = logging.getLogger(__name__)

MAX_SHOWN = 20_000
"""Characters of a value, traceback or log shown on a page (the rest is cut, and said so)."""

_NOTHING = object()


def options_of(work: dict[str, Any]) -> WorkOptions:
    """A work's options, read once from its row (unreadable ones show the defaults)."""
    try:
        return WorkOptions.from_json(work.get("options"))
    except (ValueError, TypeError, AttributeError):
        logger.warning("work %s: unreadable options %r", work.get("id"), work.get("options"))
        return WorkOptions()


def decode_json(blob: bytes | None, serializer: str = "json") -> Any:
    """The JSON value stored in ``blob``, or a sentinel string for what cannot be shown."""
    if blob is None:
        return None
    if serializer != "json":
        return _NOTHING
    try:
        return orjson.loads(blob)
    except orjson.JSONDecodeError:
        return _NOTHING


def kwargs_of(payload: bytes | None, serializer: str) -> Any:
    """A job's kwargs (or its whole call ``{"args": ..., "kwargs": ...}`` when it has args)."""
    call = decode_json(payload, serializer)
    if isinstance(call, dict) and "args" not in call:
        return call.get("kwargs")
    return call


def pretty(value: Any, blob: bytes | None = None, serializer: str = "json") -> str:
    """A value as indented JSON (cut at :data:`MAX_SHOWN`), or what it is when not JSON."""
    if value is _NOTHING:
        size = len(blob) if blob is not None else 0
        return f"({serializer} value, {size:,} bytes: not shown)"
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "\n… (cut)"


def _short_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def kwargs_summary(payload_head: bytes | None, serializer: str, limit: int = 90) -> str:
    """One line for a job table: ``x=1, y="a"`` from the first bytes of a job's payload."""
    if payload_head is None:
        return ""
    if serializer != "json":
        return f"({serializer})"
    value = kwargs_of(payload_head, serializer)
    if value is _NOTHING:  # the head was cut inside the JSON text
        text = bytes(payload_head).decode("utf-8", errors="replace")
        text = text.removeprefix('{"kwargs":').strip("{")
    elif isinstance(value, dict):
        text = ", ".join(f"{k}={_short_value(v)}" for k, v in value.items())
    else:
        text = _short_value(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_line(text: str | None, limit: int = 160) -> str:
    """The first non-empty line of ``text``, cut at ``limit`` characters."""
    if not text:
        return ""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def tail(text: str | None, limit: int = MAX_SHOWN) -> tuple[str, bool]:
    """The last ``limit`` characters of a log, and whether anything was cut."""
    if not text:
        return "", False
    if len(text) <= limit:
        return text, False
    cut = text[-limit:]
    return cut[cut.find("\n") + 1 :] if "\n" in cut[:200] else cut, True
