"""The pipeline example runs and both orders give the same physics summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_pipeline_example(script_env):
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "pipeline" / "main.py"), "--jobs", "6",
         "--json"], env=script_env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n_jobs"] == 6 and out["summary"]["batches"] == 6
    assert out["summary"]["selected"] > 0
    assert set(out) >= {"pipelined_wall", "staged_wall", "gain", "stage_walls"}
