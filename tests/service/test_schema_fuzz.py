"""Property-based requests from the OpenAPI schema (schemathesis): never a 5xx."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_no_server_errors_for_generated_requests(server, tmp_path: Path):
    token = server.token("fuzzer")
    # something to find: a workflow with a work, so ids in paths sometimes exist
    with server.client(token) as c:
        c.post("/api/v1/workflows", json={"name": "seed", "function": "m:f"})
    schemathesis = Path(sys.executable).parent / "schemathesis"
    proc = subprocess.run(
        [str(schemathesis), "run", f"{server.url}/openapi.json", "--checks",
         "not_a_server_error", "-H", f"Authorization: Bearer {token}", "--max-examples", "25",
         "--seed", "7", "--generation-database", "none", "--request-timeout", "30"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, NO_COLOR="1"),
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert "generated" in out, out[-3000:]
    assert "Server error" not in out, out[-6000:]
    assert "failures" not in out.splitlines()[-1], out[-6000:]
