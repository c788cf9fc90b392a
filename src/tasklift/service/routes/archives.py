"""Routes: the content-addressed archive store, ``HEAD/PUT/GET /archives/{sha256}``.

Uploads stream into a temporary file next to the store, hashed on the way in, and are
renamed into place only when their hash matches the path and their tar headers stay within the
extraction limits; an archive is never stored twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.requests import ClientDisconnect

from tasklift.archive import archive_path, check_archive
from tasklift.db import tables
from tasklift.db.archives import upsert_archive
from tasklift.errors import ArchiveError, ConflictError, NotFoundError, PermissionDeniedError
from tasklift.service.deps import EngineDep, PrincipalDep, SettingsDep, UserDep

if TYPE_CHECKING:
    from tasklift.engine.engine import Engine
    from tasklift.service.principal import Principal

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/archives", tags=["archives"])

GZIP_MAGIC = b"\x1f\x8b"

Sha256 = Annotated[
    str,
    Path(
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 of the archive's bytes: 64 lowercase hex digits.",
    ),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No token, or a bad one."},
    403: {"description": "A job token outside its scope."},
}


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        413, f"archive exceeds the server's upload limit of {limit} bytes (max_archive_upload_mb)"
    )


@router.head("/{sha256}", responses={**_ERRORS, 404: {"description": "Not stored."}})
def head_archive(sha256: Sha256, principal: PrincipalDep, engine: EngineDep) -> Response:
    """Say whether an archive is stored (200 with its ``Content-Length``) or not (404).

    Clients call this before ``PUT`` so that a known archive is never uploaded twice.
    """
    path = _readable(sha256, principal, engine)
    size = path.stat().st_size
    return Response(status_code=200, headers={"content-length": str(size)})


@router.get(
    "/{sha256}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/gzip": {}}, "description": "The archive's bytes."},
        **_ERRORS,
        404: {"description": "Not stored."},
    },
)
def get_archive(sha256: Sha256, principal: PrincipalDep, engine: EngineDep) -> FileResponse:
    """Stream a stored archive (``application/gzip``); users and job tokens of its workflow."""
    path = _readable(sha256, principal, engine)
    return FileResponse(path, media_type="application/gzip", filename=f"{sha256}.tar.gz")


@router.put(
    "/{sha256}",
    status_code=201,
    responses={
        200: {"description": "Already stored; nothing was written."},
        201: {"description": "Stored."},
        **_ERRORS,
        409: {"description": "The uploaded bytes do not hash to the path's sha256."},
        413: {"description": "Larger than the server's upload limit."},
        422: {
            "description": "Not a sha256, not a gzip tar, or it would expand past the "
            "extraction limits (archive_max_mb, archive_max_files) or outside its directory."
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def put_archive(
    sha256: Sha256,
    request: Request,
    principal: UserDep,
    engine: EngineDep,
    settings: SettingsDep,
    n_files: Annotated[int, Query(ge=0, description="Files in the archive, if known.")] = 0,
) -> JSONResponse:
    """Upload an archive as the raw request body, verified against ``sha256``.

    Returns:
        201 ``{sha256, size, stored: true}`` when stored, 200 ``{..., stored: false}`` when
        the archive was already there (the body is not read).

    Raises:
        HTTPException: 413 when the body exceeds ``max_archive_upload_mb``.
        ConflictError: the body hashes to something else; nothing is stored.
        ArchiveError: the body is not a gzip file, or its tar headers declare more than
            ``archive_max_mb`` of files or ``archive_max_files`` members, or an unsafe member
            (read as a stream, nothing extracted); nothing is stored.
    """
    final = archive_path(settings.archive_dir, sha256)
    if final.is_file():
        size = final.stat().st_size
        await run_in_threadpool(_record, engine, sha256, size, n_files)
        logger.debug("archive %s already stored; upload by %s skipped", sha256, principal.user)
        return JSONResponse({"sha256": sha256, "size": size, "stored": False}, 200)

    limit = int(settings.max_archive_upload_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)

    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".upload-{sha256[:16]}.", suffix=".tmp", dir=final.parent
    )
    tmp = FilePath(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            actual, size, head = await _receive(request, fh, limit)
            await run_in_threadpool(_sync, fh)
        if actual != sha256:
            raise ConflictError(
                f"uploaded archive has sha256 {actual}, but was sent to {sha256}; nothing stored"
            )
        if not head.startswith(GZIP_MAGIC):
            raise ArchiveError(f"archive {sha256} is not a gzip file; nothing stored")
        try:
            await run_in_threadpool(
                check_archive,
                tmp,
                max_bytes=settings.archive_max_bytes,
                max_files=settings.archive_max_files,
                name=sha256,
            )
        except ArchiveError as exc:
            logger.warning("upload of archive %s by %s refused: %s", sha256, principal.user, exc)
            raise ArchiveError(f"{exc} by the server; nothing stored") from exc
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except ClientDisconnect as exc:
        logger.info("upload of archive %s by %s: client disconnected", sha256, principal.user)
        raise HTTPException(400, "client disconnected during the upload") from exc
    finally:
        tmp.unlink(missing_ok=True)
    await run_in_threadpool(_record, engine, sha256, size, n_files)
    logger.info("stored archive %s (%d bytes) uploaded by %s", sha256, size, principal.user)
    return JSONResponse({"sha256": sha256, "size": size, "stored": True}, 201)


async def _receive(request: Request, fh: BinaryIO, limit: int) -> tuple[str, int, bytes]:
    """Copy the body into ``fh`` chunk by chunk; return (sha256 hex digest, size, first bytes).

    Raises:
        HTTPException: 413 as soon as more than ``limit`` bytes arrived.
    """
    digest = hashlib.sha256()
    size = 0
    head = b""
    async for chunk in request.stream():
        if not chunk:
            continue
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if len(head) < len(GZIP_MAGIC):
            head += chunk[: len(GZIP_MAGIC) - len(head)]
        digest.update(chunk)
        fh.write(chunk)
    return digest.hexdigest(), size, head


def _sync(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _record(engine: Engine, sha256: str, size: int, n_files: int) -> None:
    """Add the archive's DB row (a concurrent upload of the same hash may win the insert)."""
    try:
        with engine.db.begin() as conn:
            upsert_archive(conn, sha256, size, n_files)
    except IntegrityError:
        logger.debug("archive %s: row inserted concurrently", sha256)


def _readable(sha256: str, principal: Principal, engine: Engine) -> FilePath:
    """The stored archive's path, if it exists and ``principal`` may read it.

    Users may read any archive (its hash is the capability); a job token only the archive
    of its own workflow or of one of that workflow's works.

    Raises:
        NotFoundError: not stored.
        PermissionDeniedError: a job token for another workflow's archive.
    """
    if principal.kind == "job" and not _job_may_read(principal, engine, sha256):
        raise PermissionDeniedError("this job token cannot read that archive")
    path = archive_path(engine.settings.archive_dir, sha256)
    if not path.is_file():
        raise NotFoundError(f"archive {sha256} is not stored")
    return path


def _job_may_read(principal: Principal, engine: Engine, sha256: str) -> bool:
    if principal.workflow_id is None:
        return False
    with engine.db.connect() as conn:
        own = conn.execute(
            select(tables.workflows.c.id).where(
                tables.workflows.c.id == principal.workflow_id,
                tables.workflows.c.archive_sha == sha256,
            )
        ).first()
        if own is not None:
            return True
        work = conn.execute(
            select(tables.works.c.id)
            .where(
                tables.works.c.workflow_id == principal.workflow_id,
                tables.works.c.archive_sha == sha256,
            )
            .limit(1)
        ).first()
    return work is not None
