"""What the ``stomp`` bus puts on the wire and reads from its URL, without a connection.

Owns: the frame bodies (:func:`encode_batch` / :func:`decode_batch`, large results by reference),
the bus URL (:class:`StompUrl`, :func:`parse_stomp_url`), the check of destination names, and the
log filter that keeps STOMP passcodes out of stomp.py's own log lines.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from tasklift.bus.registry import mask_bus_url
from tasklift.errors import ConfigError
from tasklift.records import ResultRecord

__all__ = [
    "INLINE_LIMIT",
    "REFERENCE_IDX",
    "StompUrl",
    "decode_batch",
    "encode_batch",
    "hide_secret",
    "is_name",
    "is_reference",
    "parse_stomp_url",
]

INLINE_LIMIT = 16 * 1024
"""Results larger than this many bytes travel by reference (the receiver re-reads the DB)."""

REFERENCE_IDX = -1
"""``idx`` of a decoded record that says "re-read the DB" (``AsyncResult._add``: idx < 0)."""

_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_FIELDS = ("job_id", "idx", "state", "error_type", "error_message", "traceback", "attempts")


# ---------------------------------------------------------------------------------- secrets
class _RedactPasscodes(logging.Filter):
    """Hides STOMP passcodes in stomp.py's own DEBUG lines (its redaction misses ``passcode:x``)."""

    _pattern = re.compile(r"(passcode:).*?(?=\\n|\n|'|\"|$)")

    def __init__(self) -> None:
        super().__init__("stomp.py")
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "passcode" in text or any(secret in text for secret in self.secrets):
            text = self._pattern.sub(r"\1********", text)
            for secret in self.secrets:
                text = text.replace(secret, "********")
            record.msg, record.args = text, None
        return True


_REDACTOR = _RedactPasscodes()
logging.getLogger("stomp.py").addFilter(_REDACTOR)


def hide_secret(secret: str | None) -> None:
    """Mask ``secret`` wherever stomp.py logs it from now on (shorter than 3 characters: not)."""
    if secret and len(secret) >= 3:
        _REDACTOR.secrets.add(secret)


# ---------------------------------------------------------------------------------- URL
def is_name(name: str) -> bool:
    """True for words (letters, digits, ``_``, ``-``) joined by dots: a prefix or destination."""
    return _NAME.match(name) is not None


@dataclass(frozen=True)
class StompUrl:
    """A parsed ``stomp://`` / ``stomp+ssl://`` URL."""

    host: str
    port: int
    prefix: str = "tasklift"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    vhost: str = "/"
    heartbeat: float = 10.0
    ca_certs: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


def parse_stomp_url(url: str) -> StompUrl:
    """Parse a STOMP bus URL (the format is in :mod:`tasklift.bus.stomp`'s docstring).

    Raises:
        ConfigError: wrong scheme, bad port, or a prefix that is not dot-separated words.
    """
    masked = mask_bus_url(url)
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("stomp", "stomp+ssl"):
        raise ConfigError(f"not a STOMP bus URL: {masked} (use stomp:// or stomp+ssl://)")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"bad port in bus URL {masked}") from None
    prefix = unquote(parts.path.strip("/")) or "tasklift"
    if not is_name(prefix):
        raise ConfigError(
            f"bad destination prefix {prefix!r} in {masked}: use letters, digits, '_', '-' "
            "and dots (e.g. stomp://host:61613/tasklift.prod)"
        )
    query = {k.lower(): v[-1] for k, v in parse_qs(parts.query).items()}
    try:
        heartbeat = float(query.get("heartbeat", 10.0))
    except ValueError:
        raise ConfigError(f"heartbeat must be a number of seconds in {masked}") from None
    return StompUrl(
        host=parts.hostname or "127.0.0.1",
        port=port or (61614 if scheme == "stomp+ssl" else 61613),
        prefix=prefix,
        user=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        ssl=scheme == "stomp+ssl",
        vhost=query.get("vhost", "/"),
        heartbeat=max(heartbeat, 0.0),
        ca_certs=query.get("ca"),
        cert_file=query.get("cert"),
        key_file=query.get("key"),
        verify=query.get("verify", "1").lower() not in ("0", "false", "no"),
    )


# ---------------------------------------------------------------------------------- frames
def is_reference(record: Any) -> bool:
    """True for a decoded record that carries no usable result: re-read the DB for it."""
    return isinstance(record, ResultRecord) and record.idx < 0


def _encode_item(message: Any, inline_limit: int) -> bytes:
    if not isinstance(message, ResultRecord):
        return orjson.dumps({"value": message})
    item: dict[str, Any] = {name: getattr(message, name) for name in _FIELDS}
    item["done_seq"] = message.done_seq
    result = message.result
    big_error = len(message.traceback or "") + len(message.error_message or "") > inline_limit
    if (result is not None and len(result) > inline_limit) or big_error:
        item.update(result=None, result_ref=True, traceback=None, error_message=None)
    else:
        item["result"] = None if result is None else base64.b64encode(result).decode("ascii")
    return orjson.dumps(item)


def encode_batch(
    messages: Iterable[Any], *, inline_limit: int = INLINE_LIMIT, max_frame_bytes: int = 512 * 1024
) -> list[bytes]:
    """Encode a batch as JSON frame bodies: one body unless it exceeds ``max_frame_bytes``.

    A :class:`ResultRecord` whose result is over ``inline_limit`` bytes (or whose error text is)
    goes by reference: ``result`` null and ``"result_ref": true``. Other messages must be
    JSON-native (orjson) and are wrapped as ``{"value": ...}``.
    """
    bodies: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for message in messages:
        item = _encode_item(message, inline_limit)
        if chunk and size + len(item) > max_frame_bytes:
            bodies.append(b'{"v":1,"m":[' + b",".join(chunk) + b"]}")
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        bodies.append(b'{"v":1,"m":[' + b",".join(chunk) + b"]}")
    return bodies


def _decode_item(item: dict[str, Any]) -> Any:
    if "value" in item:
        return item["value"]
    if item.get("result_ref"):
        # idx < 0: AsyncResult re-reads; done_seq 0 keeps its gap-free cursor below this record
        return ResultRecord(
            job_id=int(item["job_id"]),
            idx=REFERENCE_IDX,
            state=str(item["state"]),
            result=None,
            error_type=item.get("error_type"),
            attempts=int(item.get("attempts") or 0),
        )
    result = item.get("result")
    return ResultRecord(
        job_id=int(item["job_id"]),
        idx=int(item["idx"]),
        state=str(item["state"]),
        result=None if result is None else base64.b64decode(result, validate=True),
        error_type=item.get("error_type"),
        error_message=item.get("error_message"),
        traceback=item.get("traceback"),
        attempts=int(item.get("attempts") or 0),
        done_seq=int(item.get("done_seq") or 0),
    )


def decode_batch(body: bytes | str) -> list[Any]:
    """Decode a frame body made by :func:`encode_batch` (references: see :data:`REFERENCE_IDX`).

    Raises:
        ValueError: the body is not a tasklift batch (``orjson.JSONDecodeError`` is one).
    """
    data = orjson.loads(body)
    if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("m"), list):
        raise ValueError("not a tasklift v1 batch")
    try:
        return [_decode_item(item) for item in data["m"]]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed batch item: {exc!r}") from exc
