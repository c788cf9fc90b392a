"""Route: ``/assets/{name}`` serves the monitor's CSS, script and icon from the package.

No CDN, nothing fetched at run time: the pages work offline. Asset URLs carry a content hash
(``?v=...``), so browsers may cache them for a day.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from fastapi import APIRouter, HTTPException, Response

__all__ = ["asset_url", "router"]

router = APIRouter(include_in_schema=False)

TYPES = {
    "monitor.css": "text/css; charset=utf-8",
    "monitor.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""The only files served (a fixed list: no path from a URL ever reaches the file system)."""


@functools.cache
def _read(name: str) -> bytes:
    return (resources.files("tasklift.service.web") / "static" / name).read_bytes()


def asset_url(name: str) -> str:
    """The URL of a packaged asset, with a content hash that changes when the file does."""
    return f"/assets/{name}?v={hashlib.sha256(_read(name)).hexdigest()[:12]}"


@router.get("/assets/{name}")
def asset(name: str) -> Response:
    """One packaged asset."""
    if name not in TYPES:
        raise HTTPException(404, "no such asset")
    return Response(
        _read(name),
        media_type=TYPES[name],
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
