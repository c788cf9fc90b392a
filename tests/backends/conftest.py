"""Backend fixtures: a real single-node Slurm (installed and started on demand).

The ``slurm_cluster`` session fixture runs ``scripts/install-slurm.sh`` when ``sinfo`` does not
show a usable node. Without Slurm the ``slurm`` tests skip with the reason, except in CI (``CI``
set), where a missing Slurm is a failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "install-slurm.sh"
USABLE = ("idle", "mixed", "allocated", "completing")


def slurm_node_state() -> str | None:
    """The node state ``sinfo`` reports, or ``None`` when Slurm does not answer."""
    try:
        proc = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%T"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.split()
    return lines[0] if proc.returncode == 0 and lines else None


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The node state once a single-node Slurm takes jobs (installing/starting it if needed)."""
    state = slurm_node_state()
    if state in USABLE:
        return state
    why = f"sinfo reports {state!r}" if state else "sinfo does not answer"
    try:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        out = (proc.stderr or proc.stdout).strip().splitlines()
        why += f"; {INSTALL_SCRIPT.name} exited {proc.returncode}: {out[-1] if out else ''}"
    except subprocess.TimeoutExpired:
        why += f"; {INSTALL_SCRIPT.name} did not finish within 600 s"
    state = slurm_node_state()
    if state in USABLE:
        return state
    message = f"no usable single-node Slurm ({why})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
