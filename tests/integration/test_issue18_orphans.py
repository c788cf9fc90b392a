"""Issue 18 item 4: a workflow whose submitting process was killed (SIGKILL) is closed as
``cancelled``, with its open jobs counted as cancelled, as soon as anything looks at it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap

SCRIPT = '''
import time
from tasklift import work, Workflow

@work(retries=0)
def nap(x):
    time.sleep(0 if x < 2 else 15)
    return x

def wf():
    w = nap(group_kwargs=[{"x": i} for i in range(4)], return_work=True)
    done = w.as_completed(timeout=60)
    next(done), next(done)
    print("READY", flush=True)
    time.sleep(120)

if __name__ == "__main__":
    Workflow(func=wf, service="local").run()
'''


def test_killed_submitter_leaves_a_cancelled_workflow_whose_counts_agree(tmp_path, script_env):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "killed.py").write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen([sys.executable, str(project / "killed.py")], env=script_env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    listing = subprocess.run([sys.executable, "-m", "tasklift.cli", "ls", "--json"],
                             env=script_env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    [row] = json.loads(listing.stdout)
    assert (row["status"], row["jobs"], row["finished"], row["failed"], row["cancelled"]) == (
        "cancelled", 4, 2, 0, 2)
    shown = subprocess.run([sys.executable, "-m", "tasklift.cli", "show", str(row["id"]),
                            "--json"], env=script_env, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    [work] = json.loads(shown.stdout)["works"]
    assert (work["status"], work["n_finished"], work["n_cancelled"]) == ("cancelled", 2, 2)
    with contextlib.suppress(ProcessLookupError):  # the worker still sleeping in its job
        os.killpg(proc.pid, signal.SIGKILL)
