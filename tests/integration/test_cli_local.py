"""The `tasklift` CLI without a service: every command on the embedded database, exit codes as
each command's help says, `--db` in either position, and clear refusals (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FLOW = """
import sys
from pathlib import Path
from tasklift import work, workflow, Workflow

MARKER = Path({marker!r})

@work(retries=0)
def gen(seed):
    print(f"gen {{seed}}")
    if seed == 2 and not MARKER.exists():
        raise ValueError(f"generator {{seed}} broke")
    return {{"seed": seed, "ok": seed != 1}}

@work(retries=0)
def sim(ev):
    return ev["seed"] * 10

@workflow
def chain(n, label="x"):
    g = gen(group_kwargs=[{{"seed": s}} for s in range(n)], return_work=True)
    s = sim(ev=g.each(), when=lambda r: r["ok"], return_work=True)
    s.wait(timeout=60)
    return s.results(timeout=60)

if __name__ == "__main__":
    print(Workflow(func=chain, service="local").run(int(sys.argv[1]), label="a-label"))
"""

SLOW = """
import sys, time
from tasklift import work, workflow, Workflow

@work(retries=0)
def nap(i):
    time.sleep(60)
    return i

@workflow
def sleepy(n):
    return nap(group_kwargs=[{"i": i} for i in range(n)])

if __name__ == "__main__":
    print(Workflow(func=sleepy, service="local").run(int(sys.argv[1])))
"""


def tl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `tasklift ARGS` through its entry point (``tasklift.cli:main``), as the shell does."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from tasklift.cli import main; sys.exit(main())",
         *args],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def make_failed_chain(root: Path, env: dict[str, str]) -> Path:
    """Run a data-flow workflow that fails (id 1): gen job 2 raises, sim job 2 is then
    upstream_failed and sim job 1 is skipped by its when= condition. Returns the marker
    file that makes gen job 2 succeed."""
    project = root / "proj"
    project.mkdir()
    marker = root / "fixed"
    (project / "flow.py").write_text(FLOW.format(marker=str(marker)))
    proc = subprocess.run([sys.executable, str(project / "flow.py"), "4"], env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 1 and "generator 2 broke" in proc.stderr, proc.stderr
    return marker


@pytest.fixture
def failed_chain(tmp_path: Path, script_env: dict[str, str]) -> tuple[Path, int]:
    """A failed data-flow workflow of this test alone (it may change it)."""
    return make_failed_chain(tmp_path, script_env), 1


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose home holds the failed workflow 1, for tests that only read."""
    root = tmp_path_factory.mktemp("cli-local")
    env = dict(os.environ)
    env.update(TASKLIFT_HOME=str(root / "home"), TASKLIFT_QUIET="1", TASKLIFT_WORKERS="2",
               PYTHONPATH=str(REPO / "src"), TASKLIFT_CONFIG_DIR=str(root / "config"))  # fmt: skip
    env.pop("TASKLIFT_DB_URL", None)
    make_failed_chain(root, env)
    return env


def test_every_command_works_on_the_embedded_database(failed_chain, script_env):
    marker, wf_id = failed_chain
    env = script_env
    db_path = Path(env["TASKLIFT_HOME"]) / "tasklift.db"

    listing = ok(tl(env, "ls", "--json"))
    # the first line on stderr says where the command reads
    assert listing.stderr.splitlines()[0] == f"# local database sqlite:///{db_path}"
    [row] = json.loads(listing.stdout)
    assert (row["id"], row["status"], row["jobs"], row["skipped"]) == (wf_id, "failed", 8, 1)

    # piped, a table is not cut to 80 columns: each row stays on one line
    table = ok(tl(env, "ls")).stdout.splitlines()
    [line] = [ln for ln in table if "chain" in ln]
    assert "failed" in line and "100%" in line and len(line) > 80

    shown = ok(tl(env, "show", str(wf_id))).stdout
    assert 'arguments: 4, label="a-label"' in shown
    assert "skipped" in shown and "generator 2 broke" in shown

    jobs = json.loads(ok(tl(env, "jobs", str(wf_id), "--workflow", "--json")).stdout)
    assert [j["state"] for j in jobs] == [
        "finished", "finished", "failed", "finished",
        "finished", "skipped", "upstream_failed", "finished",
    ]  # fmt: skip
    assert [j["kwargs"] for j in jobs[4:]] == [
        {"ev": "<from upstream>"}, {"ev": "<skipped>"},
        {"ev": "<from upstream>"}, {"ev": "<from upstream>"},
    ]  # fmt: skip
    table = ok(tl(env, "jobs", str(wf_id), "--workflow")).stdout
    assert "__tasklift_ref__" not in table and "<skipped>" in table
    failed = json.loads(ok(tl(env, "jobs", str(wf_id), "--workflow", "--failed", "--json")).stdout)
    assert [(j["work_id"], j["idx"], j["state"]) for j in failed] == [
        (1, 2, "failed"), (2, 2, "upstream_failed")]  # fmt: skip

    gen2 = jobs[2]["id"]
    logs = ok(tl(env, "logs", str(gen2)))
    assert logs.stdout == "gen 2\n"
    assert "Traceback (most recent call last)" in logs.stderr
    assert "ValueError: generator 2 broke" in logs.stderr

    waited = tl(env, "wait", str(wf_id), "--timeout", "30")
    assert waited.returncode == 1  # its help: exit 1 when it failed
    assert json.loads(waited.stdout)["status"] == "failed"
    result = tl(env, "result", str(wf_id))
    assert result.returncode == 1 and "is failed: no result" in result.stderr

    # retry runs the failed job here: it fails again, so the command exits 1
    again = tl(env, "retry", str(wf_id), "--timeout", "120")
    assert again.returncode == 1, again.stderr
    assert "1 failed job(s) run again" in again.stdout and "1 upstream_failed" in again.stdout
    # once the cause is fixed, it finishes and releases the job that waited for it
    marker.touch()
    retried = ok(tl(env, "retry", str(wf_id), "--timeout", "120"))
    assert "1 failed job(s) run again" in retried.stdout
    after = json.loads(ok(tl(env, "jobs", str(wf_id), "--workflow", "--json")).stdout)
    assert [j["state"] for j in after] == ["finished"] * 5 + ["skipped"] + ["finished"] * 2
    assert after[6]["result"] == 20
    assert "0 failed job(s)" in ok(tl(env, "retry", str(wf_id))).stdout

    # a run of the fixed workflow finishes: wait and result exit 0 with its value
    project = marker.parent / "proj"
    rerun = subprocess.run([sys.executable, str(project / "flow.py"), "4"], env=env,
                           capture_output=True, text=True, timeout=180)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    waited = ok(tl(env, "wait", "2", "--timeout", "60")).stdout
    assert json.loads(ok(tl(env, "result", "2")).stdout) == json.loads(waited)
    # the skipped job's JobFailure (shown by its repr) names its input, not the marker
    assert "state='skipped'" in waited and "<from upstream>" in waited
    assert "__tasklift_ref__" not in waited

    # cancelling a workflow that already ended leaves it as it was
    cancelled = ok(tl(env, "cancel", str(wf_id)))
    assert cancelled.stdout == f"workflow {wf_id}: failed\n" and "already ended" in cancelled.stderr


@pytest.mark.parametrize(
    "args",
    [["show", "999"], ["jobs", "999"], ["jobs", "999", "--workflow"], ["logs", "999"],
     ["wait", "999"], ["result", "999"], ["cancel", "999"], ["retry", "999"]],
)  # fmt: skip
def test_unknown_ids_exit_1_with_the_reason(shared_env, args):
    proc = tl(shared_env, *args)
    assert proc.returncode == 1
    assert "999 does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_usage_exits_2(script_env):
    bogus = tl(script_env, "ls", "--status", "bogus")
    assert bogus.returncode == 2
    assert "'bogus' is not one of" in bogus.stderr and "running" in bogus.stderr
    assert tl(script_env, "wait", "1", "--timeout", "-1").returncode == 2
    assert tl(script_env, "show", "notanumber").returncode == 2


def test_db_option_is_accepted_before_and_after_the_command(shared_env, tmp_path):
    url = f"sqlite:///{Path(shared_env['TASKLIFT_HOME']) / 'tasklift.db'}"
    env = dict(shared_env, TASKLIFT_HOME=str(tmp_path / "elsewhere"))  # not the default home
    for command, rest in (
        (["ls"], ["--json"]), (["show"], ["1"]), (["jobs"], ["1"]), (["logs"], ["1"]),
        (["result"], ["1"]), (["wait"], ["1"]), (["token", "list"], []),
    ):  # fmt: skip
        before = tl(env, "--db", url, *command, *rest)
        after = tl(env, *command, "--db", url, *rest)
        assert before.returncode == after.returncode, (command, before.stderr, after.stderr)
        assert before.stdout == after.stdout, command
        assert "no tasklift database" not in before.stderr + after.stderr, command
    assert json.loads(tl(env, "ls", "--db", url, "--json").stdout)[0]["name"] == "chain"
    # TASKLIFT_DB_URL is the group's --db too; the command's own --db wins over it
    other = f"sqlite:///{tmp_path / 'missing.db'}"
    assert tl(dict(env, TASKLIFT_DB_URL=other), "ls", "--db", url).returncode == 0


def test_reading_a_missing_sqlite_database_refuses_and_creates_nothing(script_env, tmp_path):
    path = tmp_path / "nothing-here" / "tasklift.db"
    for args in (["ls"], ["--db", f"sqlite:///{path}", "ls"], ["show", "1"], ["wait", "1"]):
        proc = tl(dict(script_env, TASKLIFT_HOME=str(path.parent)), *args)
        assert proc.returncode == 1, args
        assert f"no tasklift database at {path}" in proc.stderr
    assert not path.parent.exists()


def test_unreachable_postgresql_is_one_line_with_the_password_masked(script_env):
    url = "postgresql+psycopg://alice:s3cret-pw@127.0.0.1:1/tasklift"
    for args in (["--db", url, "ls"], ["show", "1", "--db", url], ["--db", url, "token", "list"]):
        proc = tl(script_env, *args)
        assert proc.returncode == 1, args
        assert "s3cret-pw" not in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("#")]
        assert len(errors) == 1, proc.stderr
        assert "Connection refused" in errors[0] or "connection" in errors[0].lower()
        assert "alice:***@127.0.0.1:1/tasklift" in errors[0]


def test_cancel_stops_the_process_running_the_workflow(tmp_path, script_env, python):
    project = tmp_path / "slow"
    project.mkdir()
    (project / "slow.py").write_text(SLOW)
    log = (tmp_path / "slow.log").open("w")
    proc = subprocess.Popen([python, str(project / "slow.py"), "5"], env=script_env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # until the workflow is stored with its jobs
            listing = tl(script_env, "ls", "--json")
            rows = json.loads(listing.stdout) if listing.returncode == 0 else []
            if rows and rows[0]["jobs"] == 5:
                break
            assert time.monotonic() < deadline and proc.poll() is None, listing.stderr
            time.sleep(0.2)
        wf_id = rows[0]["id"]
        assert rows[0]["status"] == "running"
        cancelled = ok(tl(script_env, "cancel", str(wf_id)))
        assert cancelled.stdout == f"workflow {wf_id}: cancelled\n"
        proc.wait(timeout=30)  # the process running it was stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    shown = json.loads(ok(tl(script_env, "show", str(wf_id), "--json")).stdout)
    assert shown["status"] == "cancelled"
    [work] = shown["works"]
    assert (work["n_cancelled"], work["n_failed"], work["status"]) == (5, 0, "cancelled")
    [row] = json.loads(ok(tl(script_env, "ls", "--json")).stdout)
    assert (row["cancelled"], row["failed"]) == (5, 0)  # cancelled jobs are not "failed"
    waited = tl(script_env, "wait", str(wf_id))
    assert waited.returncode == 1 and json.loads(waited.stdout)["status"] == "cancelled"
