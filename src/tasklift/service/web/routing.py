"""Plumbing shared by the web pages: templates, the page route class and safe responses.

A page route turns "not logged in" into a redirect to ``/login`` and "not yours / not there"
into an HTML 404 page, so the API's JSON error handler never answers a browser.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from markupsafe import Markup

from tasklift.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from tasklift.service.web.assets import asset_url

__all__ = [
    "SECURITY_HEADERS",
    "STATUS_ICONS",
    "WebRoute",
    "is_partial",
    "local_path",
    "render",
]

logger = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
"""Sent with every page: no inline script, no third-party origin, no framing."""

NO_VALUE = "\u2013"
"""Shown where a value is missing (an en dash)."""

STATUS_ICONS = {
    "finished": "✓",
    "failed": "✗",
    "running": "▶",
    "pending": "…",
    "queued": "⋯",
    "cancelled": "⊘",
    "upstream_failed": "⤒",
    "skipped": "↷",
    "lost": "?",
}
"""A glyph per state, shown beside the state's name (never colour alone)."""


def _fmt_time(value: float | None) -> str:
    if value is None:
        return NO_VALUE
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_iso(value: float | None) -> str:
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds")


def fmt_duration(seconds: float | None) -> str:
    """Seconds as a short human duration: ``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds is None:
        return NO_VALUE
    if seconds < 0:
        seconds = 0.0
    if seconds < 0.01:
        return f"{seconds * 1000:.2g} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def _fmt_size(value: int | None) -> str:
    if value is None:
        return NO_VALUE
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop always returns


def _fmt_num(value: int | float | None) -> str:
    if value is None:
        return NO_VALUE
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.4g}"
    return f"{int(value):,}"


def _status(value: str | None) -> Markup:
    state = value or "unknown"
    icon = STATUS_ICONS.get(state, "•")
    return Markup(
        '<span class="st st-{0}"><span class="st-icon" aria-hidden="true">{1}</span>{2}</span>'
    ).format(state, icon, state.replace("_", " "))


def _make_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tasklift.service.web", "templates"),
        autoescape=jinja2.select_autoescape(("html",), default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        time=_fmt_time,
        iso=_fmt_iso,
        duration=fmt_duration,
        size=_fmt_size,
        num=_fmt_num,
        status=_status,
    )
    env.globals["asset_url"] = asset_url
    return env


TEMPLATES = _make_env()


def is_partial(request: Request) -> bool:
    """True when the page's live script asks for the dynamic part only (``?partial=1``)."""
    return request.query_params.get("partial") == "1"


def local_path(target: str | None, default: str = "/") -> str:
    """``target`` if it is a path on this site (no scheme, no host), else ``default``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def render(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """Render ``template`` with ``context`` (plus the request) into a page response."""
    html = TEMPLATES.get_template(template).render(request=request, **context)
    response = HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-store"
    return response


def _error_page(request: Request, status_code: int, title: str, message: str) -> Response:
    if is_partial(request):
        return Response(message, status_code=status_code, media_type="text/plain")
    return render(
        request,
        "error.html",
        {"title": title, "message": message, "status_code": status_code, "user": None},
        status_code=status_code,
    )


class WebRoute(APIRoute):
    """A page route: authentication failures redirect to the login form, errors are pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler so that tasklift errors become HTML answers."""
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except AuthenticationError:
                if is_partial(request):
                    return Response("log in again", status_code=401, media_type="text/plain")
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
            except NotFoundError as exc:
                return _error_page(request, 404, "Not found", str(exc))
            except PermissionDeniedError as exc:
                return _error_page(request, 403, "Not allowed", str(exc))
            except RequestValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                    for e in exc.errors()
                )
                return _error_page(request, 400, "Bad address", problems)

        return page_handler
