"""The REST API against a real server process, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson

from job_holders import end_job, running_job
from tasklift import get_unique_id_for_dict

PROJECT = {
    "helpers.py": "def model(x, y):\n    return x * 10 + y\n",
    "campaign.py": '''
        import json, os, pathlib, sys
        from tasklift import work, Workflow, WorkFailed, get_unique_id_for_dict

        @work(map_results=True)
        def evaluate(x, y=0, scale=1.0):
            from helpers import model
            print("evaluating", x)
            return model(x, y) * scale

        @work(retries=0)
        def flaky(x, marker):
            m = pathlib.Path(marker) / str(x)
            if x % 3 == 0 and not m.exists():
                m.parent.mkdir(parents=True, exist_ok=True)
                m.touch()
                raise RuntimeError(f"first try of {x} fails")
            return x

        def optimize(n):
            points = [{"x": i, "y": i % 3} for i in range(n)]
            res = evaluate(scale=2.0, group_kwargs=points)
            out = {get_unique_id_for_dict(p): res.get_result(args=p) for p in points}
            failed = []
            try:
                flaky(group_kwargs=[{"x": i, "marker": sys.argv[2]} for i in range(7)])
            except WorkFailed as exc:
                failed = sorted(f.kwargs["x"] for f in exc.failures)
            return {"map": out, "failed": failed}

        if __name__ == "__main__":
            wf = Workflow(func=optimize, service=os.environ["TASKLIFT_SERVICE"])
            print("RESULT", json.dumps(wf.run(int(sys.argv[1]))))
            print("WORKFLOW", wf.workflow_id)
    ''',
}


def make_project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in PROJECT.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


def run_campaign(server, token: str, tmp_path: Path, n: int = 30):
    project = make_project(tmp_path / "proj")
    proc = subprocess.run(
        [sys.executable, str(project / "campaign.py"), str(n), str(tmp_path / "markers")],
        env=server.env(token), capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    return json.loads(lines["RESULT"]), int(lines["WORKFLOW"])


def test_workflow_runs_through_the_server_and_isolation_holds(server, tmp_path):
    alice, bob = server.token("alice"), server.token("bob")
    admin = server.token("root", admin=True)
    result, wf_id = run_campaign(server, alice, tmp_path)
    assert result["map"][get_unique_id_for_dict({"x": 4, "y": 1})] == 82.0
    assert len(result["map"]) == 30
    assert result["failed"] == [0, 3, 6]

    with server.client(alice) as c:
        wf = c.get(f"/api/v1/workflows/{wf_id}").json()
        assert (wf["owner"], wf["status"], wf["n_jobs"], wf["n_finished"]) == (
            "alice", "finished", 37, 34)
        assert wf["result"]["failed"] == [0, 3, 6]
        works = c.get(f"/api/v1/workflows/{wf_id}/works").json()["data"]
        assert [w["name"] for w in works] == ["evaluate", "flaky"]
        flaky_id = works[1]["id"]
        failed = c.get(f"/api/v1/works/{flaky_id}/jobs", params={"state": "failed"}).json()
        assert failed["count"] == 3
        job = c.get(f"/api/v1/jobs/{failed['data'][0]['id']}").json()
        assert job["error_type"] == "RuntimeError" and "first try of 0" in job["traceback"]
        assert job["kwargs"]["x"] == 0
        first_eval = c.get(f"/api/v1/works/{works[0]['id']}/jobs", params={"limit": 1}).json()
        logs = c.get(f"/api/v1/jobs/{first_eval['data'][0]['id']}/logs").json()
        assert logs["stdout"] == "evaluating 0\n"

        # retry failed jobs only: the three failures now succeed, the rest are untouched
        before = {j["id"]: j["attempts"] for j in
                  c.get(f"/api/v1/works/{flaky_id}/jobs").json()["data"]}
        assert c.post(f"/api/v1/works/{flaky_id}/retry").status_code == 200
        deadline = time.monotonic() + 60
        while c.get(f"/api/v1/works/{flaky_id}").json()["status"] != "finished":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        after = c.get(f"/api/v1/works/{flaky_id}/jobs").json()["data"]
        assert all(j["state"] == "finished" for j in after)
        assert {j["id"]: j["attempts"] for j in after if j["kwargs"]["x"] % 3} == {
            k: v for k, v in before.items() if k not in {j["id"] for j in failed["data"]}}
        # the results stream numbers every end: the retried jobs come after the first 7
        page = c.get(f"/api/v1/works/{flaky_id}/results", params={"since": 7}).json()
        assert sorted(r["idx"] for r in page["data"]) == [0, 3, 6]
        assert page["done"] and page["cursor"] == 10

    with server.client(bob) as c:
        for path in (f"/api/v1/workflows/{wf_id}", f"/api/v1/works/{flaky_id}",
                     f"/api/v1/works/{flaky_id}/jobs", f"/api/v1/jobs/{job['id']}"):
            assert c.get(path).status_code == 404, path
        assert c.post(f"/api/v1/works/{flaky_id}/cancel").status_code == 404
        assert c.get("/api/v1/workflows").json()["count"] == 0
    with server.client(admin) as c:
        listing = c.get("/api/v1/workflows", params={"owner": "alice"}).json()
        assert listing["count"] == 1 and listing["data"][0]["id"] == wf_id
    with server.client(None) as c:
        response = c.get(f"/api/v1/workflows/{wf_id}")
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    with server.client("tl_1_not-a-real-secret") as c:
        assert c.get("/api/v1/workflows").status_code == 401


def test_bulk_work_results_cursor_and_bad_input(server):
    alice = server.token("alice")
    with server.client(alice) as c:
        wf = c.post("/api/v1/workflows", json={"name": "bulk", "function": "m:f"}).json()

        def job(i):
            payload = orjson.dumps({"kwargs": {"x": i}})
            return {"key": get_unique_id_for_dict({"x": i}),
                    "payload": base64.b64encode(payload).decode()}

        # a function nobody can import: every job fails fast, which is all we need here
        body = {"workflow_id": wf["id"], "name": "bulk", "function": "no_such_module:f",
                "retries": 0, "jobs": [job(i) for i in range(500)]}
        created = c.post("/api/v1/works", json=body)
        assert created.status_code == 201, created.text
        work = created.json()
        assert work["n_jobs"] == 500

        seen, cursor = [], 0
        deadline = time.monotonic() + 120
        while True:
            page = c.get(f"/api/v1/works/{work['id']}/results",
                         params={"since": cursor, "limit": 64, "wait": 5}).json()
            seen += [r["done_seq"] for r in page["data"]]
            cursor = page["cursor"]
            if page["done"]:
                break
            assert time.monotonic() < deadline
        assert seen == list(range(1, 501))  # re-attaching by cursor misses nothing
        failed = c.get(f"/api/v1/works/{work['id']}/jobs", params={"state": "failed",
                                                                 "limit": 1}).json()
        assert failed["count"] == 500
        assert "no_such_module" in failed["data"][0]["error_message"]

        # bad input: 4xx with a message, nothing stored
        n_works = len(c.get(f"/api/v1/workflows/{wf['id']}/works").json()["data"])
        bad = [
            c.post("/api/v1/works", content=b"{not json",
                   headers={"Content-Type": "application/json"}),
            c.post("/api/v1/works", json={**body, "jobs": "nope"}),
            c.post("/api/v1/works", json={**body, "jobs": [job(1), job(1)]}),
            c.post("/api/v1/works", json={**body, "workflow_id": 999_999}),
            c.post("/api/v1/works", json={**body, "jobs": [{"key": "x", "payload": "e30="}]}),
            c.post("/api/v1/works", json={**body, "jobs": [{**job(1), "payload": "!!"}]}),
            c.get("/api/v1/works/999999"),
            c.get("/api/v1/jobs/999999/logs"),
            c.post("/api/v1/workflows", json={"name": "", "function": "m:f"}),
        ]
        codes = [r.status_code for r in bad]
        assert codes == [422, 422, 422, 404, 422, 422, 404, 404, 422]
        assert all(r.json().get("detail") for r in bad)
        assert "repeats key" in bad[2].json()["detail"]
        assert len(c.get(f"/api/v1/workflows/{wf['id']}/works").json()["data"]) == n_works

        # the server keeps the workflow's owner in memory now: another user is still refused
        with server.client(server.token("mallory")) as m:
            assert m.post("/api/v1/works", json=body).status_code == 404
        # an ended workflow takes no new works (checked by the store transaction itself)
        finished = c.post(f"/api/v1/workflows/{wf['id']}/finish",
                          json={"status": "finished", "result": None})
        assert finished.status_code == 200, finished.text
        late = c.post("/api/v1/works", json={**body, "jobs": [job(7)]})
        assert late.status_code == 422 and "is finished: no new works" in late.json()["detail"]
        late = c.post("/api/v1/works", params={"wait": 5}, json={**body, "jobs": [job(8)]})
        assert late.status_code == 422 and "no new works" in late.json()["detail"]
        assert len(c.get(f"/api/v1/workflows/{wf['id']}/works").json()["data"]) == n_works


def test_server_refuses_an_out_of_date_schema(tmp_path):
    db = f"sqlite:///{tmp_path / 'old.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "tasklift.cli", "server", "--db", db, "--port", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "tasklift db upgrade" in proc.stderr


REMOTE = '''
    import os, sys, time
    from tasklift import work, Workflow

    @work
    def square(x):
        return x * x

    def campaign(n, offset=0):
        total = 0
        for it in range(2):                  # steering logic runs on the server side
            total += sum(square(group_kwargs=[{"x": i + offset + it} for i in range(n)]))
        return {"total": total, "pid": os.getpid()}

    if __name__ == "__main__":
        wf = Workflow(func=campaign, service=os.environ["TASKLIFT_SERVICE"], remote=True)
        print("ID", wf.submit(4, offset=10))
'''


def test_remote_workflow_runs_on_the_server_and_can_be_reattached(server, tmp_path):
    from tasklift import Workflow
    from tasklift.settings import Settings

    token = server.token("alice")
    project = tmp_path / "remote"
    project.mkdir()
    (project / "remote.py").write_text(textwrap.dedent(REMOTE))
    proc = subprocess.run([sys.executable, str(project / "remote.py")], env=server.env(token),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    wf_id = int(proc.stdout.split("ID ")[1])
    # the submitting process is gone; a new client re-attaches by id
    settings = Settings(token=token, home=tmp_path / "other-client", quiet=True)
    result = Workflow.attach(wf_id, service=server.url, settings=settings).result(timeout=120)
    expected = sum((i + 10) ** 2 for i in range(4)) + sum((i + 11) ** 2 for i in range(4))
    assert result["total"] == expected
    assert result["pid"] != os.getpid()  # the function ran in a server-side job runner
    with server.client(token) as c:
        works = c.get(f"/api/v1/workflows/{wf_id}/works").json()["data"]
        assert [w["name"] for w in works] == ["campaign", "square", "square"]
        assert c.get(f"/api/v1/workflows/{wf_id}").json()["status"] == "finished"
    waited = subprocess.run([sys.executable, "-m", "tasklift.cli", "wait", str(wf_id)],
                            env=server.env(token), capture_output=True, text=True, timeout=60)
    assert json.loads(waited.stdout)["total"] == expected


def test_job_tokens_are_scoped(server):
    from tasklift.db.session import create_db_engine
    from tasklift.service.auth import Authenticator

    alice = server.token("alice")
    with server.client(alice) as c:
        mine = c.post("/api/v1/workflows", json={"name": "a", "function": "m:f"}).json()
        other = c.post("/api/v1/workflows", json={"name": "b", "function": "m:f"}).json()
    db = create_db_engine(server.db_url)
    auth = Authenticator(db=db, settings=server.settings())
    _, work_id, job_id, attempt = running_job(db, workflow_id=mine["id"])
    holder = (job_id, attempt)
    runner = auth.issue_job_token(user="alice", workflow_id=mine["id"], holder=holder)
    work_scoped = auth.issue_job_token(
        user="alice", workflow_id=mine["id"], work_id=work_id, holder=holder
    )
    db.dispose()
    with server.client(runner) as c:
        assert c.get(f"/api/v1/workflows/{mine['id']}").status_code == 200
        assert c.get(f"/api/v1/workflows/{other['id']}").status_code == 403
        assert c.get("/api/v1/workflows").status_code == 403
        assert c.post("/api/v1/workflows", json={"name": "x", "function": "m:f"}).status_code == 403
    with server.client(work_scoped) as c:
        assert c.get(f"/api/v1/workflows/{mine['id']}").status_code == 403


def test_job_runner_endpoints_are_for_the_jobs_own_token(server):
    from tasklift.db.session import create_db_engine
    from tasklift.service.auth import Authenticator

    alice = server.token("alice")
    with server.client(alice) as c:
        wf = c.post("/api/v1/workflows", json={"name": "r", "function": "m:f"}).json()
        payload = base64.b64encode(orjson.dumps({"kwargs": {"x": 1}})).decode()
        work = c.post("/api/v1/works", json={
            "workflow_id": wf["id"], "name": "w", "function": "no_such_module:f", "retries": 0,
            "jobs": [{"key": get_unique_id_for_dict({"x": i}), "payload": payload}
                     for i in range(2)]}).json()
        jobs = c.get(f"/api/v1/works/{work['id']}/jobs").json()["data"]
        # a user token cannot act as a job runner
        assert c.get(f"/api/v1/jobs/{jobs[0]['id']}/spec").status_code == 403
        deadline = time.monotonic() + 60  # the local backend runs (and fails) both jobs
        while c.get(f"/api/v1/works/{work['id']}").json()["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    db = create_db_engine(server.db_url)
    auth = Authenticator(db=db, settings=server.settings())
    # a job the engine does not run (stored running by hand) holds the token while it lives
    _, held_work, held, attempt = running_job(db, workflow_id=wf["id"])
    mine = auth.issue_job_token(user="alice", workflow_id=wf["id"], work_id=held_work,
                                job_id=held, holder=(held, attempt))
    ended = auth.issue_job_token(user="alice", workflow_id=wf["id"], work_id=work["id"],
                                 job_id=jobs[0]["id"], holder=(jobs[0]["id"], 1))
    with server.client(mine) as c:
        spec = c.get(f"/api/v1/jobs/{held}/spec").json()
        assert spec["function"] == "m:f"
        assert orjson.loads(base64.b64decode(spec["payload"])) == {}
        assert c.post(f"/api/v1/jobs/{held}/heartbeat").status_code == 204
        assert c.get(f"/api/v1/jobs/{jobs[1]['id']}/spec").status_code == 403  # not its job
        assert c.post(f"/api/v1/jobs/{jobs[1]['id']}/heartbeat").status_code == 403
        assert c.get(f"/api/v1/workflows/{wf['id']}").status_code == 403  # nothing else
        assert c.get(f"/api/v1/works/{work['id']}/jobs").status_code == 403
        # the engine does not run this job: a report is refused
        late = c.post(f"/api/v1/jobs/{held}/outcome",
                      json={"attempt": 1, "ok": True, "result": "MQ=="})
        assert late.status_code == 409
        end_job(db, held)
        gone = c.get(f"/api/v1/jobs/{held}/spec")
        assert gone.status_code == 401 and "has ended" in gone.json()["detail"]
    with server.client(ended) as c:  # the local backend ran (and failed) jobs[0]: token dead
        assert c.get(f"/api/v1/jobs/{jobs[0]['id']}/spec").status_code == 401
    db.dispose()
