"""``create_app(settings)``: the FastAPI application of ``tasklift server``.

The engine (scheduler, backends, bus) runs inside the server process; routes call it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tasklift.db.session import create_db_engine, mask_url, schema_is_current
from tasklift.errors import ConfigError
from tasklift.service.errors import API_PREFIX, install_error_handlers
from tasklift.settings import Settings

__all__ = ["SchemaOutOfDateError", "check_schema", "create_app"]

logger = logging.getLogger(__name__)


class SchemaOutOfDateError(ConfigError):
    """The database schema is older than this tasklift; ``tasklift db upgrade`` fixes it."""


def check_schema(settings: Settings) -> None:
    """Refuse to serve a database whose schema is not at the current migration."""
    engine = create_db_engine(settings.database_url)
    try:
        ok, current, head = schema_is_current(engine)
    finally:
        engine.dispose()
    if not ok:
        raise SchemaOutOfDateError(
            f"database {mask_url(settings.database_url)} is at schema revision {current}, this "
            f"tasklift needs {head}: run `tasklift db upgrade --db URL` first"
        )


def create_app(settings: Settings, *, start_engine: bool = True) -> FastAPI:
    """Build the app; the engine starts with the app's lifespan."""
    from tasklift.bus.registry import bus_from_url
    from tasklift.engine.engine import Engine
    from tasklift.service import web
    from tasklift.service.access import WorkflowFacts
    from tasklift.service.auth import Authenticator
    from tasklift.service.job_api import job_token_issuer
    from tasklift.service.limits import BodyLimit
    from tasklift.service.metrics import ServiceMetrics
    from tasklift.service.routes import archives, jobs, system, workflows, works
    from tasklift.service.runners import backend_factory

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_schema(settings)
        # jobs of many users never run as the server, nor share a process (service/runners.py)
        backends = backend_factory(settings, lambda: engine.db)
        engine = Engine(
            settings,
            bus=bus_from_url(settings.bus),
            backends=backends,
            auto_upgrade=False,
            resume=start_engine,
        )
        app.state.engine = engine
        app.state.workflow_facts = WorkflowFacts(engine)
        auth = Authenticator(db=engine.db, settings=settings)
        app.state.auth = auth
        engine.job_token_issuer = job_token_issuer(auth, engine)
        engine.job_api_url = settings.public_url
        engine.start()
        engine.result_latency_observer = metrics.observe_result_latency
        logger.info("tasklift server on %s", mask_url(settings.database_url))
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(title="tasklift", version="1", lifespan=lifespan)
    app.state.settings = settings
    metrics = ServiceMetrics()
    app.state.metrics = metrics

    install_error_handlers(app)

    app.add_middleware(
        BodyLimit,
        max_bytes=int(settings.max_request_mb * 1024 * 1024),
        exempt=(f"{API_PREFIX}/archives/",),
    )
    for module in (workflows, works, jobs, archives):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(system.router)
    app.include_router(web.router)
    return app
