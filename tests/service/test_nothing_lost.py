"""Nothing is lost through `tasklift server` with the STOMP bus (real RabbitMQ): a SIGKILLed
worker, a broker stopped and started mid-work, a SIGKILLed client that re-attaches (remote
workflow) or is re-run (resume by memo key).

Clients long-poll the server and never talk to the broker; the server's bus subscription is
what drops and comes back. Runs are counted with the marker files of ``lostfns.tracked``
(tests/integration/lostfns.py, copied into each client project).
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from stomp_broker import broker_stopped

pytestmark = [pytest.mark.stomp, pytest.mark.slow]


def _load(name: str, path: Path) -> ModuleType:
    """Import a helper by path (``from conftest import`` finds tests/bus's when both run)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


HERE = Path(__file__).resolve().parent
LOSTFNS = HERE.parent / "integration" / "lostfns.py"
lostfns = _load("lostfns", LOSTFNS)  # the same counting helpers as the embedded tests
_service = _load("tasklift_service_fixtures", HERE / "conftest.py")
Server, start_server = _service.Server, _service.start_server

CAMPAIGN = '''
    import json, os, sys
    from pathlib import Path
    from tasklift import Workflow, work
    from lostfns import tracked

    def one_work(n, marks, hold=(), gate=None, delay=0.05):
        """One work of n jobs; announces its id, waits, returns the results."""
        w = tracked(marks=marks, delay=delay, return_work=True, group_kwargs=[
            {"x": i, "hold": i in hold, "gate": gate if i >= 2 else None} for i in range(n)])
        print("WORK", w.work_id, flush=True)
        values = w.results(timeout=120)
        print("RESULTS", json.dumps(values), flush=True)
        return values

    def kill_worker(n, marks):
        return one_work(n, marks, hold=(3,))

    def broker_restart(n, marks, gate1, gate2):
        first = one_work(n, marks + "-1", gate=gate1)
        second = one_work(n, marks + "-2", gate=gate2)
        return [first, second]

    def resumable(n, marks):
        return one_work(n, marks, delay=0.15)

    def stages(n, marks):
        a = tracked(marks=marks + "-a", delay=0.1, group_kwargs=[{"x": i} for i in range(n)])
        b = tracked(marks=marks + "-b", delay=0.1, group_kwargs=[{"x": i} for i in range(n)])
        return {"a": a, "b": b, "pid": os.getpid()}

    @work
    def job_environment():
        return dict(os.environ)

    def environment():
        return job_environment()

    if __name__ == "__main__":
        what, args = sys.argv[1], json.loads(sys.argv[2])
        service = os.environ["TASKLIFT_SERVICE"]
        if what == "remote":
            wf = Workflow(func=stages, service=service, remote=True)
            wid = wf.submit(*args)
            print("WORKFLOW", wid, flush=True)
            result = Workflow.attach(wid, service=service).result(timeout=300)
        else:
            wf = Workflow(func=globals()[what], service=service)
            result = wf.run(*args)
        print("RESULT", json.dumps(result), flush=True)
'''


SERVER_KEY = "server-signing-key-for-job-tokens"


class Client:
    """A client script in a subprocess whose stdout lines are read with timeouts."""

    def __init__(self, server: Server, token: str, project: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(project / "campaign.py"), *args], env=server.env(token),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._err: list[str] = []
        self._pumps = [threading.Thread(target=self._pump, daemon=True),
                       threading.Thread(target=self._pump_err, daemon=True)]
        for pump in self._pumps:
            pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        self._err.extend(self.proc.stderr)

    def expect(self, word: str, timeout: float = 60) -> str:
        """The rest of the next line that starts with ``word``."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {word!r} line within {timeout:g} s") from None
            if line is None:
                raise AssertionError(f"client ended before {word!r}:\n{''.join(self._err)}")
            if line.startswith(word + " "):
                return line[len(word) + 1:]

    def finish(self, timeout: float = 120) -> None:
        assert self.proc.wait(timeout=timeout) == 0, "".join(self._err)

    def kill(self) -> None:
        """SIGKILL the client (unless it ended) and close its pipes."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        for pump in self._pumps:
            pump.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def stomp_server(tmp_path: Path, stomp_url: str) -> Iterator[Server]:
    """A server whose bus is the STOMP broker (the URL goes in through its environment)."""
    server = start_server(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "server-home",
                          extra_env={"TASKLIFT_BUS": stomp_url,
                                     "TASKLIFT_SECRET_KEY": SERVER_KEY})
    try:
        yield server
    finally:
        server.stop()
    assert "guest:guest" not in server.log.read_text()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(LOSTFNS, root)
    (root / "campaign.py").write_text(textwrap.dedent(CAMPAIGN))
    return root


def children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def check_result_stream(server: Server, token: str, work_id: int, n: int) -> list[dict]:
    """The work's results as the API serves them: n ends, one per job, cursor 1..n."""
    with server.client(token) as c:
        page = c.get(f"/api/v1/works/{work_id}/results", params={"since": 0}).json()
        jobs = c.get(f"/api/v1/works/{work_id}/jobs", params={"limit": 1000}).json()["data"]
    assert page["done"] and page["cursor"] == n
    assert sorted(r["done_seq"] for r in page["data"]) == list(range(1, n + 1))
    assert sorted(r["idx"] for r in page["data"]) == list(range(n))
    assert len({r["job_id"] for r in page["data"]}) == n
    assert {j["state"] for j in jobs} == {"finished"}
    return jobs


def test_sigkilled_worker_of_the_server_job_is_retried(stomp_server, project, tmp_path):
    token = stomp_server.token("alice")
    marks, n, victim = str(tmp_path / "marks"), 8, 3
    client = Client(stomp_server, token, project, "kill_worker", f"[{n}, \"{marks}\"]")
    try:
        work_id = int(client.expect("WORK"))
        pid = lostfns.held_pid(marks, victim)
        assert pid in children(stomp_server.proc.pid)  # a worker of the server
        os.kill(pid, signal.SIGKILL)
        assert client.expect("RESULT") == str([i * i for i in range(n)])
        client.finish()
    finally:
        client.kill()
    jobs = check_result_stream(stomp_server, token, work_id, n)
    assert {j["idx"]: j["attempts"] for j in jobs} == {i: 1 + (i == victim) for i in range(n)}
    assert lostfns.count(marks, "start") == {i: 1 + (i == victim) for i in range(n)}
    assert lostfns.count(marks, "done") == dict.fromkeys(range(n), 1)


def test_broker_stopped_and_started_under_the_server(stomp_server, stomp_url, project,
                                                     tmp_path):
    """The server's bus drops: its long polls read the DB; then it reconnects and announces
    results through the broker again. The client never notices beyond latency."""
    from tasklift.bus.stomp import StompBus

    token = stomp_server.token("alice")
    marks, n = str(tmp_path / "marks"), 10
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    args = f'[{n}, "{marks}", "{gate1}", "{gate2}"]'
    client = Client(stomp_server, token, project, "broker_restart", args)
    observed: set[int] = set()
    arrived = threading.Condition()

    def observe(messages):
        with arrived:
            observed.update(m.idx for m in messages if m.idx >= 0)
            arrived.notify_all()

    try:
        first_id = int(client.expect("WORK"))
        lostfns.wait_for(lambda: len(lostfns.count(marks + "-1", "done")) >= 2, 60,
                         "x=0,1 done")
        with broker_stopped():
            gate1.touch()  # the rest of work 1 ends while the broker is away
            assert client.expect("RESULTS") == str([i * i for i in range(n)])
            second_id = int(client.expect("WORK"))  # submitted while the broker is away
        observer = StompBus(url=stomp_url)
        try:
            observer.subscribe(f"work.{second_id}", observe)
            gate2.touch()
            assert client.expect("RESULTS") == str([i * i for i in range(n)])
            # the server's bus came back and announced what ended after the gate opened
            # (x = 0, 1 ended while the broker was away: announced before we listened)
            with arrived:
                assert arrived.wait_for(lambda: observed >= set(range(2, n)), timeout=60)
        finally:
            observer.close()
        client.finish()
    finally:
        client.kill()
    for work_id, suffix in ((first_id, "-1"), (second_id, "-2")):
        check_result_stream(stomp_server, token, work_id, n)
        assert lostfns.count(marks + suffix, "start") == dict.fromkeys(range(n), 1)
        assert lostfns.count(marks + suffix, "done") == dict.fromkeys(range(n), 1)
    assert "lost the STOMP connection" in stomp_server.log.read_text()


def test_sigkilled_client_of_a_remote_workflow_reattaches(stomp_server, project, tmp_path):
    from tasklift import Workflow
    from tasklift.settings import Settings

    token = stomp_server.token("alice")
    marks, n = str(tmp_path / "marks"), 12
    client = Client(stomp_server, token, project, "remote", f'[{n}, "{marks}"]')
    try:
        workflow_id = int(client.expect("WORKFLOW"))
        lostfns.wait_for(lambda: sum(lostfns.count(marks + "-a", "done").values()) >= 3, 60,
                         "3 jobs of the first work done")
    finally:
        client.kill()  # mid-workflow: the workflow function runs on the server, not here
    settings = Settings(token=token, home=tmp_path / "other-client", quiet=True)
    result = Workflow.attach(workflow_id, service=stomp_server.url,
                             settings=settings).result(timeout=120)
    squares = [i * i for i in range(n)]
    assert (result["a"], result["b"]) == (squares, squares)
    assert result["pid"] != client.proc.pid
    for stage in ("-a", "-b"):  # every job ran exactly once
        assert lostfns.count(marks + stage, "start") == dict.fromkeys(range(n), 1)
        assert lostfns.count(marks + stage, "done") == dict.fromkeys(range(n), 1)


def test_sigkilled_client_rerun_resumes_and_reruns_nothing_finished(stomp_server, project,
                                                                   tmp_path):
    token = stomp_server.token("alice")
    marks, n = str(tmp_path / "marks"), 16
    args = ("resumable", f'[{n}, "{marks}"]')
    first = Client(stomp_server, token, project, *args)
    try:
        first_work = int(first.expect("WORK"))
        lostfns.wait_for(lambda: sum(lostfns.count(marks, "done").values()) >= 4, 60,
                         "4 jobs done")
    finally:
        first.kill()
    # the server goes on with the orphaned work; what it finished by now must not run again
    with stomp_server.client(token) as c:
        finished = c.get(f"/api/v1/works/{first_work}/jobs",
                         params={"state": "finished", "limit": 1000}).json()["data"]
    done_before = {j["idx"] for j in finished}
    assert len(done_before) >= 3

    second = Client(stomp_server, token, project, *args)
    try:
        second_work = int(second.expect("WORK"))
        assert second.expect("RESULT") == str([i * i for i in range(n)])
        second.finish()
    finally:
        second.kill()
    starts = lostfns.count(marks, "start")
    assert all(starts[x] == 1 for x in done_before)
    assert all(1 <= starts[x] <= 2 for x in range(n))  # at most the orphan's and the re-run's
    with stomp_server.client(token) as c:
        work = c.get(f"/api/v1/works/{second_work}").json()
    assert work["status"] == "finished" and work["n_reused"] >= len(done_before)
    check_result_stream(stomp_server, token, second_work, n)


def test_jobs_never_see_the_servers_broker_credential(stomp_server, stomp_url, project):
    token = stomp_server.token("alice")
    client = Client(stomp_server, token, project, "environment", "[]")
    try:
        seen = json.loads(client.expect("RESULT"))
        client.finish()
    finally:
        client.kill()
    assert seen.get("TASKLIFT_IN_JOB") == "1"  # it did run as a job of the server
    leaked = {k for k, v in seen.items() if "guest:guest@" in v or SERVER_KEY in v}
    assert not leaked, f"jobs can read the server's secrets in {sorted(leaked)}"
