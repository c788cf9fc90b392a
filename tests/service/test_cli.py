"""The `tasklift` CLI against a real server: login, ls, show, jobs, logs, retry, wait, result."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from test_api import run_campaign

from tasklift.service.auth import TOKEN_CACHE_TTL


def tl(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "tasklift.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_over_http(server, tmp_path: Path):
    token = server.token("alice")
    _, wf_id = run_campaign(server, token, tmp_path, n=6)
    env = server.env(token)
    # login stores URL + token in a 0600 file; the environment is not needed afterwards
    env_no_token = {k: v for k, v in env.items() if k not in ("TASKLIFT_SERVICE",
                                                              "TASKLIFT_TOKEN")}
    login = subprocess.run([sys.executable, "-m", "tasklift.cli", "login", server.url],
                           env=env_no_token, input=token + "\n", capture_output=True,
                           text=True, timeout=60)
    assert login.returncode == 0, login.stderr
    creds = Path(env["TASKLIFT_CONFIG_DIR"]) / "credentials.json"
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
    assert token not in login.stdout + login.stderr
    rows = json.loads(tl(env_no_token, "ls", "--json").stdout)
    assert [(r["id"], r["owner"], r["status"]) for r in rows] == [(wf_id, "alice", "finished")]
    shown = tl(env_no_token, "show", str(wf_id)).stdout
    assert "RuntimeError: first try of 0 fails" in shown
    failed = json.loads(tl(env_no_token, "jobs", str(wf_id), "--workflow", "--failed",
                           "--json").stdout)
    assert sorted(j["kwargs"]["x"] for j in failed) == [0, 3, 6]
    everything = json.loads(tl(env_no_token, "jobs", str(wf_id), "--workflow", "--json").stdout)
    first = next(j for j in everything if j["kwargs"].get("x") == 2 and "y" in j["kwargs"])
    assert tl(env_no_token, "logs", str(first["id"])).stdout == "evaluating 2\n"
    assert "3 failed job(s)" in tl(env_no_token, "retry", str(wf_id)).stdout
    result_out = json.loads(tl(env_no_token, "result", str(wf_id)).stdout)
    assert result_out["failed"] == [0, 3, 6]  # the stored return value does not change
    waited = json.loads(tl(env_no_token, "wait", str(wf_id), "--timeout", "30").stdout)
    assert waited == result_out
    missing = tl(env_no_token, "show", "424242", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr

    # another user's token sees nothing
    other = server.env(server.token("bob"))
    assert json.loads(tl(other, "ls", "--json").stdout) == []
    assert tl(other, "result", str(wf_id), check=False).returncode != 0


def test_token_cli_against_the_server_database(server):
    env = dict(os.environ, TASKLIFT_HOME=str(server.home))
    made = json.loads(tl(env, "--db", server.db_url, "token", "create", "--user", "carol",
                         "--json").stdout)
    with server.client(made["token"]) as c:
        assert c.get("/api/v1/workflows").status_code == 200
    listed = tl(env, "--db", server.db_url, "token", "list", "--json").stdout
    assert "carol" in listed and made["token"] not in listed
    revoked = tl(env, "--db", server.db_url, "token", "revoke", str(made["id"]))
    revoked_at = time.monotonic()
    assert f"within {TOKEN_CACHE_TTL:g} s" in revoked.stdout
    # the server may answer from its verification cache for up to TOKEN_CACHE_TTL seconds
    with server.client(made["token"]) as c:
        while True:
            response = c.get("/api/v1/workflows")
            if response.status_code != 200 or time.monotonic() - revoked_at > TOKEN_CACHE_TTL + 5:
                break
            time.sleep(0.1)
        assert response.status_code == 401 and "revoked" in response.json()["detail"]
