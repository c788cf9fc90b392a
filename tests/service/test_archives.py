"""HEAD/PUT/GET /api/v1/archives/{sha256}: streaming upload, hash check, size limit, auth."""

from __future__ import annotations

import asyncio
import hashlib
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from starlette.exceptions import StarletteDeprecationWarning

from job_holders import running_job
from tasklift.archive import PackedArchive, pack_source
from tasklift.db import tables
from tasklift.db.session import create_db_engine, upgrade
from tasklift.service.app import create_app
from tasklift.settings import Settings

with warnings.catch_warnings():  # starlette 1.x asks for httpx2; the venv has httpx
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

LIMIT_MB = 0.05  # 52 KB: small archives fit, a few KB of random bytes over it do not
URL = "/api/v1/archives"


def _state(client: TestClient) -> Any:
    app = client.app
    assert isinstance(app, FastAPI)
    return app.state


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path}/t.db"
    db = create_db_engine(url)
    upgrade(db)
    db.dispose()
    settings = Settings(
        home=tmp_path / "home",
        db_url=url,
        workers=1,
        quiet=True,
        max_archive_upload_mb=LIMIT_MB,
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def auth(client: TestClient) -> dict[str, str]:
    _, token = _state(client).auth.create_token(user="alice")
    return {"Authorization": f"Bearer {token}"}


def _pack(root: Path, name: str, files: dict[str, bytes]) -> PackedArchive:
    src = root / name
    src.mkdir()
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    return pack_source(src)


@pytest.fixture
def packed(tmp_path: Path) -> PackedArchive:
    return _pack(tmp_path, "src", {"main.py": b"print('hi')\n", "util.py": b"X = 1\n"})


def _archive_dir(client: TestClient) -> Path:
    return Path(_state(client).settings.archive_dir)


def _stored_files(client: TestClient) -> list[str]:
    folder = _archive_dir(client)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _db_row(client: TestClient, sha: str) -> dict[str, object] | None:
    with _state(client).engine.db.connect() as conn:
        row = (
            conn.execute(select(tables.archives).where(tables.archives.c.sha256 == sha))
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


def test_upload_then_head_and_download(
    client: TestClient, auth: dict[str, str], packed: PackedArchive
) -> None:
    sha = packed.sha256
    assert client.head(f"{URL}/{sha}", headers=auth).status_code == 404

    resp = client.put(f"{URL}/{sha}", content=packed.data, headers=auth)
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"sha256": sha, "size": len(packed.data), "stored": True}

    head = client.head(f"{URL}/{sha}", headers=auth)
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(packed.data)

    got = client.get(f"{URL}/{sha}", headers=auth)
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/gzip"
    assert got.content == packed.data
    assert hashlib.sha256(got.content).hexdigest() == sha

    assert _stored_files(client) == [f"{sha}.tar.gz"]
    row = _db_row(client, sha)
    assert row is not None
    assert row["size"] == len(packed.data)


def test_second_upload_is_not_stored_again(
    client: TestClient, auth: dict[str, str], packed: PackedArchive
) -> None:
    sha = packed.sha256
    assert client.put(f"{URL}/{sha}", content=packed.data, headers=auth).status_code == 201
    path = _archive_dir(client) / f"{sha}.tar.gz"
    before = path.stat()

    resp = client.put(f"{URL}/{sha}", content=packed.data, headers=auth)
    assert resp.status_code == 200
    assert resp.json() == {"sha256": sha, "size": len(packed.data), "stored": False}
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_n_files_is_recorded(
    client: TestClient, auth: dict[str, str], packed: PackedArchive
) -> None:
    resp = client.put(
        f"{URL}/{packed.sha256}",
        params={"n_files": packed.n_files},
        content=packed.data,
        headers=auth,
    )
    assert resp.status_code == 201
    row = _db_row(client, packed.sha256)
    assert row is not None
    assert row["n_files"] == packed.n_files == 2


def test_wrong_hash_is_refused_and_nothing_stored(
    client: TestClient, auth: dict[str, str], packed: PackedArchive, tmp_path: Path
) -> None:
    other = _pack(tmp_path, "other", {"a.py": b"A = 2\n"})
    resp = client.put(f"{URL}/{other.sha256}", content=packed.data, headers=auth)
    assert resp.status_code == 409
    detail = resp.json()["detail"]
    assert packed.sha256 in detail
    assert other.sha256 in detail

    assert client.head(f"{URL}/{other.sha256}", headers=auth).status_code == 404
    assert client.head(f"{URL}/{packed.sha256}", headers=auth).status_code == 404
    assert _stored_files(client) == []
    assert _db_row(client, other.sha256) is None


def test_non_gzip_body_is_refused(client: TestClient, auth: dict[str, str]) -> None:
    body = b"not a tarball at all"
    sha = hashlib.sha256(body).hexdigest()
    resp = client.put(f"{URL}/{sha}", content=body, headers=auth)
    assert resp.status_code == 422
    assert "gzip" in resp.json()["detail"]
    assert _stored_files(client) == []


def test_existing_archive_is_not_changed_by_a_bad_upload(
    client: TestClient, auth: dict[str, str], packed: PackedArchive
) -> None:
    sha = packed.sha256
    assert client.put(f"{URL}/{sha}", content=packed.data, headers=auth).status_code == 201
    resp = client.put(f"{URL}/{sha}", content=b"\x1f\x8bgarbage", headers=auth)
    assert resp.status_code == 200  # known hash: the body is not even read
    assert client.get(f"{URL}/{sha}", headers=auth).content == packed.data


def _big(tmp_path: Path) -> PackedArchive:
    big = _pack(tmp_path, "big", {"blob.bin": os.urandom(int(LIMIT_MB * 1024 * 1024) + 4096)})
    assert len(big.data) > LIMIT_MB * 1024 * 1024
    return big


def test_oversize_with_content_length_is_refused(
    client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    big = _big(tmp_path)
    resp = client.put(f"{URL}/{big.sha256}", content=big.data, headers=auth)
    assert resp.status_code == 413
    assert "limit" in resp.json()["detail"]
    assert client.head(f"{URL}/{big.sha256}", headers=auth).status_code == 404
    assert _stored_files(client) == []


def test_oversize_chunked_stops_reading_and_leaves_nothing(
    client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    big = _big(tmp_path)
    chunk = 4096
    total_chunks = -(-len(big.data) // chunk)
    sent = 0

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        nonlocal sent
        for start in range(0, len(big.data), chunk):
            sent += 1
            yield big.data[start : start + chunk]

    async def upload() -> httpx.Response:
        transport = httpx.ASGITransport(app=client.app)  # streams the body chunk by chunk
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            return await ac.put(f"{URL}/{big.sha256}", content=body(), headers=auth)

    resp = asyncio.run(upload())
    assert resp.status_code == 413
    assert sent < total_chunks  # the server stopped reading once past the limit
    assert client.head(f"{URL}/{big.sha256}", headers=auth).status_code == 404
    assert _stored_files(client) == []


def test_chunked_upload_within_limit(
    client: TestClient, auth: dict[str, str], packed: PackedArchive
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(packed.data), 7):
            yield packed.data[start : start + 7]

    async def upload() -> httpx.Response:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            return await ac.put(f"{URL}/{packed.sha256}", content=body(), headers=auth)

    resp = asyncio.run(upload())
    assert resp.status_code == 201, resp.text
    assert client.get(f"{URL}/{packed.sha256}", headers=auth).content == packed.data


@pytest.mark.parametrize("bad", ["abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "0" * 63 + " "])
def test_bad_sha_in_path_is_422(
    client: TestClient, auth: dict[str, str], packed: PackedArchive, bad: str
) -> None:
    for method in ("HEAD", "GET", "PUT"):
        resp = client.request(method, f"{URL}/{bad}", content=packed.data, headers=auth)
        assert resp.status_code == 422, method
    assert _stored_files(client) == []


def test_missing_or_bad_token_is_401(client: TestClient, packed: PackedArchive) -> None:
    sha = packed.sha256
    assert client.put(f"{URL}/{sha}", content=packed.data).status_code == 401
    assert client.get(f"{URL}/{sha}").status_code == 401
    assert client.head(f"{URL}/{sha}").status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert client.put(f"{URL}/{sha}", content=packed.data, headers=bad).status_code == 401
    assert _stored_files(client) == []


def test_job_token_can_read_its_archive_but_not_upload(
    client: TestClient, auth: dict[str, str], packed: PackedArchive, tmp_path: Path
) -> None:
    other = _pack(tmp_path, "other", {"a.py": b"A = 2\n"})
    for archive in (packed, other):
        put = client.put(f"{URL}/{archive.sha256}", content=archive.data, headers=auth)
        assert put.status_code == 201
    engine = _state(client).engine
    workflow_id = engine.create_workflow(
        name="wf", function="main:wf", owner="alice", archive_sha=packed.sha256
    )
    _, _, job_id, attempt = running_job(engine.db, workflow_id=workflow_id)
    token = _state(client).auth.issue_job_token(
        user="alice", workflow_id=workflow_id, holder=(job_id, attempt)
    )
    job = {"Authorization": f"Bearer {token}"}

    got = client.get(f"{URL}/{packed.sha256}", headers=job)
    assert got.status_code == 200
    assert got.content == packed.data
    assert client.head(f"{URL}/{packed.sha256}", headers=job).status_code == 200

    assert client.get(f"{URL}/{other.sha256}", headers=job).status_code == 403
    new = _pack(tmp_path, "new", {"b.py": b"B = 3\n"})
    assert client.put(f"{URL}/{new.sha256}", content=new.data, headers=job).status_code == 403
    assert client.put(f"{URL}/{packed.sha256}", content=packed.data, headers=job).status_code == 403
    assert f"{new.sha256}.tar.gz" not in _stored_files(client)


def test_openapi_lists_the_archive_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths[f"{URL}/{{sha256}}"]) >= {"head", "put", "get"}
