"""How the service answers errors: tasklift errors, unstorable values, a database that does
not answer (503 with ``Retry-After``) and invalid requests, as JSON with the right status and,
for 401/403, a ``WWW-Authenticate`` challenge that carries the reason."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError

from tasklift.errors import (
    ArchiveError,
    AuthenticationError,
    ConfigError,
    ConflictError,
    DatabaseUnavailable,
    NotFoundError,
    PermissionDeniedError,
    SerializationError,
    SubmissionError,
    TaskliftError,
)

__all__ = ["API_PREFIX", "RETRY_AFTER", "install_error_handlers"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"

_STATUS: list[tuple[type[TaskliftError], int]] = [
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (SubmissionError, 422),
    (SerializationError, 422),
    (ArchiveError, 422),
    (ConfigError, 400),
    (DatabaseUnavailable, 503),
]
RETRY_AFTER = 2
"""Seconds a client is told to wait (``Retry-After``) while the database does not answer."""


def _challenge(status: int, reason: str, credentials: bool) -> str:
    """The ``WWW-Authenticate`` value of a 401/403 (RFC 6750): it carries the reason, so that
    answers without a body (HEAD) still say why; a request without credentials gets the bare
    challenge."""
    if not credentials:
        return "Bearer"
    error = "invalid_token" if status == 401 else "insufficient_scope"
    # a quoted-string in a latin-1 header: no quotes, backslashes, controls or other scripts
    safe = "".join(
        c if c.isprintable() and c not in '"\\' and ord(c) < 256 else "?" for c in reason
    )
    return f'Bearer error="{error}", error_description="{safe[:500]}"'


def _error_response(exc: TaskliftError, credentials: bool = True) -> JSONResponse:
    status = 500
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            status = code
            break
    headers: dict[str, str] | None = None
    if status in (401, 403):
        headers = {"WWW-Authenticate": _challenge(status, str(exc), credentials)}
    elif status == 503:
        headers = {"Retry-After": str(RETRY_AFTER)}
    return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status, headers=headers)


def _database_down(exc: DBAPIError) -> bool:
    """True for the errors of a database that does not answer (as opposed to a bad query)."""
    return isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated


def install_error_handlers(app: FastAPI) -> None:
    """Map tasklift errors, unstorable values and invalid requests to JSON error answers.

    A database that does not answer is a 503 with ``Retry-After``: clients wait and try again.
    """

    @app.exception_handler(TaskliftError)
    async def _tasklift_error(request: Request, exc: TaskliftError) -> JSONResponse:
        return _error_response(exc, credentials="authorization" in request.headers)

    @app.exception_handler(DataError)
    async def _data_error(_request: Request, exc: DataError) -> JSONResponse:
        # e.g. a NUL byte PostgreSQL cannot store: bad input, and the transaction rolled back
        logger.info("refused a value the database cannot store: %s", exc.orig)
        return JSONResponse(
            {"detail": f"a value cannot be stored: {exc.orig}", "error": "DataError"}, 422
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if not _database_down(exc):
            logger.error(
                "%s %s failed on the database", request.method, request.url.path, exc_info=exc
            )
            return JSONResponse(
                {"detail": "internal error on the database", "error": "DatabaseError"}, 500
            )
        logger.warning(
            "%s %s: the database does not answer: %s", request.method, request.url.path, exc.orig
        )
        return _error_response(DatabaseUnavailable("the database does not answer; try again"))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail, "error": "ValidationError"}, 422)
