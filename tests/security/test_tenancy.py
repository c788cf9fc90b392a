"""Attacks from inside a job on a shared server: every row of issue 17's table must fail.

A real `tasklift server` (SQLite and PostgreSQL) with two users, alice and bob, whose jobs run
under leased runner identities. Bob's job code is the attacker: it reads /proc, the server's
home and key, alice's workers and caches; it rewrites its own worker, forges frames on its pipe
(another user's outcomes, a pickle that runs code), and uses its job token beyond its scope and
after its job ended. Alice's results must stay right and the server's secrets unread.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import runner_identities
from tasklift.service.auth import server_key

pytestmark = pytest.mark.slow

if not runner_identities.can_switch_identity():  # pragma: no cover - CI runs as root
    if os.environ.get("CI"):
        raise RuntimeError("the tenancy tests need root (runner identities) in CI")
    pytest.skip(
        "runner identities need root: the tenancy attacks cannot run", allow_module_level=True
    )

CANARY = "tasklift-canary-" + secrets.token_hex(8)
"""Stands for every secret in the server's environment (database password, broker password)."""

ALICE = """
    import json, sys
    from tasklift import Workflow, work, workflow

    @work
    def square(x):
        from helpers import offset          # lazy import from the archive (README pattern)
        return x * x + offset()

    @workflow
    def campaign(n):
        return square(group_kwargs=[{"x": i} for i in range(n)])

    if __name__ == "__main__":
        fresh = len(sys.argv) > 1 and sys.argv[1] == "fresh"
        print("RESULT " + json.dumps(Workflow(func=campaign, fresh=fresh).run(6)))
"""

BOB = """
    import json, os, pickle, stat, struct, subprocess, sys
    from tasklift import Workflow, work, workflow

    def attempt(what, fn):
        try:
            fn()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"refused: {type(exc).__name__}"
        return f"DONE {what}"

    def read(path):
        with open(path, "rb") as handle:
            return handle.read()

    @work
    def probe(server_home, server_pid, canary_file, db_file, runner_dir):
        canary = open(canary_file).read()  # never on a command line itself
        found = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
        found["env_secrets"] = sorted(k for k in os.environ
                                      if k in ("TASKLIFT_DB_URL", "TASKLIFT_BUS",
                                               "TASKLIFT_SECRET_KEY", "TASKLIFT_TOKEN"))
        found["canary_in_env"] = any(canary in v for v in os.environ.values())
        # row 1: the server's command line and environment, and every process's
        leaks = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            for part in ("cmdline", "environ"):
                try:
                    if canary.encode() in read(f"/proc/{pid}/{part}"):
                        leaks.append(f"{pid}/{part}")
                except OSError:
                    pass
        found["canary_leaks"] = leaks
        found["server_environ"] = attempt("read server environ",
                                          lambda: read(f"/proc/{server_pid}/environ"))
        # row 1: become admin through the database
        found["db_read"] = attempt("read the database", lambda: read(db_file))
        proc = subprocess.run([sys.executable, "-m", "tasklift.cli", "--db", f"sqlite:///{db_file}",
                               "token", "create", "--user", "mallory", "--admin"],
                              capture_output=True, text=True, timeout=60)
        found["token_create"] = proc.returncode
        # row 2: the server key; row 3 and 6: the server's archives and caches
        found["server_key"] = attempt("read server.key", lambda: read(f"{server_home}/server.key"))
        found["server_home_list"] = attempt("list server home", lambda: os.listdir(server_home))
        found["cache_write"] = attempt(
            "write into the cache",
            lambda: open(f"{server_home}/cache/evil.py", "w").close())
        found["runner_dir_list"] = attempt("list runner homes", lambda: os.listdir(runner_dir))
        home = os.environ["HOME"]
        found["home_private"] = (stat.S_IMODE(os.stat(home).st_mode) == 0o700
                                 and os.stat(home).st_uid == os.getuid()
                                 and not home.startswith(server_home))
        found["tmp_private"] = os.environ["TMPDIR"].startswith(home)
        # other users' workers: their memory, environment, files, signals
        foreign = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/status") as handle:
                    uid = int(next(l for l in handle if l.startswith("Uid:")).split()[1])
                cmdline = read(f"/proc/{pid}/cmdline")
            except (OSError, StopIteration):
                continue
            if b"tasklift.runner" in cmdline and uid != os.getuid():
                foreign.append({
                    "environ": attempt("environ", lambda: read(f"/proc/{pid}/environ")),
                    "cwd": attempt("cwd", lambda: os.listdir(f"/proc/{pid}/cwd")),
                    "mem": attempt("mem", lambda: read(f"/proc/{pid}/mem")),
                    "signal": attempt("signal", lambda: os.kill(int(pid), 0)),
                })
        found["foreign_workers"] = foreign
        return found

    @work
    def hijack(marker):
        # row 4: replace the worker's own functions (it serves bob alone: only bob is hit)
        import tasklift.runner.execute as execute
        import tasklift.runner.worker as worker
        execute.run_job = lambda *a, **k: None
        worker.execute = execute.run_job
        # row 5: forge frames on the worker's pipe to the server: another job's outcomes
        # (ids 1..300), then a pickle that would run a command in the server's process
        from tasklift.records import Outcome
        from tasklift.runner.protocol import Done, encode

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        forged = [Outcome(i, a, ok=True, result=b"666") for i in range(1, 300) for a in (1, 2)]
        frames = [encode(Done(forged)), encode(Done([Evil()]))]
        written = 0
        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    for frame in frames:
                        os.write(fd, frame)
                        written += 1
            except OSError:
                pass
        return written

    @workflow
    def attack(mode, *args):
        if mode == "probe":
            return probe(server_home=args[0], server_pid=args[1], canary_file=args[2],
                         db_file=args[3], runner_dir=args[4])
        return hijack(marker=args[0])

    if __name__ == "__main__":
        try:
            print("RESULT " + json.dumps(Workflow(func=attack).run(*sys.argv[1:])))
        except Exception as exc:
            print("FAILED " + json.dumps(f"{type(exc).__name__}: {exc}"))
"""


def _project(root: Path, main: str, offset: int = 0) -> Path:
    root.mkdir(parents=True)
    (root / "main.py").write_text(textwrap.dedent(main))
    (root / "helpers.py").write_text(f"def offset():\n    return {offset}\n")
    return root


def _run(server, token: str, project: Path, *args: str) -> object:
    proc = subprocess.run(
        [sys.executable, str(project / "main.py"), *args],
        env=server.env(token),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=project,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in proc.stdout.splitlines():
        kind, _, value = line.partition(" ")
        if kind in ("RESULT", "FAILED"):
            return {kind: json.loads(value)}
    raise AssertionError(f"no result line: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")


@pytest.fixture
def shared_server(db_url: str, tmp_path: Path, launch_server) -> Iterator[object]:
    """A server with a secret in its environment and its key in its home."""
    home = tmp_path / "server-home"
    if db_url.startswith("sqlite"):  # the default place of a server's SQLite database
        home.mkdir()
        db_url = f"sqlite:///{home / 'tasklift.db'}"
    srv = launch_server(db_url, home, extra_env={"TASKLIFT_CANARY": CANARY})
    yield srv
    srv.stop()


def _runner_dir(server) -> str:
    return str(Path(tempfile.gettempdir()) / f"tasklift-runners-{os.getuid()}")


def test_a_job_reaches_no_secret_no_server_file_and_no_other_users_process(
    shared_server, tmp_path: Path
) -> None:
    server = shared_server
    alice, bob = server.token("alice"), server.token("bob")
    # alice's workers stay up (idle) while bob's job looks around
    good = _run(server, alice, _project(tmp_path / "alice", ALICE, offset=1))
    assert good == {"RESULT": [i * i + 1 for i in range(6)]}
    auth_key = server.home / "server.key"
    server_key(server.settings())  # the key the server signs job tokens with, in its home
    db_file = server.home / "tasklift.db"
    canary_file = tmp_path / "canary.txt"
    canary_file.write_text(CANARY)
    found = _run(
        server,
        bob,
        _project(tmp_path / "bob", BOB),
        "probe",
        str(server.home),
        str(server.proc.pid),
        str(canary_file),
        str(db_file),
        _runner_dir(server),
    )["RESULT"]
    assert found["uid"] not in (0, os.getuid()) and found["gid"] != 0 and found["groups"] == []
    assert found["env_secrets"] == [] and not found["canary_in_env"]
    assert found["canary_leaks"] == []  # row 1: no secret in any readable cmdline/environ
    assert found["server_environ"].startswith("refused")
    assert found["db_read"].startswith("refused")  # row 1: no way into the database
    assert found["token_create"] != 0
    assert found["server_key"].startswith("refused")  # row 2
    assert found["server_home_list"].startswith("refused")  # row 3
    assert found["cache_write"].startswith("refused")  # row 6
    assert found["runner_dir_list"].startswith("refused")
    assert found["home_private"] and found["tmp_private"]
    assert found["foreign_workers"], "alice's idle workers should have been visible"
    for worker in found["foreign_workers"]:  # rows 3-4: alice's workers are out of reach
        assert all(v.startswith("refused") for v in worker.values()), worker
    with server.client(server.token("root", admin=True)) as c:
        users = {w["owner"] for w in c.get("/api/v1/workflows").json()["data"]}
    assert "mallory" not in users
    assert auth_key.exists() and auth_key.stat().st_mode & 0o077 == 0


def test_a_job_that_rewrites_its_worker_and_forges_frames_changes_nothing_of_alices(
    shared_server, tmp_path: Path
) -> None:
    server = shared_server
    alice, bob = server.token("alice"), server.token("bob")
    alice_project = _project(tmp_path / "alice", ALICE, offset=10)
    assert _run(server, alice, alice_project) == {"RESULT": [i * i + 10 for i in range(6)]}
    marker = tmp_path / f"pwned-{secrets.token_hex(4)}"
    hijacked = _run(server, bob, _project(tmp_path / "bob", BOB), "hijack", str(marker))
    # the evil frame got bob's worker killed (his job failed, or kept the value he forged for
    # it); the server ran no code of his
    assert "WorkerLost" in hijacked.get("FAILED", "") or hijacked == {"RESULT": 666}, hijacked
    assert not marker.exists()
    assert server.proc.poll() is None
    # rows 4-6: alice's next runs (reused and fresh) return her own values
    assert _run(server, alice, alice_project) == {"RESULT": [i * i + 10 for i in range(6)]}
    assert _run(server, alice, alice_project, "fresh") == {"RESULT": [i * i + 10 for i in range(6)]}
    with server.client(alice) as c:
        for wf in c.get("/api/v1/workflows").json()["data"]:
            for work in c.get(f"/api/v1/workflows/{wf['id']}/works").json()["data"]:
                jobs = c.get(f"/api/v1/works/{work['id']}/jobs").json()["data"]
                assert all(j["state"] == "finished" for j in jobs)


REMOTE = """
    import json, sys, time
    from pathlib import Path
    from tasklift import Workflow, work, workflow, _context

    @work
    def one(x):
        return x

    @workflow
    def steal(out, victim):
        import httpx
        service = _context.current_workflow.get().engine
        token = service._client.headers["Authorization"].split(" ", 1)[1]  # what an attacker finds
        Path(out).write_text(token)
        tried = {}
        with httpx.Client(base_url=service.url, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            tried["read"] = c.get(f"/api/v1/workflows/{victim}").status_code
            tried["child"] = c.post("/api/v1/workflows", json={
                "name": "x", "function": "m:f", "parent_id": victim}).status_code
            tried["cancel"] = c.post(f"/api/v1/workflows/{victim}/cancel").status_code
            tried["list"] = c.get("/api/v1/workflows").status_code
            tried["token"] = c.post("/api/v1/tokens", json={"user": "bob"}).status_code
        Path(out + ".tried").write_text(json.dumps(tried))
        return one(x=1)

    if __name__ == "__main__":
        print("RESULT " + json.dumps(
            Workflow(func=steal, remote=True).submit(sys.argv[1], int(sys.argv[2]))))
"""


def test_job_tokens_stay_in_scope_and_die_with_their_job(shared_server, tmp_path: Path) -> None:
    server = shared_server
    alice, bob = server.token("alice"), server.token("bob")
    with server.client(alice) as c:
        victim = c.post("/api/v1/workflows", json={"name": "v", "function": "m:f"}).json()
    out = tmp_path / "stolen-token"
    before = _count_workflows(server)
    workflow_id = _run(
        server, bob, _project(tmp_path / "bob", REMOTE), str(out), str(victim["id"])
    )["RESULT"]
    with server.client(bob) as c:
        deadline = time.monotonic() + 120
        while (wf := c.get(f"/api/v1/workflows/{workflow_id}").json())["status"] == "running":
            assert time.monotonic() < deadline, wf
            time.sleep(0.2)
        assert wf["status"] == "finished", (wf.get("error") or "")[-1500:]
    tried = json.loads(Path(str(out) + ".tried").read_text())
    # while it ran, the token reached nothing outside its workflow, and created nothing
    assert tried["read"] == 404 and tried["cancel"] in (403, 404), tried
    assert tried["child"] in (403, 404) and tried["list"] == 403, tried
    assert tried["token"] in (403, 404, 405), tried
    assert _count_workflows(server) == before + 1  # bob's workflow alone
    with server.client(alice) as c:
        assert c.get(f"/api/v1/workflows/{victim['id']}").json()["status"] == "running"
    token = out.read_text()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        # the job ended: its token is refused for everything, its own workflow included
        own = c.get(f"/api/v1/workflows/{workflow_id}")
        assert own.status_code == 401 and "has ended" in own.json()["detail"]
        child = c.post(
            "/api/v1/workflows", json={"name": "x", "function": "m:f", "parent_id": workflow_id}
        )
        assert child.status_code == 401
        assert c.post(f"/api/v1/workflows/{victim['id']}/cancel").status_code == 401
        assert _count_workflows(server) == before + 1  # a refused request created nothing


def _count_workflows(server) -> int:
    with server.client(server.token("root", admin=True)) as c:
        return int(c.get("/api/v1/workflows", params={"limit": 1}).json()["count"])


LEFTOVER = """
    import json, os, subprocess, sys
    from tasklift import Workflow, work, workflow

    @work
    def visit(plant, mark):
        found = 0
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and mark.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                    found += 1
            except OSError:
                pass
        if plant:  # a daemon that outlives the job, as a careless (or hostile) job leaves
            subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(600)  # {mark}"],
                             start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        return {"uid": os.getuid(), "home": os.environ["HOME"], "found": found}

    @workflow
    def go(plant, mark):
        return visit(plant=plant, mark=mark)

    if __name__ == "__main__":
        mark = "tasklift-leftover-" + sys.argv[2]
        print("RESULT " + json.dumps(Workflow(func=go).run(sys.argv[1] == "plant", mark)))
"""


def test_one_identity_serves_users_in_turn_and_nothing_of_one_reaches_the_next(
    db_url: str, tmp_path: Path, launch_server
) -> None:
    single = runner_identities.next_range().split("-")[0]
    server = launch_server(
        db_url, tmp_path / "server-home", extra_env={"TASKLIFT_RUNNER_USER": single}
    )
    try:
        alice, bob = server.token("alice"), server.token("bob")
        mark = secrets.token_hex(4)
        project = _project(tmp_path / "p", LEFTOVER)
        first = _run(server, alice, project, "plant", mark)["RESULT"]
        assert first["uid"] == int(single)
        # bob waits for the one identity: alice's idle workers end, her lease with them
        second = _run(server, bob, project, "look", mark)["RESULT"]
        assert second["uid"] == int(single)
        assert second["found"] == 0  # alice's daemon was killed with her lease
        assert second["home"] != first["home"] and not Path(first["home"]).exists()
    finally:
        server.stop()
