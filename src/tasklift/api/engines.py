"""The engines of this process: one embedded engine per database and one server client per
URL and token, reused across workflow runs and closed by :func:`shutdown` (also at exit)."""

from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING

from tasklift.errors import ConfigError

if TYPE_CHECKING:
    from tasklift.api.client import EngineClient
    from tasklift.api.remote import HttpService
    from tasklift.engine.engine import Engine
    from tasklift.settings import Settings

__all__ = ["connect", "connect_service", "embedded_engine", "shutdown"]

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def embedded_engine(settings: Settings) -> Engine:
    """The in-process engine for these settings (one per database, reused across runs)."""
    url = settings.database_url
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            from tasklift.embedded import build_engine

            engine = build_engine(settings)
            _engines[url] = engine
        return engine


_remotes: dict[tuple[str, str | None], HttpService] = {}


def connect(service: str, settings: Settings) -> EngineClient:
    """The engine interface for ``service``: the embedded engine, or a server over HTTP."""
    if service == "local":
        return embedded_engine(settings)
    return connect_service(service, settings)


def connect_service(service: str, settings: Settings) -> HttpService:
    """The client of the server at URL ``service`` (one per URL and token, reused).

    Raises:
        ConfigError: ``service`` is not an http(s) URL.
    """
    if not service.startswith(("http://", "https://")):
        raise ConfigError(f"service must be 'local' or an http(s):// URL, got {service!r}")
    from tasklift.api.remote import HttpService
    from tasklift.credentials import load_credentials

    token = settings.token.get_secret_value() if settings.token else None
    creds = load_credentials(service, token)
    token = creds.token if creds else token
    with _engines_lock:
        key = (service.rstrip("/"), token)
        remote = _remotes.get(key)
        if remote is None:
            remote = HttpService(service, token, settings)
            _remotes[key] = remote
        return remote


def shutdown() -> None:
    """Stop every embedded engine and service connection of this process (also at exit)."""
    with _engines_lock:
        engines: list[EngineClient] = [*_engines.values(), *_remotes.values()]
        _engines.clear()
        _remotes.clear()
    for engine in engines:
        engine.close()


atexit.register(shutdown)
