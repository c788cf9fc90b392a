"""What a real `tasklift server` answers to bad or unlucky requests: the status code, a reason
naming the problem, and nothing stored for a refused request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import PG_ADMIN, Server, start_server
from tasklift.db.session import create_db_engine
from tasklift.service.auth import Authenticator

BIG = 123456789012345678901234  # 24 digits: beyond the 64 bits JSON numbers are stored in


def _count_workflows(server: Server) -> int:
    db = create_db_engine(server.db_url)
    try:
        with db.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM workflows")).scalar() or 0)
    finally:
        db.dispose()


def _runner_token(server: Server, user: str, workflow_id: int, job: dict) -> str:
    """The job token of a running remote workflow's runner, signed with the server's key."""
    db = create_db_engine(server.db_url)
    try:
        auth = Authenticator(db=db, settings=server.settings())
        return auth.issue_job_token(
            user=user, workflow_id=workflow_id, holder=(job["id"], job["attempts"])
        )
    finally:
        db.dispose()


def _running_job(client, workflow_id: int) -> dict:
    """The job that runs remote workflow ``workflow_id``, once it is handed out."""
    deadline = time.monotonic() + 60
    while True:
        works = client.get(f"/api/v1/workflows/{workflow_id}/works").json()["data"]
        if works:
            jobs = client.get(f"/api/v1/works/{works[0]['id']}/jobs").json()["data"]
            # a job the local backend runs shows as queued until it ends (no timeout)
            if jobs and jobs[0]["state"] in ("queued", "running") and jobs[0]["attempts"] >= 1:
                return dict(jobs[0])
        assert time.monotonic() < deadline, "the remote workflow did not start within 60 s"
        time.sleep(0.1)


def _new_workflow(client, name: str = "wf") -> int:
    answer = client.post("/api/v1/workflows", json={"name": name, "function": "m:f"})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def test_a_huge_integer_argument_is_refused_with_422_naming_it(server):
    with server.client(server.token("alice")) as c:
        before = _count_workflows(server)
        answer = c.post(
            "/api/v1/workflows",
            json={"name": "big", "function": "m:f", "arguments": {"kwargs": {"n": BIG}}},
        )
        assert answer.status_code == 422, answer.text
        assert "64" in answer.text and "arguments" in answer.text, answer.text
        assert _count_workflows(server) == before
        wf = _new_workflow(c)
        finish = c.post(
            f"/api/v1/workflows/{wf}/finish", json={"status": "finished", "result": [BIG]}
        )
        assert finish.status_code == 422, finish.text
        assert "result" in finish.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_in_request_json_are_refused(server, literal):
    with server.client(server.token("alice")) as c:
        before = _count_workflows(server)
        body = '{"name": "nan", "function": "m:f", "arguments": {"kwargs": {"x": LIT}}}'
        body = body.replace("LIT", literal)
        answer = c.post(
            "/api/v1/workflows", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 422, answer.text
        assert "arguments" in answer.text and "JSON" in answer.text, answer.text
        assert _count_workflows(server) == before
        wf = _new_workflow(c)
        job = f'{{"key": "{"0" * 64}", "payload": "e30="}}'
        body = (
            f'{{"workflow_id": {wf}, "name": "w", "function": "m:f", "min_success": {literal}, '
            f'"jobs": [{job}]}}'
        )
        answer = c.post("/api/v1/works", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 422, answer.text
        assert "min_success" in answer.text
        assert c.get(f"/api/v1/workflows/{wf}/works").json()["count"] == 0


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[Server]:
    """A server on SQLite that takes request bodies up to 1 MiB."""
    srv = start_server(
        f"sqlite:///{tmp_path / 'small.db'}",
        tmp_path / "small-home",
        extra_env={"TASKLIFT_MAX_REQUEST_MB": "1"},
    )
    yield srv
    srv.stop()


def test_an_oversized_chunked_body_gets_413_naming_the_limit(small_server):
    def chunks() -> Iterator[bytes]:  # no Content-Length: the body is sent chunked
        yield b'{"name": "x", "function": "m:f", "arguments": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    with small_server.client(small_server.token("alice")) as c:
        answer = c.post(
            "/api/v1/workflows", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 413, answer.text
        assert str(1024 * 1024) in answer.json()["detail"]
        # a chunked body under the limit still works
        small = c.post(
            "/api/v1/workflows",
            content=iter([b'{"name": "x", "function": "m:f"}']),
            headers={"Content-Type": "application/json"},
        )
        assert small.status_code == 201, small.text


def test_a_refused_sub_workflow_creates_nothing(server, tmp_path):
    from holdfns import wait_for_file

    from tasklift import Workflow
    from tasklift.settings import Settings

    token = server.token("alice")
    release = tmp_path / "release"
    settings = Settings(token=token, home=tmp_path / "client", quiet=True)
    remote = Workflow(func=wait_for_file, service=server.url, remote=True, settings=settings)
    mine = remote.submit(str(release))
    with server.client(token) as c:
        other = _new_workflow(c, "other")
        runner = _runner_token(server, "alice", mine, _running_job(c, mine))
    try:
        before = _count_workflows(server)
        with server.client(runner) as job:
            refused = job.post(
                "/api/v1/workflows", json={"name": "child", "function": "m:f", "parent_id": other}
            )
            assert refused.status_code == 403, refused.text
            assert _count_workflows(server) == before
        # another user's workflow as parent: not found, and nothing created either
        with server.client(server.token("bob")) as bob:
            refused = bob.post(
                "/api/v1/workflows", json={"name": "child", "function": "m:f", "parent_id": mine}
            )
            assert refused.status_code == 404, refused.text
            assert _count_workflows(server) == before
        with server.client(runner) as job:
            # a sub-workflow of its own workflow is allowed, with a token for the child
            child = job.post(
                "/api/v1/workflows", json={"name": "child", "function": "m:f", "parent_id": mine}
            )
            assert child.status_code == 201, child.text
            assert _count_workflows(server) == before + 1
            child_id = child.json()["id"]
            child_token = child.json()["token"]
            assert child_token
        with server.client(child_token) as sub:
            done = sub.post(
                f"/api/v1/workflows/{child_id}/finish", json={"status": "finished", "result": 1}
            )
            assert done.status_code == 200, done.text
            assert sub.get(f"/api/v1/workflows/{mine}").status_code == 403  # scoped to the child
    finally:
        release.touch()
    handle = Workflow.attach(mine, service=server.url, settings=settings)
    assert handle.result(timeout=60) is True


def test_a_bad_token_on_head_carries_its_reason_in_a_header(server):
    db = create_db_engine(server.db_url)
    try:
        auth = Authenticator(db=db, settings=server.settings())
        token_id, token = auth.create_token(user="alice")
        auth.revoke_token(token_id)
    finally:
        db.dispose()
    with server.client(token) as c:
        answer = c.head("/api/v1/archives/" + "0" * 64)
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert f"API token {token_id} was revoked" in challenge


def test_a_database_outage_answers_503_with_retry_after(pg_url, tmp_path):
    srv = start_server(pg_url, tmp_path / "home")
    db_name = pg_url.rsplit("/", 1)[1]
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with srv.client(srv.token("alice")) as c:
            wf = _new_workflow(c)
            with admin.connect() as conn:
                try:
                    conn.execute(sa.text(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS false'))
                    conn.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = :d AND pid <> pg_backend_pid()"
                        ),
                        {"d": db_name},
                    )
                    answers = [c.get(f"/api/v1/workflows/{wf}") for _ in range(2)]
                finally:
                    conn.execute(sa.text(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS true'))
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert int(answer.headers["retry-after"]) >= 1
                assert "database" in answer.json()["detail"]
            deadline = time.monotonic() + 60
            while c.get(f"/api/v1/workflows/{wf}").status_code != 200:
                assert time.monotonic() < deadline, "the server never recovered"
                threading.Event().wait(0.2)
    finally:
        admin.dispose()
        srv.stop()
