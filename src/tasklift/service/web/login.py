"""Pages: ``/login`` starts a web session from a pasted API token, ``/logout`` ends it.

The ``tasklift_session`` cookie (HttpOnly, SameSite=Strict, Secure over https) holds only a
random session secret, never the token: the server keeps the session (``web_sessions``, see
:mod:`tasklift.service.sessions`), which ends at logout, after ``web_session_ttl``, or with the
token (expiry, revocation). The cookie is not an API token: ``Authorization: Bearer`` refuses it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from tasklift.errors import AuthenticationError, PermissionDeniedError
from tasklift.service.sessions import COOKIE, check_same_origin, session_store
from tasklift.service.web.routing import WebRoute, local_path, render

if TYPE_CHECKING:
    from tasklift.service.auth import Authenticator
    from tasklift.service.principal import Principal

__all__ = ["COOKIE", "router"]

logger = logging.getLogger(__name__)

MAX_FORM_BYTES = 16_384

router = APIRouter(route_class=WebRoute, include_in_schema=False)


def _form(request: Request, target: str, error: str | None, status_code: int = 200) -> Response:
    ttl: float = request.app.state.settings.web_session_ttl
    context = {"next": target, "error": error, "user": None, "session_ttl": ttl}
    return render(request, "login.html", context, status_code=status_code)


@router.get("/login")
def login_form(
    request: Request,
    target: Annotated[str | None, Query(alias="next", max_length=2000)] = None,
) -> Response:
    """The login form: paste an API token."""
    return _form(request, local_path(target), None)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the pasted token; on success start a session, set its cookie and go to ``next``.

    A login posted from another site's page is refused (login CSRF: it would log the victim
    in as the attacker); a form without ``Origin`` and ``Referer`` (a script) is accepted.
    """
    check_same_origin(request, request.app.state.settings.public_url, required=False)
    body = await request.body()
    fields = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", errors="replace"))
    token = (fields.get("token") or [""])[0].strip()
    target = local_path((fields.get("next") or ["/"])[0])
    auth: Authenticator = request.app.state.auth
    store = session_store(request)
    try:
        principal: Principal = await run_in_threadpool(auth.authenticate, f"Bearer {token}")
        principal.require_user()
        secret = await run_in_threadpool(store.create, principal, token)
    except (AuthenticationError, PermissionDeniedError) as exc:
        logger.info("web login refused: %s", exc)
        return _form(request, target, str(exc) if token else "paste a token", status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        secret,
        httponly=True,
        samesite="strict",
        path="/",
        secure=request.url.scheme == "https",
    )
    logger.info("web login of %s", principal.user)
    return response


@router.api_route("/logout", methods=["GET", "POST"])
def logout(request: Request) -> Response:
    """End the session on the server, forget its cookie and show the login form."""
    cookie = request.cookies.get(COOKIE)
    if cookie:
        session_store(request).end(cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(
        COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response
