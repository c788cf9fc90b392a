"""The HPO example runs unchanged against a server (only --service differs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_hpo_example_with_service_flag(server):
    token = server.token("physicist")
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "hpo_bdt" / "main.py"), "--service",
         server.url, "--iterations", "2", "--points", "4", "--n-events", "6000", "--json"],
        env=server.env(token), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n_jobs"] == 8
    assert 0.5 < out["best_target"] <= 1.0
    with server.client(token) as c:
        [wf] = c.get("/api/v1/workflows").json()["data"]
        assert (wf["status"], wf["n_jobs"], wf["n_finished"]) == ("finished", 8, 8)
