"""What the client makes of a tasklift server's answers and failures: error answers as
tasklift errors (with the reason a HEAD answer carries in ``WWW-Authenticate``), transport
errors in words, service URLs safe to print, and the stderr notices of an outage."""

from __future__ import annotations

import logging
import sys
import threading
import time

import httpx

from tasklift.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ServiceError,
    SubmissionError,
    TaskliftError,
)

__all__ = [
    "Outage",
    "describe_failure",
    "error_detail",
    "mask_service_url",
    "mask_token",
    "raise_for_status",
]

logger = logging.getLogger(__name__)

_ERRORS: dict[int, type[TaskliftError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: SubmissionError,
    422: SubmissionError,
}


def mask_token(token: str) -> str:
    """A token shortened for messages: never the secret part."""
    return token[:6] + "…" if token else ""


def mask_service_url(url: str) -> str:
    """``url`` safe to print: a password (or token) in it replaced by ``***``."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<unparsable service URL>"
    if parsed.password:
        parsed = parsed.copy_with(username=parsed.username, password="***")
    return str(parsed)


def _challenge_reason(response: httpx.Response) -> str:
    """The ``error_description`` of a 401/403's ``WWW-Authenticate`` (answers to HEAD carry
    their reason only there)."""
    challenge = response.headers.get("www-authenticate", "")
    _, found, rest = challenge.partition('error_description="')
    return rest.split('"', 1)[0] if found else ""


def raise_for_status(method: str, path: str, response: httpx.Response) -> None:
    """Raise the tasklift error that matches a failure status (the body must be read)."""
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:500]
    if not detail:
        detail = _challenge_reason(response) or response.reason_phrase
    cls = _ERRORS.get(response.status_code, ServiceError)
    raise cls(f"{method} {path}: {response.status_code} {detail}")


def error_detail(response: httpx.Response) -> str:
    """The reason an error answer gives (its JSON ``detail``, else its status phrase)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or response.reason_phrase)


def describe_failure(exc: httpx.TransportError) -> str:
    """A transport error in words (``connection refused``, ``timed out``, ...)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError) and "refused" in text.lower():
        return f"connection refused ({text})"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return text


class Outage:
    """A server that does not answer, as the user sees it: one line on stderr when requests
    start to be retried, one when it answers again (not one per attempt; shared by the
    threads of one client)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._since: float | None = None

    def failing(self, cause: str, budget: float) -> None:
        """A request failed and will be retried."""
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        print(
            f"tasklift: the server at {self._url} is unavailable ({cause}); "
            f"retrying for up to {budget:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    def answered(self) -> None:
        """A request got an answer."""
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            print(
                f"tasklift: the server at {self._url} answers again "
                f"(after {time.monotonic() - since:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
