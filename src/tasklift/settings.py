"""Settings: ``TASKLIFT_*`` environment variables and ``tasklift.toml``, built once at an edge.

Nothing in the library reads the environment on its own: ``Workflow(...)``, the CLI and the
server build one :class:`Settings` and pass it down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings"]


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("tasklift", appauthor=False))


class Settings(BaseSettings):
    """Every tunable of tasklift, with its default.

    Read from ``TASKLIFT_<NAME>`` environment variables (e.g. ``TASKLIFT_HOME``), then from
    ``tasklift.toml`` in the current directory (``[tasklift]`` table is not needed: top-level
    keys), then the defaults below.
    """

    model_config = SettingsConfigDict(
        env_prefix="TASKLIFT_", toml_file="tasklift.toml", extra="ignore"
    )

    home: Path = Field(default_factory=_default_home)
    """Where the embedded database, the archive store and the extraction cache live."""
    db_url: str | None = None
    """SQLAlchemy URL of the database; default: SQLite file ``<home>/tasklift.db``."""
    quiet: bool = False
    """No progress bars even in a terminal."""
    archive_max_mb: float = 64.0
    """Largest source tree (uncompressed) that ``Workflow`` will pack, and that an archive may
    expand to when extracted or uploaded to a server."""
    archive_max_files: int = Field(default=20_000, gt=0)
    """Most files ``Workflow`` will pack, and most members (files, directories, links) an
    archive may hold when extracted or uploaded to a server."""
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1)
    """Worker processes of the ``local`` backend."""
    archive_store: Path | None = None
    """Where archives are kept (default ``<home>/archives``); extra engines on a server's
    database point this at the server's store (a shared directory)."""
    job_python: str | None = None
    """Python interpreter of job runners (default: this one); set it when ``init_env`` starts
    a container whose Python lives elsewhere."""
    service: str = "local"
    """``local`` for the embedded engine, else the URL of a ``tasklift server``."""
    token: SecretStr | None = None
    """Bearer token for a remote service (``TASKLIFT_TOKEN``; overrides ``tasklift login``)."""
    bus: str | None = None
    """Result bus URL (``embedded://``, ``stomp://...``); default: embedded."""
    secret_key: SecretStr | None = None
    """Server key that signs job tokens; default: generated once into ``<home>/server.key``."""
    engine_name: str | None = None
    """Stable name of this engine among several on one database (default: host + home)."""
    scan_interval: float = 1.0
    """Seconds between a server engine's looks for works other engines created."""
    job_token_ttl: float = 24 * 3600.0
    """Seconds a job token stays valid."""
    web_session_ttl: float = Field(default=12 * 3600.0, gt=0)
    """Seconds a web monitor login lasts (never longer than the token it was made from)."""
    max_archive_upload_mb: float = 256.0
    """Largest archive the server accepts."""
    max_request_mb: float = 64.0
    """Largest JSON request body the server accepts."""
    oidc_issuer: str | None = None
    """Accepted ``iss`` of OIDC JWTs (OIDC is off when unset)."""
    oidc_audience: str | None = None
    """Required ``aud`` of OIDC JWTs."""
    oidc_jwks: str | None = None
    """JWKS of the issuer: a file path or an https URL."""
    oidc_user_claim: str = "sub"
    """Claim that names the user (e.g. ``preferred_username``)."""
    admins: list[str] = Field(default_factory=list)
    """Users (OIDC or token) that are admins."""
    backend: str = "local"
    """Where works run unless ``Workflow(backend=)`` or ``@work(backend=/queue=)`` say
    otherwise: ``local``, ``dask``, ``slurm`` or a name under ``backends``."""
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Named backends (``[backends.gpu] type = "slurm"`` plus the backend's arguments);
    ``@work(queue="gpu")`` and ``backend="gpu"`` pick one by name."""
    public_url: str | None = None
    """The URL remote job runners (Dask workers, Slurm jobs) use to reach this service."""
    job_api_host: str | None = None
    """Embedded engine: the address its job API for remote runners binds to (default: all
    interfaces, advertised under this host's name)."""
    monitor_interval: float = Field(default=2.0, gt=0)
    """Seconds between the monitor's checks of remote jobs (heartbeats, timeouts, lost jobs)."""
    heartbeat_interval: float = Field(default=10.0, gt=0)
    """Seconds between a remote job runner's heartbeats."""
    heartbeat_timeout: float = Field(default=60.0, gt=0)
    """A remote job whose heartbeat stops for this long is lost (retried or failed)."""

    runner_user: str | None = None
    """Server: the OS identities job runners run as (``--runner-user``): account names, uids
    or ``LOW-HIGH`` uid ranges, comma-separated; each is leased to one tasklift user at a time."""
    isolate_runners: bool = True
    """Server: refuse to run jobs under the server's own identity (``--no-runner-isolation``
    turns this off, for a server only one person uses)."""
    runner_dir: Path | None = None
    """Server: where leased runner identities get their private homes (default: a directory
    ``tasklift-runners-<uid>`` in the system temp directory)."""

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, value: int) -> int:
        if value < 1:
            raise ValueError("workers must be at least 1")
        return value

    @field_validator("archive_max_mb")
    @classmethod
    def _positive_limit(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("archive_max_mb must be positive")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order the sources: arguments, environment, ``tasklift.toml``."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def database_url(self) -> str:
        """The database URL, defaulting to the SQLite file under ``home``."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{self.home / 'tasklift.db'}"

    @property
    def archive_dir(self) -> Path:
        """The content-addressed store of source archives (``<sha256>.tar.gz``)."""
        return self.archive_store or self.home / "archives"

    @property
    def cache_dir(self) -> Path:
        """Where archives are extracted, one directory per hash."""
        return self.home / "cache"

    @property
    def archive_max_bytes(self) -> int:
        """``archive_max_mb`` in bytes."""
        return int(self.archive_max_mb * 1024 * 1024)

    def with_overrides(self, **values: Any) -> Settings:
        """Return a copy with some fields replaced."""
        return self.model_copy(update=values)
