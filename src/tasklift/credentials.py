"""Saved service credentials (``tasklift login``): URL and token in a 0600 file.

``TASKLIFT_SERVICE`` and ``TASKLIFT_TOKEN`` override the file, for scripts and CI.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from tasklift.errors import ConfigError

__all__ = ["Credentials", "credentials_path", "load_credentials", "save_credentials"]


@dataclass(frozen=True)
class Credentials:
    """Where the service is and the token to use there."""

    url: str
    token: str | None

    def __repr__(self) -> str:
        return f"Credentials(url={self.url!r}, token={'***' if self.token else None})"


def credentials_path() -> Path:
    """The credentials file: in ``TASKLIFT_CONFIG_DIR``, else in ``TASKLIFT_HOME`` when that is
    set (a private tasklift home keeps its own login), else in the platform config dir."""
    base = (
        os.environ.get("TASKLIFT_CONFIG_DIR")
        or os.environ.get("TASKLIFT_HOME")
        or platformdirs.user_config_dir("tasklift", appauthor=False)
    )
    return Path(base) / "credentials.json"


def save_credentials(url: str, token: str) -> Path:
    """Write URL and token to the credentials file, readable by the owner only."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": url, "token": token}, handle)
    os.replace(tmp, path)
    os.chmod(path, 0o600)
    return path


def load_credentials(url: str | None = None, token: str | None = None) -> Credentials | None:
    """The service to use: explicit values, then the environment, then the saved file."""
    url = url or os.environ.get("TASKLIFT_SERVICE")
    token = token or os.environ.get("TASKLIFT_TOKEN")
    path = credentials_path()
    if path.exists() and (url is None or token is None):
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if url is None or url.rstrip("/") == str(saved.get("url", "")).rstrip("/"):
            url = url or saved.get("url")
            token = token or saved.get("token")
    if not url or url == "local":
        return None
    return Credentials(url=url, token=token)
