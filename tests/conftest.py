"""Shared fixtures: an isolated tasklift home per test, engines shut down afterwards."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import runner_identities
import tasklift
from tasklift.settings import Settings

REPO = Path(__file__).resolve().parents[1]

if runner_identities.can_switch_identity():
    runner_identities.prepare(REPO)
    # servers of module- and session-scoped fixtures; each test sets a range of its own
    os.environ.setdefault("TASKLIFT_RUNNER_USER", runner_identities.next_range())
else:
    os.environ.setdefault("TASKLIFT_ISOLATE_RUNNERS", "false")


@pytest.fixture(autouse=True)
def _runner_identities(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test's servers run jobs under uids of their own (as root), else as themselves.

    Jobs of a test server run as another uid: the test's ``tmp_path`` is opened to them (mode
    1777, like /tmp) so that jobs can leave the markers tests look for; a server's home inside
    it is made 0700 by the server itself.
    """
    if runner_identities.can_switch_identity():
        monkeypatch.setenv("TASKLIFT_RUNNER_USER", runner_identities.next_range())
        runner_identities.grant_traverse(tmp_path.parent)
        os.chmod(tmp_path, 0o1777)
    else:
        monkeypatch.setenv("TASKLIFT_ISOLATE_RUNNERS", "false")


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings with a private home (SQLite, archives, cache) and 2 quiet workers."""
    yield Settings(home=tmp_path / "home", workers=2, quiet=True)
    tasklift.shutdown()


@pytest.fixture
def script_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running user scripts in a subprocess against a private home."""
    env = dict(os.environ)
    env.update(
        TASKLIFT_HOME=str(tmp_path / "home"),
        TASKLIFT_QUIET="1",
        TASKLIFT_WORKERS="2",
        PYTHONPATH=str(REPO / "src"),
        TASKLIFT_CONFIG_DIR=str(tmp_path / "config"),
    )
    return env


@pytest.fixture
def python() -> str:
    """The interpreter that runs user scripts."""
    return sys.executable
