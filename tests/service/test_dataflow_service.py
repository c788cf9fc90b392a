"""Data-flow chains on the server: they finish without their submitter; the DAG is served."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CHAIN = '''
    import os, sys, time
    from tasklift import work, Workflow

    @work(retries=0)
    def generate(seed):
        time.sleep(0.05)
        return {"events": [seed, seed + 1]}

    @work(retries=0)
    def simulate(events):
        time.sleep(0.05)
        return [e * 10 for e in events["events"]]

    @work(retries=0)
    def summarize(parts):
        return sum(sum(p) for p in parts)

    def chain(n):
        gen = generate(group_kwargs=[{"seed": s} for s in range(n)], return_work=True)
        sim = simulate(events=gen.each(), return_work=True)
        total = summarize(parts=sim.all(), return_work=True)
        print("WORKS", gen.work_id, sim.work_id, total.work_id, flush=True)
        time.sleep(3600)   # the test kills this process here

    if __name__ == "__main__":
        Workflow(func=chain, service=os.environ["TASKLIFT_SERVICE"]).run(20)
'''


def test_chain_finishes_after_the_submitter_is_killed(server, tmp_path: Path):
    token = server.token("alice")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "chain.py").write_text(textwrap.dedent(CHAIN))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "p" / "chain.py")],
                            env=server.env(token), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    gen_id, sim_id, total_id = (int(x) for x in line.split()[1:])
    with server.client(token) as c:
        deadline = time.monotonic() + 120
        while c.get(f"/api/v1/works/{total_id}").json()["status"] != "finished":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        [job] = c.get(f"/api/v1/works/{total_id}/jobs").json()["data"]
        assert job["result"] == sum(10 * (s + s + 1) for s in range(20))
        work = c.get(f"/api/v1/works/{total_id}").json()
        dag = c.get(f"/api/v1/workflows/{work['workflow_id']}/dag").json()
    assert [w["id"] for w in dag["works"]] == [gen_id, sim_id, total_id]
    assert {(e["upstream_work_id"], e["work_id"], e["mode"]) for e in dag["edges"]} == {
        (gen_id, sim_id, "each"), (sim_id, total_id, "all")}
