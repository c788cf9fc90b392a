"""The job API an embedded engine serves for its remote job runners.

With ``service="local"`` and a backend whose runners live elsewhere (Dask workers, Slurm jobs),
the engine serves the same job routes as ``tasklift server`` (spec, heartbeat, outcome, archive
download) from the user's process, on an ephemeral port, under a per-run secret that signs the
job tokens. A physicist on an HPC login node needs no server for a Slurm campaign.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import SecretStr

from tasklift.errors import ConfigError
from tasklift.service.access import OwnerLookup

if TYPE_CHECKING:
    from tasklift.engine.engine import Engine
    from tasklift.records import JobSpec, WorkSpec
    from tasklift.service.auth import Authenticator
    from tasklift.settings import Settings

__all__ = ["JobAPIServer", "advertised_host", "job_token_issuer"]

logger = logging.getLogger(__name__)

START_TIMEOUT = 15.0


def advertised_host(bind: str) -> str:
    """The name remote runners use for this host when the API binds to ``bind``."""
    if bind not in ("0.0.0.0", "::", ""):
        return bind
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, None)
    except OSError:
        return "127.0.0.1"
    return name


def job_token_issuer(auth: Authenticator, engine: Engine) -> Callable[[WorkSpec, JobSpec], str]:
    """What the engine calls to give a job its token: scoped to its one job (a remote runner)
    or to its workflow (the runner of a remote workflow's function), on its owner's behalf."""
    owner = OwnerLookup(lambda: engine.db)

    def issue(spec: WorkSpec, job: JobSpec) -> str:
        holder = (job.job_id, job.attempt)
        if spec.kind == "workflow":
            return auth.issue_job_token(
                user=owner(spec.workflow_id), workflow_id=spec.workflow_id, holder=holder
            )
        return auth.issue_job_token(
            user=owner(spec.workflow_id),
            workflow_id=spec.workflow_id,
            holder=holder,
            work_id=spec.work_id,
            job_id=job.job_id,
        )

    return issue


class JobAPIServer:
    """Serves the job routes of one engine from a background thread (uvicorn)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        from fastapi import FastAPI

        from tasklift.service.auth import Authenticator
        from tasklift.service.errors import API_PREFIX, install_error_handlers
        from tasklift.service.routes import archives, jobs

        self._engine = engine
        run_settings = settings.with_overrides(secret_key=SecretStr(secrets.token_urlsafe(32)))
        app = FastAPI(title="tasklift job API", version="1")
        app.state.engine = engine
        app.state.settings = run_settings
        app.state.auth = Authenticator(db=engine.db, settings=run_settings)
        install_error_handlers(app)
        app.include_router(jobs.router, prefix=API_PREFIX)
        app.include_router(archives.router, prefix=API_PREFIX)
        self.issuer = job_token_issuer(app.state.auth, engine)
        self._app = app
        self._bind = settings.job_api_host or "0.0.0.0"
        self._server: object | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> str:
        """Bind an ephemeral port, serve in a thread, and return the API's base URL."""
        import uvicorn

        family = socket.AF_INET6 if ":" in self._bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by connections
        try:
            sock.bind((self._bind, 0))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"job API cannot bind {self._bind}: {exc}") from exc
        sock.listen(256)
        port = sock.getsockname()[1]
        config = uvicorn.Config(self._app, log_level="warning", lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="tasklift-job-api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the job API did not start on {self._bind}:{port}")
            time.sleep(0.01)
        self.url = f"http://{advertised_host(self._bind)}:{port}"
        logger.info("job API for remote runners on %s", self.url)
        return self.url

    def close(self) -> None:
        """Stop serving (waits up to a few seconds for open requests)."""
        server = self._server
        if server is None:
            return
        server.should_exit = True  # type: ignore[attr-defined]
        if self._thread is not None:
            self._thread.join(timeout=10)
