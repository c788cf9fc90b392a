"""Nothing is lost on the embedded engine with the STOMP bus (real RabbitMQ): a SIGKILLed
worker, a broker stopped and started mid-work, a SIGKILLed submitting script that is re-run.

Each result arrives exactly once; every wait has a timeout. Runs are counted with the marker
files of :func:`lostfns.tracked`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import lostfns
import pytest
import sqlalchemy as sa

from stomp_broker import broker_stopped, private_stomp_url, require_stomp
from tasklift import Workflow
from tasklift.api.engines import embedded_engine
from tasklift.bus.stomp import StompBus
from tasklift.settings import Settings

pytestmark = [pytest.mark.stomp, pytest.mark.slow]

HERE = Path(__file__).resolve().parent


@pytest.fixture
def stomp_url() -> str:
    return private_stomp_url(require_stomp())


def assert_each_result_once(settings: Settings, work_id: int, n: int) -> list:
    """The work's stored result stream: n ends, one per job, numbered 1..n without gaps."""
    records = embedded_engine(settings).results(work_id)
    assert sorted(r.done_seq for r in records) == list(range(1, n + 1))
    assert sorted(r.idx for r in records) == list(range(n))
    assert len({r.job_id for r in records}) == n
    assert {r.state for r in records} == {"finished"}
    return records


def test_sigkilled_worker_job_is_retried_and_every_result_arrives_once(settings, stomp_url,
                                                                      tmp_path):
    """Every result also reaches the client a second time (an echo on the broker): the
    client drops duplicates by job id."""
    marks = tmp_path / "marks"
    n, victim = 8, 3
    killed: list[int] = []
    echo = StompBus(url=stomp_url)
    echoed: set[int] = set()

    def wf():
        w = lostfns.tracked(marks=str(marks), delay=0.05, return_work=True,
                            group_kwargs=[{"x": i, "hold": i == victim} for i in range(n)])
        destination = f"work.{w.work_id}"

        def send_again(messages):  # once per job: the echo hears itself too
            again = [m for m in messages if m.idx >= 0 and m.job_id not in echoed]
            echoed.update(m.job_id for m in again)
            if again:
                echo.publish(destination, again)

        echo.subscribe(destination, send_again)
        pid = lostfns.held_pid(marks, victim)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        return w.work_id, sorted(j.value for j in w.as_completed(timeout=60))

    try:
        work_id, values = Workflow(func=wf, settings=settings, bus=stomp_url).run()
    finally:
        echo.close()
    assert values == sorted(i * i for i in range(n))  # each result yielded exactly once
    assert len(echoed) >= n - 2  # most were sent twice (the first ones may precede the echo)
    assert isinstance(embedded_engine(settings).bus, StompBus)

    records = assert_each_result_once(settings, work_id, n)
    attempts = {r.idx: r.attempts for r in records}
    assert attempts == {i: 2 if i == victim else 1 for i in range(n)}
    assert lostfns.count(marks, "start") == {i: 2 if i == victim else 1 for i in range(n)}
    assert lostfns.count(marks, "done") == dict.fromkeys(range(n), 1)
    assert killed and not Path(f"/proc/{killed[0]}").exists()


def test_broker_stopped_and_started_mid_work_nothing_lost_no_hang(settings, stomp_url,
                                                                  tmp_path):
    """While the broker is down the waiting client reads the DB; after it is back the bus
    binds every subscription again and results travel over the broker once more."""
    marks1, marks2 = tmp_path / "m1", tmp_path / "m2"
    gate1, gate2 = tmp_path / "gate1", tmp_path / "gate2"
    n = 10
    seen: dict[str, object] = {}
    observed: list = []
    arrived = threading.Condition()

    def observe(messages):
        with arrived:
            observed.extend(m for m in messages if m.idx >= 0)
            arrived.notify_all()

    def wf():
        bus = embedded_engine(settings).bus
        # x = 0, 1 run at once; the others wait for the gate, opened once the broker is down
        w1 = lostfns.tracked(marks=str(marks1), return_work=True, group_kwargs=[
            {"x": i, "gate": str(gate1) if i >= 2 else None} for i in range(n)])
        lostfns.wait_for(lambda: len(lostfns.count(marks1, "done")) >= 2, 60, "x=0,1 done")
        with broker_stopped():
            lostfns.wait_for(lambda: not bus.connected, 30, "the bus noticing the stop")
            gate1.touch()
            seen["first"] = sorted(j.value for j in w1.as_completed(timeout=60))  # DB: no broker
            seen["down_during_first"] = not bus.connected
            # a work submitted while the broker is away: its subscription binds later
            w2 = lostfns.tracked(marks=str(marks2), gate=str(gate2), return_work=True,
                                 group_kwargs=[{"x": i} for i in range(n)])
        lostfns.wait_for(lambda: bus.stats["reconnects"] >= 1 and bus.connected, 60,
                         "the bus reconnecting and binding its subscriptions again")
        observer = StompBus(url=stomp_url)
        try:
            observer.subscribe(f"work.{w2.work_id}", observe)
            gate2.touch()
            seen["second"] = w2.results(timeout=60)
            with arrived:  # the engine announced work 2's results through the broker
                arrived.wait_for(lambda: len({m.job_id for m in observed}) >= n, timeout=30)
        finally:
            observer.close()
        return w1.work_id, w2.work_id

    t0 = time.monotonic()
    w1_id, w2_id = Workflow(func=wf, settings=settings, bus=stomp_url).run()
    assert time.monotonic() - t0 < 240  # every wait above has its own timeout
    squares = [i * i for i in range(n)]
    assert seen["first"] == squares and seen["down_during_first"]
    assert seen["second"] == squares
    assert len({m.job_id for m in observed}) == n
    assert {m.idx for m in observed} == set(range(n))
    for work_id, marks in ((w1_id, marks1), (w2_id, marks2)):
        assert_each_result_once(settings, work_id, n)
        assert lostfns.count(marks, "start") == dict.fromkeys(range(n), 1)
        assert lostfns.count(marks, "done") == dict.fromkeys(range(n), 1)


RESUMABLE = '''
    import sys
    from tasklift import Workflow
    from lostfns import tracked

    def campaign(n, marks):
        return sum(tracked(marks=marks, delay=0.1, group_kwargs=[{"x": i} for i in range(n)]))

    if __name__ == "__main__":
        print("RESULT", Workflow(func=campaign).run(int(sys.argv[1]), sys.argv[2]), flush=True)
'''


def finished_idx(home: Path, workflow_id: int) -> set[int]:
    """Jobs of a workflow whose results are committed in the embedded SQLite database."""
    db = sa.create_engine(f"sqlite:///{home / 'tasklift.db'}")
    try:
        with db.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT j.idx FROM jobs j JOIN works w ON j.work_id = w.id "
                "WHERE w.workflow_id = :wf AND j.state = 'finished'"), {"wf": workflow_id})
            return {int(r[0]) for r in rows}
    finally:
        db.dispose()


def test_sigkilled_script_rerun_resumes_with_the_stomp_bus(tmp_path, script_env, python,
                                                           stomp_url):
    project = tmp_path / "proj"
    project.mkdir()
    shutil.copy(HERE / "lostfns.py", project)
    (project / "campaign.py").write_text(textwrap.dedent(RESUMABLE))
    marks, n = tmp_path / "marks", 30
    env = dict(script_env, TASKLIFT_BUS=stomp_url)
    argv = [python, str(project / "campaign.py"), str(n), str(marks)]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        lostfns.wait_for(lambda: sum(lostfns.count(marks, "done").values()) >= 8, 60,
                         "8 jobs done")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    time.sleep(0.5)  # orphaned workers finish their current job and exit on EOF
    done_before = finished_idx(Path(env["TASKLIFT_HOME"]), 1)
    assert 2 <= len(done_before) < n
    starts_before = lostfns.count(marks, "start")

    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split("RESULT ")[1].strip() == str(sum(i * i for i in range(n)))
    starts = lostfns.count(marks, "start")
    assert all(starts[x] == 1 for x in done_before)  # finished before the kill: not run again
    assert {x for x in range(n) if starts[x] > starts_before[x]} <= set(range(n)) - done_before
    assert set(lostfns.count(marks, "done")) == set(range(n))
    assert finished_idx(Path(env["TASKLIFT_HOME"]), 2) == set(range(n))
