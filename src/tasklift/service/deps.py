"""Typed FastAPI dependencies: the engine, the settings, and the authenticated caller."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, Path, Request
from starlette.concurrency import run_in_threadpool

from tasklift.service.principal import Principal
from tasklift.service.sessions import COOKIE, SAFE_METHODS, check_same_origin, session_store

if TYPE_CHECKING:
    from tasklift.engine.engine import Engine
    from tasklift.service.access import WorkflowFacts
    from tasklift.service.auth import Authenticator
    from tasklift.settings import Settings

__all__ = ["MAX_ID", "EngineDep", "IdPath", "PrincipalDep", "SettingsDep", "UserDep"]

MAX_ID = 2_147_483_647
"""Ids are 32-bit in the database; larger ones cannot exist (404/422, never a 500)."""


async def get_engine(request: Request) -> Engine:
    """The engine of this server process."""
    engine: Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """Authenticate the ``Authorization: Bearer`` header, else the web session cookie.

    A token verified in the last seconds is answered from the authenticator's cache on the
    event loop; anything else is verified in a worker thread (it may read the database).

    The cookie names a server-side session (:class:`~tasklift.service.sessions.SessionStore`),
    never a token. An unsafe request (POST, PUT, PATCH, DELETE) authenticated by the cookie
    must come from this server's own pages: its ``Origin`` (else ``Referer``) is checked
    before the session is (CSRF). Requests with an ``Authorization`` header are not affected:
    a browser never adds that header to a cross-site request by itself.

    Raises:
        AuthenticationError: no valid credential (401, or the login page for pages).
        PermissionDeniedError: a cookie-authenticated unsafe request from another origin (403).
    """
    if authorization is None:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            if request.method not in SAFE_METHODS:
                settings: Settings = request.app.state.settings
                check_same_origin(request, settings.public_url)
            return await run_in_threadpool(session_store(request).lookup, cookie)
    auth: Authenticator = request.app.state.auth
    principal = auth.cached(authorization)
    if principal is None:
        principal = await run_in_threadpool(auth.authenticate, authorization)
    return principal


async def get_user(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """Authenticate and refuse job tokens."""
    principal.require_user()
    return principal


async def get_workflow_facts(request: Request) -> WorkflowFacts:
    """The immutable columns of workflows this server has read (see :class:`WorkflowFacts`)."""
    facts: WorkflowFacts = request.app.state.workflow_facts
    return facts


EngineDep = Annotated["Engine", Depends(get_engine)]
FactsDep = Annotated["WorkflowFacts", Depends(get_workflow_facts)]
SettingsDep = Annotated["Settings", Depends(get_settings)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
UserDep = Annotated[Principal, Depends(get_user)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
