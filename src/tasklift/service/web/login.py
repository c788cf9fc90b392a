"""Pages: ``/login`` turns an API token into the ``tasklift_session`` cookie, ``/logout`` drops it.

The cookie holds the token itself (HttpOnly, SameSite=Strict), so every page and every API call
the pages make is authenticated exactly like ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse

from tasklift.errors import AuthenticationError, PermissionDeniedError
from tasklift.service.web.routing import WebRoute, local_path, render

__all__ = ["COOKIE", "router"]

logger = logging.getLogger(__name__)

COOKIE = "tasklift_session"
MAX_FORM_BYTES = 16_384

router = APIRouter(route_class=WebRoute, include_in_schema=False)


@router.get("/login")
def login_form(
    request: Request,
    target: Annotated[str | None, Query(alias="next", max_length=2000)] = None,
) -> Response:
    """The login form: paste an API token."""
    return render(request, "login.html", {"next": local_path(target), "error": None, "user": None})


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the pasted token; on success set the session cookie and go to ``next``."""
    body = await request.body()
    fields = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", errors="replace"))
    token = (fields.get("token") or [""])[0].strip()
    target = local_path((fields.get("next") or ["/"])[0])
    try:
        principal = request.app.state.auth.authenticate(f"Bearer {token}")
        principal.require_user()
    except (AuthenticationError, PermissionDeniedError) as exc:
        logger.info("web login refused: %s", exc)
        context = {"next": target, "error": str(exc) if token else "paste a token", "user": None}
        return render(request, "login.html", context, status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        path="/",
        secure=request.url.scheme == "https",
    )
    logger.info("web login of %s", principal.user)
    return response


@router.api_route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    """Forget the session cookie and show the login form."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
