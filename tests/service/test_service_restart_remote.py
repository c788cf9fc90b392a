"""Nothing lost when the service restarts under running remote jobs (issue 4, case 2).

A `tasklift server` on PostgreSQL with the STOMP bus runs a work on a backend whose job runners
live outside it (real ``python -m tasklift.runner job`` processes, see
tests/integration/process_backend.py, configured as a site's own backend class). The server is
stopped mid-work: the runners keep running, retry posting their outcomes with backoff and spool
them to disk; the restarted server adopts the still-running jobs, takes the outcomes, and the
waiting client gets every result exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO, free_port, start_server

pytestmark = pytest.mark.stomp

SCRIPT = '''
    import os, pathlib, sys, time
    from tasklift import work, Workflow

    @work(retries=0)
    def step(x, marker):
        d = pathlib.Path(marker)
        d.mkdir(exist_ok=True)
        (d / f"{x}-{os.getpid()}").touch()
        time.sleep(3.0)
        return x * 10

    def wf(n, marker):
        return step(marker=marker, group_kwargs=[{"x": i} for i in range(n)])

    if __name__ == "__main__":
        out = Workflow(func=wf, service=os.environ["TASKLIFT_SERVICE"], backend="proc").run(
            int(sys.argv[1]), sys.argv[2])
        print("RESULT", out)
'''


def test_runners_outlive_a_service_restart_and_nothing_is_lost(pg_url, stomp_url, tmp_path):
    home = tmp_path / "server-home"
    backends = {"proc": {"type": "process_backend:ProcessBackend",
                         "home": str(tmp_path / "runner-home")}}
    env = {
        "TASKLIFT_BACKENDS": json.dumps(backends),
        "TASKLIFT_BUS": stomp_url,
        "TASKLIFT_MONITOR_INTERVAL": "0.5",
        "TASKLIFT_HEARTBEAT_INTERVAL": "1",
        "TASKLIFT_HEARTBEAT_TIMEOUT": "30",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "integration"), str(REPO / "src")]),
    }
    port = free_port()
    server = start_server(pg_url, home, port=port, extra_env=env)
    token = server.token("alice")
    project = tmp_path / "p"
    project.mkdir()
    (project / "campaign.py").write_text(textwrap.dedent(SCRIPT))
    markers = tmp_path / "markers"
    n = 6
    client = subprocess.Popen([sys.executable, str(project / "campaign.py"), str(n),
                               str(markers)], env=server.env(token), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    restarted = None
    try:
        deadline = time.monotonic() + 60
        while not (markers.exists() and len(list(markers.iterdir())) >= n):
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "the runners did not start"
            time.sleep(0.05)
        server.stop()  # every job is running: their outcomes arrive while the service is away
        time.sleep(4.0)
        spooled = list((tmp_path / "runner-home" / "spool").glob("*.json"))
        restarted = start_server(pg_url, home, port=port, extra_env=env)
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        assert out.split("RESULT ")[1].strip() == str([i * 10 for i in range(n)])
    finally:
        if client.poll() is None:
            client.kill()
        if restarted is not None:
            restarted.stop()
        server.stop()
    runs = sorted(p.name.split("-")[0] for p in markers.iterdir())
    assert runs == sorted(str(i) for i in range(n)), "a job ran twice or not at all"
    assert spooled, "the runners should have spooled their outcomes while the service was away"
    assert not list((tmp_path / "runner-home" / "spool").glob("*.json")), "spool not drained"
