"""Two engines on one database share the work and never run a job twice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

SCRIPT = '''
    import os, pathlib, sys, time
    from tasklift import work, Workflow

    @work
    def step(x, marker):
        d = pathlib.Path(marker)
        d.mkdir(exist_ok=True)
        (d / f"{x}-{os.getppid()}").touch()   # the parent of a worker is its engine
        time.sleep(0.1)
        return x

    def wf(n, marker):
        return sum(step(marker=marker, group_kwargs=[{"x": i} for i in range(n)]))

    if __name__ == "__main__":
        print("RESULT", Workflow(func=wf, service=os.environ["TASKLIFT_SERVICE"]).run(
            int(sys.argv[1]), sys.argv[2]))
'''


def test_second_engine_takes_jobs_and_none_runs_twice(server, tmp_path: Path):
    env = dict(os.environ, TASKLIFT_HOME=str(tmp_path / "engine-home"),
               TASKLIFT_SCAN_INTERVAL="0.2", TASKLIFT_WORKERS="2",
               TASKLIFT_ARCHIVE_STORE=str(server.home / "archives"))
    log = (tmp_path / "engine.log").open("wb")
    engine = subprocess.Popen(
        [sys.executable, "-m", "tasklift.cli", "engine", "--db", server.db_url, "--name",
         "second"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        token = server.token("alice")
        (tmp_path / "p").mkdir()
        (tmp_path / "p" / "many.py").write_text(textwrap.dedent(SCRIPT))
        markers = tmp_path / "markers"
        markers.mkdir(mode=0o1777)  # jobs of each engine run under identities of its own
        markers.chmod(0o1777)
        proc = subprocess.run([sys.executable, str(tmp_path / "p" / "many.py"), "80",
                               str(markers)], env=server.env(token), capture_output=True,
                              text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split("RESULT ")[1].strip() == str(sum(range(80)))
        runs = [p.name.split("-") for p in markers.iterdir()]
        assert sorted(int(x) for x, _ in runs) == list(range(80))  # each job exactly once
        engines = {int(ppid) for _, ppid in runs}
        assert engines == {server.proc.pid, engine.pid}, (engines, server.proc.pid, engine.pid)
    finally:
        engine.terminate()
        engine.wait(timeout=20)
        log.close()
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200


def test_restarted_server_finishes_a_work(server, tmp_path: Path):
    from conftest import start_server

    token = server.token("alice")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "many.py").write_text(textwrap.dedent(SCRIPT))
    markers = tmp_path / "markers"
    markers.mkdir(mode=0o1777)  # the restarted server's jobs may run under another identity
    markers.chmod(0o1777)
    client = subprocess.Popen([sys.executable, str(tmp_path / "p" / "many.py"), "40",
                               str(markers)], env=server.env(token), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (markers.exists() and len(list(markers.iterdir())) >= 6):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    port = int(server.url.rsplit(":", 1)[1])
    server.stop()  # the client keeps polling; results wait in the database
    time.sleep(1)
    restarted = start_server(server.db_url, server.home, port=port)
    try:
        out, err = client.communicate(timeout=180)
        assert client.returncode == 0, err
        assert out.split("RESULT ")[1].strip() == str(sum(range(40)))
    finally:
        restarted.stop()
