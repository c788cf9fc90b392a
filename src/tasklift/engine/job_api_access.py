"""How remote job runners (Dask workers, Slurm jobs) reach a job API: its URL and the issuer of
their job tokens.

A server hands in both (its public URL, tokens signed with its key). An embedded engine is
handed a starter instead, which serves the job routes from the user's process on first use
(``tasklift.service.job_api``; the composition root in :mod:`tasklift.embedded` supplies it,
so the engine never imports the service).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from tasklift.errors import ConfigError
from tasklift.records import JobSpec, WorkSpec

__all__ = ["JobAPIAccess", "JobTokenIssuer", "StartedJobAPI"]

JobTokenIssuer = Callable[[WorkSpec, JobSpec], str]
"""Makes the job token of one attempt of a job whose runner calls the job API."""


class StartedJobAPI(Protocol):
    """A job API served for this engine (what a starter returns)."""

    url: str
    issuer: JobTokenIssuer

    def close(self) -> None:
        """Stop serving."""
        ...


class JobAPIAccess:
    """The job API's URL and token issuer, set by the server or started on first use."""

    def __init__(self, starter: Callable[[], StartedJobAPI] | None = None) -> None:
        self.url: str | None = None
        self.issuer: JobTokenIssuer | None = None
        self._starter = starter
        self._started: StartedJobAPI | None = None
        self._lock = threading.Lock()  # one start, whichever thread needs it first

    def ensure(self) -> tuple[str, JobTokenIssuer]:
        """The URL and issuer, starting the job API when none was set."""
        with self._lock:
            if self.url is None or self.issuer is None:
                if self._starter is None:
                    raise ConfigError(
                        "a remote backend needs a job API, and this engine was given none"
                    )
                api = self._starter()
                self._started = api
                self.url, self.issuer = api.url, api.issuer
            return self.url, self.issuer

    def close(self) -> None:
        """Stop the job API this engine started, if it did."""
        with self._lock:
            started, self._started = self._started, None
        if started is not None:
            started.close()
