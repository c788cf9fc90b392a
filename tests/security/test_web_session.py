"""Web monitor sessions: the cookie is a server-side session (not the API token), logout and
expiry end it, and a cookie-authenticated unsafe request must come from this server (CSRF)."""

from __future__ import annotations

import base64
import hashlib
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

from tasklift.db.models import Base, WebSession
from tasklift.db.session import alembic_config, create_db_engine, upgrade
from tasklift.keys import get_unique_id_for_dict
from tasklift.service.app import create_app
from tasklift.settings import Settings

with warnings.catch_warnings():  # starlette 1.x asks for httpx2; the venv has httpx
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

COOKIE = "tasklift_session"
EVIL = "http://evil.example"


@contextmanager
def _client(
    db_url: str, home: Path, base_url: str = "http://testserver", **settings: Any
) -> Iterator[TestClient]:
    db = create_db_engine(db_url)
    upgrade(db)
    db.dispose()
    # one user per test: its jobs may run as the server
    settings.setdefault("isolate_runners", False)
    config = Settings(home=home, db_url=db_url, workers=1, quiet=True, **settings)
    with TestClient(create_app(config), base_url=base_url) as client:
        yield client


def _state(client: TestClient) -> Any:
    app = client.app
    assert isinstance(app, FastAPI)
    return app.state


def _token(client: TestClient, user: str = "alice", **kwargs: Any) -> tuple[int, str]:
    token_id, token = _state(client).auth.create_token(user=user, **kwargs)
    return int(token_id), str(token)


def _login(client: TestClient, token: str, **headers: str) -> str:
    """Log in through the form; return the cookie's value (and keep it out of the jar)."""
    resp = client.post(
        "/login", data={"token": token, "next": "/"}, headers=headers, follow_redirects=False
    )
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == "/"
    value = resp.cookies.get(COOKIE)
    assert value, resp.headers.get("set-cookie")
    client.cookies.clear()  # every request below names its cookie explicitly
    return str(value)


def _with(cookie: str, **headers: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={cookie}", **headers}


def _session_row(client: TestClient, cookie: str) -> Any:
    table = WebSession.__table__
    digest = hashlib.sha256(cookie.encode()).hexdigest()
    with _state(client).engine.db.connect() as conn:
        return conn.execute(sa.select(table).where(table.c.secret_hash == digest)).first()


def _running_work(client: TestClient, token: str) -> int:
    """A work whose one job sleeps (stays running until cancelled), created with the token."""
    bearer = {"Authorization": f"Bearer {token}"}
    wf = client.post("/api/v1/workflows", json={"name": "w", "function": "m:f"}, headers=bearer)
    assert wf.status_code == 201, wf.text
    payload = base64.b64encode(orjson.dumps({"args": [60], "kwargs": {}})).decode()
    body = {
        "workflow_id": wf.json()["id"],
        "name": "sleepy",
        "function": "time:sleep",
        "retries": 0,
        "jobs": [{"key": get_unique_id_for_dict({"n": 1}), "payload": payload}],
    }
    work = client.post("/api/v1/works", json=body, headers=bearer)
    assert work.status_code == 201, work.text
    return int(work.json()["id"])


def _work_status(client: TestClient, token: str, work_id: int) -> str:
    resp = client.get(f"/api/v1/works/{work_id}", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["status"])


def test_the_cookie_is_a_session_not_the_api_token(db_url: str, tmp_path: Path) -> None:
    with _client(db_url, tmp_path / "home") as client:
        token_id, token = _token(client)
        form = client.get("/login")
        assert "random session key" in form.text and "12 h 00 min" in form.text
        resp = client.post("/login", data={"token": token}, follow_redirects=False)
        header = resp.headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=strict" in header and "path=/" in header
        assert "secure" not in header  # plain http: a Secure cookie would never come back
        cookie = str(resp.cookies[COOKIE])
        client.cookies.clear()
        assert token not in cookie and token.split("_", 2)[2] not in cookie
        assert len(cookie) >= 40

        row = _session_row(client, cookie)  # only the secret's sha256 is stored
        assert row is not None and row.user == "alice" and row.api_token_id == token_id
        assert cookie not in {str(v) for v in row}

        assert client.get("/", headers=_with(cookie)).status_code == 200
        assert client.get("/api/v1/workflows", headers=_with(cookie)).status_code == 200
        # attack: the cookie presented as an API credential
        stolen = client.get("/api/v1/workflows", headers={"Authorization": f"Bearer {cookie}"})
        assert stolen.status_code == 401
        # an old-style cookie (the token itself) is no session
        assert client.get("/api/v1/workflows", headers=_with(token)).status_code == 401


def test_logout_ends_the_session_on_the_server(db_url: str, tmp_path: Path) -> None:
    with _client(db_url, tmp_path / "home") as client:
        _, token = _token(client)
        for method in ("POST", "GET"):
            cookie = _login(client, token)
            assert client.get("/", headers=_with(cookie)).status_code == 200
            out = client.request(method, "/logout", headers=_with(cookie), follow_redirects=False)
            assert out.status_code == 303 and out.headers["location"] == "/login"
            assert f'{COOKIE}=""' in out.headers["set-cookie"] or "max-age=0" in (
                out.headers["set-cookie"].lower()
            )
            assert _session_row(client, cookie).ended_at is not None
            # attack: the old cookie replayed after logout
            replay = client.get("/api/v1/workflows", headers=_with(cookie))
            assert replay.status_code == 401
            assert "logged out" in replay.json()["detail"]
            page = client.get("/workflows/1", headers=_with(cookie), follow_redirects=False)
            assert page.status_code == 303
            assert page.headers["location"].startswith("/login?next=")
        # the API token itself still works: logging out ends the session, not the token
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/workflows", headers=bearer).status_code == 200


def test_an_expired_session_is_refused(db_url: str, tmp_path: Path) -> None:
    with _client(db_url, tmp_path / "home", web_session_ttl=600) as client:
        _, token = _token(client)
        cookie = _login(client, token)
        row = _session_row(client, cookie)
        assert row.expires_at - row.created_at == pytest.approx(600)
        table = WebSession.__table__
        with _state(client).engine.db.begin() as conn:
            stmt = sa.update(table).where(table.c.id == row.id)
            conn.execute(stmt.values(expires_at=time.time() - 1))
        resp = client.get("/api/v1/workflows", headers=_with(cookie))
        assert resp.status_code == 401 and "expired" in resp.json()["detail"]
        page = client.get("/", headers=_with(cookie), follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_a_session_never_outlives_its_token(db_url: str, tmp_path: Path) -> None:
    with _client(db_url, tmp_path / "home") as client:
        token_id, token = _token(client, expires_in=120)
        cookie = _login(client, token)
        (info,) = [t for t in _state(client).auth.list_tokens("alice") if t.id == token_id]
        assert _session_row(client, cookie).expires_at == pytest.approx(info.expires_at)
        assert client.get("/api/v1/workflows", headers=_with(cookie)).status_code == 200
        # revoking the token ends the sessions made from it
        _state(client).auth.revoke_token(token_id)
        resp = client.get("/api/v1/workflows", headers=_with(cookie))
        assert resp.status_code == 401 and "revoked" in resp.json()["detail"]
        # and a revoked token cannot start a new one
        again = client.post("/login", data={"token": token}, follow_redirects=False)
        assert again.status_code == 401 and COOKIE not in again.headers.get("set-cookie", "")


def test_job_tokens_cannot_log_in(tmp_path: Path) -> None:
    with _client(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "home") as client:
        _, token = _token(client)
        work_id = _running_work(client, token)
        bearer = {"Authorization": f"Bearer {token}"}
        job = client.get(f"/api/v1/works/{work_id}/jobs", headers=bearer).json()["data"][0]
        job_token = _state(client).auth.issue_job_token(
            user="alice", workflow_id=1, work_id=work_id, holder=(job["id"], job["attempts"])
        )
        resp = client.post("/login", data={"token": job_token}, follow_redirects=False)
        assert resp.status_code == 401 and COOKIE not in resp.headers.get("set-cookie", "")
        assert "job token" in resp.text
        with _state(client).engine.db.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(WebSession)).scalar() == 0


def test_cross_site_requests_with_the_cookie_are_refused(db_url: str, tmp_path: Path) -> None:
    with _client(db_url, tmp_path / "home") as client:
        _, token = _token(client)
        cookie = _login(client, token)
        work_id = _running_work(client, token)
        assert _work_status(client, token, work_id) == "running"
        cancel = f"/api/v1/works/{work_id}/cancel"

        attacks = [
            {"Origin": EVIL},
            {"Origin": "null"},  # sandboxed frames, opaque origins
            {"Origin": "http://testserver:8080"},  # same site, other port: another origin
            {"Origin": "https://testserver"},  # other scheme
            {"Referer": f"{EVIL}/page"},
            {},  # neither Origin nor Referer
        ]
        for headers in attacks:
            resp = client.post(cancel, headers=_with(cookie, **headers))
            assert resp.status_code == 403, (headers, resp.text)
            assert "cross-site request" in resp.json()["detail"]
        assert _work_status(client, token, work_id) == "running"  # not cancelled
        forged = client.post(
            "/api/v1/workflows", json={"name": "x", "function": "m:f"}, headers=_with(cookie)
        )
        assert forged.status_code == 403

        # the monitor's own buttons: a same-origin fetch (the browser sends Origin)
        own = client.post(cancel, headers=_with(cookie, Origin="http://testserver"))
        assert own.status_code == 200, own.text
        assert _work_status(client, token, work_id) == "cancelled"
        by_referer = client.post(
            "/api/v1/workflows",
            json={"name": "y", "function": "m:f"},
            headers=_with(cookie, Referer="http://testserver/workflows/1"),
        )
        assert by_referer.status_code == 201, by_referer.text
        # safe methods need no Origin; Bearer clients are not affected at all
        assert client.get(f"/api/v1/works/{work_id}", headers=_with(cookie)).status_code == 200
        bearer = {"Authorization": f"Bearer {token}", "Origin": EVIL}
        assert client.post(f"/api/v1/works/{work_id}/retry", headers=bearer).status_code == 200


def test_https_secure_cookie_and_public_url(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 's.db'}"
    with _client(db_url, tmp_path / "home", base_url="https://testserver") as client:
        _, token = _token(client)
        resp = client.post("/login", data={"token": token}, follow_redirects=False)
        assert resp.status_code == 303
        assert "secure" in resp.headers["set-cookie"].lower()
        cookie = str(resp.cookies[COOKIE])
        client.cookies.clear()
        body = {"name": "x", "function": "m:f"}
        ok = client.post(
            "/api/v1/workflows", json=body, headers=_with(cookie, Origin="https://testserver")
        )
        assert ok.status_code == 201, ok.text
        plain = client.post(
            "/api/v1/workflows", json=body, headers=_with(cookie, Origin="http://testserver")
        )
        assert plain.status_code == 403
        out = client.post("/logout", headers=_with(cookie), follow_redirects=False)
        assert "secure" in out.headers["set-cookie"].lower()

    # behind a proxy: the configured public URL is this server's origin too
    public = "https://monitor.example.org"
    with _client(db_url, tmp_path / "home", public_url=public) as client:
        _, token = _token(client)
        cookie = _login(client, token, Origin=public)
        body = {"name": "x", "function": "m:f"}
        ok = client.post("/api/v1/workflows", json=body, headers=_with(cookie, Origin=public))
        assert ok.status_code == 201, ok.text
        evil = client.post("/api/v1/workflows", json=body, headers=_with(cookie, Origin=EVIL))
        assert evil.status_code == 403


def test_a_login_posted_from_another_site_is_refused(tmp_path: Path) -> None:
    with _client(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "home") as client:
        _, token = _token(client)
        resp = client.post(
            "/login", data={"token": token}, headers={"Origin": EVIL}, follow_redirects=False
        )
        assert resp.status_code == 403 and COOKIE not in resp.headers.get("set-cookie", "")
        assert "cross-site request refused" in resp.text
        assert _login(client, token, Origin="http://testserver")  # the form itself posts fine


def test_the_migration_matches_the_model(db_url: str, tmp_path: Path) -> None:
    db = create_db_engine(db_url)
    try:
        upgrade(db)
        config = alembic_config(db)
        command.downgrade(config, "0004")
        assert not sa.inspect(db).has_table("web_sessions")
        command.upgrade(config, "head")
        with db.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        mine = [d for d in diffs if "web_sessions" in repr(d)]
        assert mine == []
    finally:
        db.dispose()
