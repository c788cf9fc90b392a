"""Waiting for results through the server: create-and-wait streams, long polls, the token cache."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, delete, event

from conftest import start_server
from tasklift import get_unique_id_for_dict
from tasklift.db.models import ApiToken
from tasklift.db.session import create_db_engine, upgrade
from tasklift.errors import AuthenticationError
from tasklift.service.auth import Authenticator
from tasklift.service.principal import Principal
from tasklift.settings import Settings

# -- the token cache -------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Any:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'auth.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def authenticator(db: Engine, tmp_path: Path, ttl: float) -> Authenticator:
    settings = Settings(home=tmp_path / "home", db_url=str(db.url), quiet=True)
    return Authenticator(db=db, settings=settings, cache_ttl=ttl)


def statements(db: Engine) -> list[str]:
    seen: list[str] = []
    event.listen(db, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_a_cached_token_skips_the_database(db: Engine, tmp_path: Path) -> None:
    auth = authenticator(db, tmp_path, ttl=60)
    _, token = auth.create_token(user="alice")
    assert auth.cached(f"Bearer {token}") is None
    assert auth.authenticate(f"Bearer {token}") == Principal(user="alice")
    seen = statements(db)
    assert auth.cached(f"Bearer {token}") == Principal(user="alice")
    assert auth.authenticate(f"Bearer {token}") == Principal(user="alice")
    assert seen == []
    assert auth.cached(f"Bearer {token}x") is None  # another secret is another key


def test_a_token_revoked_by_this_server_is_refused_at_once(db: Engine, tmp_path: Path) -> None:
    auth = authenticator(db, tmp_path, ttl=60)
    token_id, token = auth.create_token(user="alice")
    auth.authenticate(f"Bearer {token}")
    auth.revoke_token(token_id)
    assert auth.cached(f"Bearer {token}") is None
    with pytest.raises(AuthenticationError, match="revoked"):
        auth.authenticate(f"Bearer {token}")


def test_a_token_revoked_elsewhere_is_refused_after_the_ttl(db: Engine, tmp_path: Path) -> None:
    server = authenticator(db, tmp_path, ttl=0.3)
    token_id, token = server.create_token(user="alice")
    server.authenticate(f"Bearer {token}")
    authenticator(db, tmp_path, ttl=0).revoke_token(token_id)  # e.g. `tasklift token revoke`
    deadline = time.monotonic() + 30
    while server.cached(f"Bearer {token}") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(AuthenticationError, match="revoked"):
        server.authenticate(f"Bearer {token}")


def test_the_cache_never_outlives_the_token(db: Engine, tmp_path: Path) -> None:
    auth = authenticator(db, tmp_path, ttl=600)
    token_id, token = auth.create_token(user="alice", expires_in=0.5)
    auth.authenticate(f"Bearer {token}")
    with db.begin() as conn:  # gone from the database: only the cache still knows it
        conn.execute(delete(ApiToken).where(ApiToken.id == token_id))
    deadline = time.monotonic() + 30
    while auth.cached(f"Bearer {token}") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(AuthenticationError):
        auth.authenticate(f"Bearer {token}")


# -- through a server ------------------------------------------------------------------------


def job(i: int) -> dict[str, str]:
    payload = orjson.dumps({"kwargs": {"x": i}})
    return {"key": get_unique_id_for_dict({"x": i}), "payload": base64.b64encode(payload).decode()}


def sleep_job(seconds: float) -> dict[str, str]:
    payload = orjson.dumps({"args": [seconds], "kwargs": {}})
    return {"key": get_unique_id_for_dict({"s": seconds}),
            "payload": base64.b64encode(payload).decode()}


def create_and_wait(c: httpx.Client, body: dict[str, Any], wait: float) -> list[dict[str, Any]]:
    """POST /works?wait=...: the work, then the result pages (the decoded lines)."""
    with c.stream("POST", "/api/v1/works", params={"wait": wait}, json=body) as response:
        assert response.status_code == 201, response.read()
        assert response.headers["content-type"].startswith("application/x-ndjson")
        return [orjson.loads(line) for line in response.iter_lines() if line]


def test_create_and_wait_streams_what_separate_calls_return(server) -> None:
    with server.client(server.token("alice")) as c:
        wf = c.post("/api/v1/workflows", json={"name": "w", "function": "m:f"}).json()
        body = {"workflow_id": wf["id"], "name": "dicts", "function": "builtins:dict",
                "retries": 0, "jobs": [job(i) for i in range(20)]}
        work, *pages = create_and_wait(c, body, wait=25)
        assert pages and pages[-1]["done"] and not any(p["done"] for p in pages[:-1])
        streamed = [row for p in pages for row in p["data"]]
        assert [r["done_seq"] for r in streamed] == list(range(1, 21))
        assert [p["cursor"] for p in pages if p["data"]] == [
            p["data"][-1]["done_seq"] for p in pages if p["data"]]
        assert sorted(orjson.loads(base64.b64decode(r["result"]))["x"] for r in streamed) == (
            list(range(20)))

        # the same as creating without waiting and asking afterwards
        stored = c.get(f"/api/v1/works/{work['id']}").json()
        assert work == {k: stored[k] for k in ("id", "workflow_id", "n_jobs", "n_reused")}
        assert (stored["name"], stored["status"], stored["n_finished"]) == ("dicts", "finished", 20)
        page = c.get(f"/api/v1/works/{work['id']}/results", params={"wait": 5}).json()
        assert page == {"data": streamed, "cursor": 20, "done": True}
        plain = c.post("/api/v1/works", json={**body, "name": "again", "reuse": False})
        assert plain.status_code == 201 and plain.headers["content-type"] == "application/json"
        assert plain.json()["n_jobs"] == 20

        # jobs reused from the first work are stored ended and never announced: still streamed
        work2, *pages2 = create_and_wait(c, body, wait=25)
        assert work2["n_reused"] == 20 and pages2[-1]["done"]
        assert sorted(r["result"] for p in pages2 for r in p["data"]) == sorted(
            r["result"] for r in streamed)

        # failures are results too; errors before the stream are plain JSON answers
        failing = {**body, "name": "broken", "function": "no_such_module:f"}
        _, *pages3 = create_and_wait(c, failing, wait=25)
        rows = [row for p in pages3 for row in p["data"]]
        assert pages3[-1]["done"] and {r["state"] for r in rows} == {"failed"} and len(rows) == 20
        refused = c.post("/api/v1/works", params={"wait": 5}, json={**body, "workflow_id": 10**6})
        assert refused.status_code == 404 and refused.json()["detail"]


def follow_a_slow_job(server) -> None:
    """The stream ends at its deadline; a long poll from its cursor brings the result."""
    with server.client(server.token("bob")) as c:
        wf = c.post("/api/v1/workflows", json={"name": "slow", "function": "m:f"}).json()
        body = {"workflow_id": wf["id"], "name": "nap", "function": "time:sleep",
                "jobs": [sleep_job(1.5)]}
        work, *pages = create_and_wait(c, body, wait=0.2)
        assert pages == [{"data": [], "cursor": 0, "done": False}]
        deadline = time.monotonic() + 60
        cursor, rows = 0, []
        while True:
            page = c.get(f"/api/v1/works/{work['id']}/results",
                         params={"since": cursor, "wait": 10}).json()
            rows += page["data"]
            cursor = page["cursor"]
            if page["done"]:
                break
            assert time.monotonic() < deadline
        assert [(r["state"], r["result"]) for r in rows] == [("finished", "bnVsbA==")]  # null


def test_a_stream_that_ends_first_is_continued_by_long_polls(server) -> None:
    follow_a_slow_job(server)


@pytest.mark.stomp
def test_long_polls_on_a_stomp_server(tmp_path: Path, stomp_url: str) -> None:
    server = start_server(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "home",
                          extra_env={"TASKLIFT_BUS": stomp_url})
    try:
        follow_a_slow_job(server)
    finally:
        server.stop()


def test_a_revoked_token_is_refused_by_a_running_server(server) -> None:
    token = server.token("carol")
    with server.client(token) as c:
        assert c.get("/api/v1/workflows").status_code == 200
        assert c.get("/api/v1/workflows").status_code == 200  # now from the cache
        db = create_db_engine(server.db_url)
        try:
            Authenticator(db=db, settings=server.settings()).revoke_token(
                int(token.split("_")[1]))
        finally:
            db.dispose()
        deadline = time.monotonic() + 30  # the cache keeps a token for seconds, not longer
        while c.get("/api/v1/workflows").status_code != 401:
            assert time.monotonic() < deadline
            time.sleep(0.1)
