"""Routes: ``/health`` (liveness plus a DB round trip) and ``/metrics`` (Prometheus), no auth.

The router's lifespan puts a :class:`~tasklift.service.metrics.ServiceMetrics` on
``app.state.metrics`` unless the app already set one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from tasklift.service.deps import EngineDep
from tasklift.service.metrics import ServiceMetrics

__all__ = ["get_metrics", "router"]

logger = logging.getLogger(__name__)


@asynccontextmanager
async def _metrics_lifespan(app: FastAPI) -> AsyncIterator[None]:
    if getattr(app.state, "metrics", None) is None:
        app.state.metrics = ServiceMetrics()
    yield


router = APIRouter(tags=["system"], lifespan=_metrics_lifespan)


def get_metrics(request: Request) -> ServiceMetrics:
    """The app's metrics (set by this router's lifespan, or by ``create_app``)."""
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]

_DB_DOWN: dict[int | str, dict[str, Any]] = {
    503: {"description": "The database cannot be reached."}
}


def _db_unavailable(exc: Exception) -> HTTPException:
    logger.warning("database check failed: %s", exc)
    return HTTPException(503, f"database unavailable: {type(exc).__name__}")


@router.get("/health", responses=_DB_DOWN)
def health(engine: EngineDep) -> dict[str, str]:
    """Return ``{"status": "ok", "db": "ok"}`` once a ``SELECT 1`` went through."""
    try:
        with engine.db.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise _db_unavailable(exc) from exc
    return {"status": "ok", "db": "ok"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **_DB_DOWN},
)
def metrics(engine: EngineDep, service_metrics: MetricsDep) -> Response:
    """Return jobs by state, queue depth, workflows by status and result latency."""
    try:
        with engine.db.connect() as conn:
            body = service_metrics.render(conn)
    except SQLAlchemyError as exc:
        raise _db_unavailable(exc) from exc
    return Response(body, media_type=CONTENT_TYPE_LATEST)
