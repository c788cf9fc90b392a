"""The `tasklift` CLI against a real server: exit codes as each command's help says, where a
command reads, tracebacks in `logs`, and `login` under TASKLIFT_HOME (issue 18)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FAILING = """
import sys
from tasklift import work, workflow, Workflow

@work(retries=0)
def step(x):
    print(f"step {x}")
    if x == 1:
        raise ValueError(f"step {x} broke")
    return x

@workflow
def breaks(n):
    return step(group_kwargs=[{"x": i} for i in range(n)])

if __name__ == "__main__":
    wf = Workflow(func=breaks, service=sys.argv[1])
    try:
        wf.run(2)
    finally:
        print("WORKFLOW", wf.workflow_id)
"""


def tl(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `tasklift ARGS` through its entry point (``tasklift.cli:main``), as the shell does."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from tasklift.cli import main; sys.exit(main())",
         *args],
        env=env, input=stdin, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_exit_codes_and_sources_over_the_service(server, tmp_path: Path):
    env = server.env(server.token("alice"))
    script = tmp_path / "proj" / "failing.py"
    script.parent.mkdir()
    script.write_text(FAILING)
    run = subprocess.run([sys.executable, str(script), server.url], env=env,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert run.returncode == 1 and "step 1 broke" in run.stderr, run.stderr
    wf_id = int(run.stdout.split("WORKFLOW ")[1].split()[0])

    waited = tl(env, "wait", str(wf_id), "--timeout", "30")
    assert waited.returncode == 1, waited.stderr  # its help: exit 1 when it failed
    assert json.loads(waited.stdout)["status"] == "failed"

    listing = tl(env, "ls", "--json")
    assert listing.returncode == 0, listing.stderr
    assert listing.stderr.splitlines()[0] == f"# service {server.url}"
    assert json.loads(listing.stdout)[0]["status"] == "failed"
    assert tl(env, "result", str(wf_id)).returncode == 1
    shown = tl(env, "show", str(wf_id))
    assert shown.returncode == 0 and "  arguments: 2\n" in shown.stdout
    assert tl(env, "show", "424242").returncode == 1
    assert tl(env, "wait", "424242").returncode == 1
    assert tl(env, "ls", "--status", "bogus").returncode == 2

    [failed] = json.loads(tl(env, "jobs", str(wf_id), "--workflow", "--failed", "--json").stdout)
    logs = tl(env, "logs", str(failed["id"]))
    assert logs.returncode == 0 and logs.stdout == "step 1\n"
    assert "Traceback (most recent call last)" in logs.stderr
    assert "ValueError: step 1 broke" in logs.stderr

    cancelled = tl(env, "cancel", str(wf_id))
    assert (cancelled.returncode, cancelled.stdout) == (0, f"workflow {wf_id}: failed\n")
    assert tl(env, "cancel", "424242").returncode == 1
    retried = tl(env, "retry", str(wf_id))
    assert retried.returncode == 0 and "1 failed job(s) queued again" in retried.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_login_keeps_its_credentials_under_tasklift_home(server, tmp_path: Path):
    token = server.token("alice")
    env = server.env(token)
    for name in ("TASKLIFT_CONFIG_DIR", "TASKLIFT_SERVICE", "TASKLIFT_TOKEN"):
        env.pop(name)
    env["HOME"] = str(tmp_path / "user-home")  # the platform config dir must stay untouched
    env["XDG_CONFIG_HOME"] = str(tmp_path / "user-home" / ".config")
    login = tl(env, "login", server.url, stdin=token + "\n")
    assert login.returncode == 0, login.stderr
    home = Path(env["TASKLIFT_HOME"])
    assert (home / "credentials.json").exists()
    assert str(home / "credentials.json") in login.stdout
    assert not (tmp_path / "user-home").exists()
    listing = tl(env, "ls", "--json")  # the saved login is used
    assert listing.returncode == 0 and listing.stderr.startswith(f"# service {server.url}")
    assert token not in listing.stdout + listing.stderr
    # --db reads the database instead, and says so
    db = tl(env, "ls", "--db", server.db_url, "--json")
    assert db.returncode == 0 and db.stderr.startswith(f"# local database {server.db_url}")
