"""Bus registry: build a bus from a URL scheme (``embedded://``, ``stomp://``, ``stomp+ssl://``).

Known schemes map to ``"module:Class"`` strings imported on use (choosing ``embedded`` never
imports stomp.py), then the ``tasklift.buses`` entry-point group. :func:`mask_bus_url` hides
credentials; use it wherever a bus URL is logged or printed.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import re
from importlib.metadata import entry_points
from urllib.parse import parse_qsl, urlencode

from tasklift.bus.base import Bus
from tasklift.errors import ConfigError

__all__ = ["BUSES", "bus_from_url", "known_bus_schemes", "mask_bus_url"]

logger = logging.getLogger(__name__)

BUSES: dict[str, str] = {
    "embedded": "tasklift.bus.embedded:EmbeddedBus",
    "stomp": "tasklift.bus.stomp:StompBus",
    "stomp+ssl": "tasklift.bus.stomp:StompBus",
}
"""Built-in schemes; plug-ins register more under the ``tasklift.buses`` entry-point group."""

ENTRY_POINT_GROUP = "tasklift.buses"

_INSTALL_HINTS = {"tasklift.bus.stomp": "pip install 'stomp.py>=8'"}
_SECRET_QUERY_KEYS = re.compile(r"pass|secret|token", re.IGNORECASE)


def _plugin_targets() -> dict[str, str]:
    return {ep.name.lower(): ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_bus_schemes() -> list[str]:
    """Every scheme :func:`bus_from_url` accepts, sorted."""
    return sorted({*BUSES, *_plugin_targets()})


def _split_scheme(url: str) -> tuple[str, str]:
    text = url.strip()
    if "://" not in text:  # a bare name: "embedded", "stomp"
        return text.lower(), f"{text.lower()}://"
    scheme = text.split("://", 1)[0].lower()
    return scheme, text


def _load(target: str, scheme: str) -> type[Bus]:
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(module_name)
        extra = f" ({hint})" if hint else ""
        raise ConfigError(f"the {scheme!r} bus is unavailable: {exc}{extra}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Bus):
        raise ConfigError(f"bus scheme {scheme!r} points at {target!r}, which is not a Bus class")
    return cls


def bus_from_url(url: str | Bus | None) -> Bus:
    """Build the bus a URL names.

    Args:
        url: ``None`` or ``embedded://`` for the in-process bus,
            ``stomp://user:pass@host:61613/prefix`` (TLS: ``stomp+ssl://``) for a STOMP broker,
            a bare scheme name, a plug-in scheme, or an already built :class:`Bus` (returned).

    Returns:
        A new bus (the caller closes it).

    Raises:
        ConfigError: unknown scheme (the message lists the known ones and the closest match),
            a malformed URL, or a bus whose client library is not installed.
    """
    if isinstance(url, Bus):
        return url
    if url is None or not url.strip():
        url = "embedded://"
    scheme, full = _split_scheme(url)
    target = BUSES.get(scheme)
    if target is None:
        target = _plugin_targets().get(scheme)
    if target is None:
        known = known_bus_schemes()
        close = difflib.get_close_matches(scheme, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown bus scheme {scheme!r} in {mask_bus_url(full)}: "
            f"known schemes are {', '.join(known)}{hint}"
        )
    cls = _load(target, scheme)
    from_url = getattr(cls, "from_url", None)
    bus: Bus
    if callable(from_url):
        bus = from_url(full)
    elif full.split("://", 1)[1].strip("/"):
        bus = cls(url=full)  # type: ignore[call-arg]
    else:
        bus = cls()
    logger.debug("bus %s built from %s", type(bus).__name__, mask_bus_url(full))
    return bus


def mask_bus_url(url: str | None) -> str:
    """``url`` with its password (and secret-looking query values) replaced by ``***``.

    Never raises: safe to call on anything about to be logged.

    Args:
        url: a bus URL, or ``None`` (the embedded default).

    Returns:
        The URL without secrets, e.g. ``stomp://alice:***@mq.example.org:61613/tasklift``.
    """
    if url is None:
        return "embedded://"
    text = str(url)
    if "://" not in text:
        return text if "@" not in text else "***"
    scheme, rest = text.split("://", 1)
    rest, hash_sign, fragment = rest.partition("#")
    netloc, slash, tail = rest.partition("/")
    path, qmark, query = tail.partition("?")
    if not slash and "?" in netloc:  # stomp://host?x=1 (no path)
        netloc, qmark, query = netloc.partition("?")
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _SECRET_QUERY_KEYS.search(k) else v) for k, v in pairs], safe="/*"
        )
    return f"{scheme}://{netloc}{slash}{path}{qmark}{query}{hash_sign}{'***' if fragment else ''}"
