"""The web monitor: server-rendered pages over the service's database, under ``/``.

``router`` holds every page (``/login``, ``/``, ``/workflows/{id}``, ``/works/{id}``,
``/jobs/{id}``, ``/workflows/{id}/convergence``) and the packaged assets (``/assets/...``);
``create_app`` includes it next to the API routers.
"""

from __future__ import annotations

from fastapi import APIRouter

from tasklift.service.web import assets, login, pages, work_pages
from tasklift.service.web.dag import workflow_edges

__all__ = ["router", "workflow_edges"]

router = APIRouter(include_in_schema=False)
for _module in (login, assets, pages, work_pages):
    router.include_router(_module.router)
