"""User scripts run as ``python script.py``: source shipping, scripts as __main__, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

from tasklift import get_unique_id_for_dict

QUICKSTART = '''
from tasklift import work, workflow, Workflow, WorkFailed, get_unique_id_for_dict

@work(map_results=True)
def evaluate(x, y=0, scale=1.0):
    from helpers import model       # a module next to this file: shipped with the source
    return model(x, y) * scale

@workflow
def optimize(n):
    points = [{"x": i, "y": i % 3} for i in range(n)]
    res = evaluate(scale=2.0, group_kwargs=points)
    return {get_unique_id_for_dict(p): res.get_result(args=p) for p in points}

print("RESULT", __import__("json").dumps(Workflow(func=optimize, service="local").run(50)))
'''


def write_project(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


def result_line(stdout: str) -> object:
    [line] = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def test_quickstart_script_ships_its_helpers(tmp_path, script_env, python):
    project = write_project(tmp_path / "proj", {
        "helpers.py": "def model(x, y):\n    return x * 10 + y\n",
        "opt.py": QUICKSTART,
    })
    # run from another directory: the source dir is the script's, not the CWD
    proc = subprocess.run([python, str(project / "opt.py")], cwd=tmp_path, env=script_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = result_line(proc.stdout)
    assert len(out) == 50
    assert out[get_unique_id_for_dict({"x": 4, "y": 1})] == 82.0
    # the unguarded top-level Workflow.run() line did not run again inside the jobs
    assert proc.stdout.count("RESULT ") == 1

    listing = subprocess.run([python, "-m", "tasklift.cli", "ls", "--json"], env=script_env,
                             capture_output=True, text=True, timeout=60, check=True)
    [row] = json.loads(listing.stdout)
    assert (row["name"], row["status"], row["jobs"], row["finished"]) == (
        "optimize", "finished", 50, 50)
    shown = subprocess.run([python, "-m", "tasklift.cli", "show", str(row["id"]), "--json"],
                           env=script_env, capture_output=True, text=True, timeout=60,
                           check=True)
    detail = json.loads(shown.stdout)
    assert detail["works"][0]["name"] == "evaluate"
    assert detail["works"][0]["n_finished"] == 50
    assert detail["source_dir"] == str(project)


def test_cli_show_lists_failures(tmp_path, script_env, python):
    project = write_project(tmp_path / "proj", {"fail.py": '''
        from tasklift import work, Workflow, WorkFailed

        @work(retries=0)
        def boom(x):
            raise KeyError(f"missing {x}")

        def wf():
            try:
                boom(group_kwargs=[{"x": 1}, {"x": 2}])
            except WorkFailed as exc:
                return len(exc.failures)

        if __name__ == "__main__":
            print("RESULT", Workflow(func=wf).run())
    '''})
    proc = subprocess.run([python, str(project / "fail.py")], env=script_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert result_line(proc.stdout) == 2
    shown = subprocess.run([python, "-m", "tasklift.cli", "show", "1"], env=script_env,
                           capture_output=True, text=True, timeout=60, check=True)
    assert "KeyError: 'missing 2'" in shown.stdout
    missing = subprocess.run([python, "-m", "tasklift.cli", "show", "99"], env=script_env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "workflow 99 does not exist" in missing.stderr


def test_editing_the_source_after_submission_does_not_change_running_jobs(
    tmp_path, script_env, python
):
    project = write_project(tmp_path / "proj", {"edit.py": '''
        import pathlib, time
        from tasklift import work, Workflow

        VERSION = 1

        @work
        def version(i):
            time.sleep(0.2)
            return VERSION

        def wf():
            w = version(group_kwargs=[{"i": i} for i in range(6)], return_work=True)
            me = pathlib.Path(__file__)
            me.write_text(me.read_text().replace("VERSION = 1", "VERSION = 2"))
            return w.results(timeout=60)

        if __name__ == "__main__":
            print("RESULT", Workflow(func=wf).run())
    '''})
    proc = subprocess.run([python, str(project / "edit.py")], env=script_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "VERSION = 2" in (project / "edit.py").read_text()
    assert proc.stdout.split("RESULT ")[1].strip() == "[1, 1, 1, 1, 1, 1]"


RESUMABLE = '''
    import os, pathlib, time
    from tasklift import work, Workflow

    MARKERS = pathlib.Path(os.environ["MARKERS"])

    @work
    def step(x):
        MARKERS.mkdir(exist_ok=True)
        (MARKERS / f"{x}-{os.environ['RUN_TAG']}").touch()
        time.sleep(0.15)
        return x * x

    def campaign():
        return sum(step(group_kwargs=[{"x": i} for i in range(30)]))

    if __name__ == "__main__":
        print("RESULT", Workflow(func=campaign).run())
'''


def test_killed_campaign_resumes_without_rerunning_finished_jobs(tmp_path, script_env, python):
    project = write_project(tmp_path / "proj", {"campaign.py": RESUMABLE})
    markers = tmp_path / "markers"
    env = dict(script_env, MARKERS=str(markers), RUN_TAG="first")
    first = subprocess.Popen([python, str(project / "campaign.py")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if markers.exists() and len(list(markers.iterdir())) >= 10:
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    time.sleep(0.5)  # orphaned workers finish their current job and exit on EOF

    shown = subprocess.run([python, "-m", "tasklift.cli", "show", "1", "--json"], env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    detail = json.loads(shown.stdout)
    finished_first = detail["works"][0]["n_finished"]
    assert 5 <= finished_first < 30

    env["RUN_TAG"] = "second"
    second = subprocess.run([python, str(project / "campaign.py")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert result_line(second.stdout) == sum(i * i for i in range(30))
    rerun = [p.name for p in markers.iterdir() if p.name.endswith("-second")]
    assert len(rerun) == 30 - finished_first  # only what had not finished ran again

    after = json.loads(subprocess.run(
        [python, "-m", "tasklift.cli", "ls", "--json"], env=env, capture_output=True,
        text=True, timeout=60, check=True).stdout)
    statuses = {row["id"]: row["status"] for row in after}
    assert statuses == {1: "cancelled", 2: "finished"}  # the killed run is closed (issue 18)


def test_process_env_untouched():
    assert "TASKLIFT_IN_JOB" not in os.environ


def _run_with_tty_stderr(argv, env, cwd):
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode()
    proc.stdout.close()
    proc.wait(timeout=120)
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_only(tmp_path, script_env, python):
    project = write_project(tmp_path / "proj", {
        "helpers.py": "def model(x, y):\n    return x * 10 + y\n",
        "opt.py": QUICKSTART,
    })
    env = dict(script_env)
    env.pop("TASKLIFT_QUIET")
    code, out, tty = _run_with_tty_stderr([python, str(project / "opt.py")], env, tmp_path)
    assert code == 0
    assert "evaluate" in tty and "50/50" in tty  # the bar, on stderr
    assert out.startswith("RESULT ")  # stdout untouched by the bar
    env["TASKLIFT_QUIET"] = "1"
    code, out, tty = _run_with_tty_stderr([python, str(project / "opt.py")], env, tmp_path)
    assert code == 0 and "50/50" not in tty
