"""The client (``Workflow(service=URL)``, ``tasklift`` commands) when things go wrong on the
way to a real `tasklift server`: an unreachable server, a database outage during a run, an
unknown id, a revoked token, a cancelled workflow; and remote ``@workflow`` functions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import outagefns
import pytest
import sqlalchemy as sa

from conftest import PG_ADMIN, start_server
from tasklift import Workflow
from tasklift.db.session import create_db_engine
from tasklift.errors import (
    AuthenticationError,
    NotFoundError,
    ServiceError,
    WorkflowFailedError,
)
from tasklift.service.auth import Authenticator
from tasklift.settings import Settings

UNREACHABLE = "http://alice:sekret@127.0.0.1:1"  # nothing listens on port 1


def _settings(tmp_path: Path, token: str | None) -> Settings:
    return Settings(token=token, home=tmp_path / "client-home", quiet=True)


def _squares(n: int, marks: str, delay: float) -> list[int]:
    return outagefns.marked_square(
        group_kwargs=[{"x": i, "marks": marks, "delay": delay} for i in range(n)]
    )


def test_an_unreachable_service_fails_at_once_naming_it(tmp_path):
    env = dict(
        os.environ,
        TASKLIFT_SERVICE=UNREACHABLE,
        TASKLIFT_TOKEN="tl_1_x",
        TASKLIFT_HOME=str(tmp_path / "home"),
        TASKLIFT_CONFIG_DIR=str(tmp_path / "config"),
    )
    # the timeout only keeps a hang (the bug: 123 s of silence) from hanging the suite
    proc = subprocess.run(
        [sys.executable, "-m", "tasklift.cli", "ls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "alice:***@127.0.0.1:1" in lines[0] and "connection refused" in lines[0], lines
    assert "sekret" not in proc.stderr + proc.stdout

    def wf():
        return 1

    with pytest.raises(ServiceError, match=r"127\.0\.0\.1:1.*connection refused") as caught:
        Workflow(func=wf, service=UNREACHABLE, settings=_settings(tmp_path, "tl_1_x")).run()
    assert "sekret" not in str(caught.value)


def test_attach_to_an_unknown_id_fails_at_attach(server, tmp_path):
    settings = _settings(tmp_path, server.token("alice"))
    with pytest.raises(NotFoundError, match="workflow 999 not found"):
        Workflow.attach(999, service=server.url, settings=settings)


def test_a_revoked_token_says_so_during_a_run(server, tmp_path):
    db = create_db_engine(server.db_url)
    try:
        auth = Authenticator(db=db, settings=server.settings())
        token_id, token = auth.create_token(user="alice")
        auth.revoke_token(token_id)
    finally:
        db.dispose()

    def wf():
        return 1

    # the run's first request is a HEAD (is the archive stored?): no body to carry a reason
    with pytest.raises(
        AuthenticationError, match=f"HEAD /archives/.*API token {token_id} was revoked"
    ):
        Workflow(func=wf, service=server.url, settings=_settings(tmp_path, token)).run()


def test_a_cancelled_workflow_raises_its_cancel_reason(server, tmp_path):
    token = server.token("alice")
    marks = tmp_path / "marks"
    errors: list[BaseException] = []

    def cancel_once_running() -> None:
        try:
            with server.client(token) as c:
                deadline = time.monotonic() + 60
                while not marks.exists() or not any(marks.iterdir()):
                    assert time.monotonic() < deadline, "no job started within 60 s"
                    time.sleep(0.05)
                [wf] = c.get("/api/v1/workflows").json()["data"]
                assert c.post(f"/api/v1/workflows/{wf['id']}/cancel").status_code == 200
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    def wf():
        return _squares(2, str(marks), 20.0)

    canceller = threading.Thread(target=cancel_once_running, daemon=True)
    canceller.start()
    started = time.monotonic()
    try:
        with pytest.raises(WorkflowFailedError, match="cancelled: cancelled by alice at") as got:
            Workflow(func=wf, service=server.url, settings=_settings(tmp_path, token)).run()
    finally:
        canceller.join(timeout=90)
    assert not errors, errors
    assert got.value.status == "cancelled"
    assert time.monotonic() - started < 20  # the running jobs were stopped, not waited for
    with server.client(token) as c:  # the cancel, not the client's report of it, is stored
        [stored] = c.get("/api/v1/workflows").json()["data"]
        works = c.get(f"/api/v1/workflows/{stored['id']}/works").json()["data"]
    assert (stored["status"], stored["error"]) == ("cancelled", "cancelled by alice")
    assert [w["status"] for w in works] == ["cancelled"]


REMOTE = """
    import os

    from tasklift import Workflow, work, workflow

    @work
    def square(x):
        return x * x

    @workflow
    def part(n):                      # a sub-workflow of the remote workflow
        return sum(square(group_kwargs=[{"x": i} for i in range(n)]))

    @workflow(name="campaign")
    def campaign(n):                  # decorated, as the README shows
        top = sum(square(group_kwargs=[{"x": i} for i in range(n)]))
        return {"top": top, "part": part(n + 1)}

    if __name__ == "__main__":
        wf = Workflow(campaign, service=os.environ["TASKLIFT_SERVICE"], remote=True)
        print("ID", wf.submit(3))
"""


def test_a_decorated_remote_workflow_runs_as_itself_with_its_sub_workflow(server, tmp_path):
    token = server.token("alice")
    project = tmp_path / "project"
    project.mkdir()
    (project / "campaign.py").write_text(textwrap.dedent(REMOTE))
    proc = subprocess.run(
        [sys.executable, str(project / "campaign.py")],
        env=server.env(token),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    wf_id = int(proc.stdout.split("ID ")[1])
    handle = Workflow.attach(wf_id, service=server.url, settings=_settings(tmp_path, token))
    assert handle.result(timeout=120) == {"top": 0 + 1 + 4, "part": 0 + 1 + 4 + 9}
    with server.client(token) as c:
        workflows = c.get("/api/v1/workflows").json()["data"]
        assert sorted(w["name"] for w in workflows) == ["campaign", "part"]
        assert {w["status"] for w in workflows} == {"finished"}, workflows
        dag = c.get(f"/api/v1/workflows/{wf_id}/dag").json()
        [child] = [w["id"] for w in workflows if w["name"] == "part"]
        assert dag["children"] == [child]
        assert [w["name"] for w in dag["works"]] == ["campaign", "square"]


OUTAGE_SECONDS = 4.0


def _outage(db_name: str, marks: Path, log: dict[str, float], errors: list[BaseException]) -> None:
    """Once two jobs run: refuse connections to the database, end the open ones, and allow
    connections again after OUTAGE_SECONDS."""
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        deadline = time.monotonic() + 60
        while not marks.exists() or len(list(marks.iterdir())) < 2:
            if time.monotonic() > deadline:
                raise AssertionError("no job started within 60 s")
            time.sleep(0.02)
        with admin.connect() as conn:
            try:
                conn.execute(sa.text(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS false'))
                log["killed"] = float(
                    conn.execute(
                        sa.text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = :d AND pid <> pg_backend_pid()"
                        ),
                        {"d": db_name},
                    ).scalar()
                    or 0
                )
                time.sleep(OUTAGE_SECONDS)
            finally:  # never leave the database closed, whatever happened
                conn.execute(sa.text(f'ALTER DATABASE "{db_name}" ALLOW_CONNECTIONS true'))
    except Exception as exc:  # noqa: BLE001 - handed to the test thread, which fails on it
        errors.append(exc)
    finally:
        admin.dispose()


def test_a_run_through_the_server_rides_out_a_database_outage(pg_url, tmp_path, capsys):
    srv = start_server(pg_url, tmp_path / "server-home")
    try:
        token = srv.token("alice")
        marks = tmp_path / "marks"
        log: dict[str, float] = {}
        errors: list[BaseException] = []
        db_name = pg_url.rsplit("/", 1)[1]
        outage = threading.Thread(target=_outage, args=(db_name, marks, log, errors), daemon=True)

        def wf():
            first = _squares(4, str(marks), 1.5)
            return first + _squares(2, str(tmp_path / "after"), 0.0)

        outage.start()
        try:
            run = Workflow(func=wf, service=srv.url, settings=_settings(tmp_path, token))
            out = run.run()
        finally:
            outage.join(timeout=90)
        assert not errors, errors
        assert log.get("killed", 0) >= 1, "the outage ended no connection of the server"
        assert out == [0, 1, 4, 9, 0, 1]
        with srv.client(token) as c:
            assert c.get(f"/api/v1/workflows/{run.workflow_id}").json()["status"] == "finished"
        err = capsys.readouterr().err
        said = [line for line in err.splitlines() if line.startswith("tasklift: the server")]
        assert len(said) == 2, err
        assert "is unavailable" in said[0] and "retrying" in said[0], said
        assert "answers again" in said[1], said
    finally:
        srv.stop()
