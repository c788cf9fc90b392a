"""Shared fixtures: an isolated tasklift home per test, engines shut down afterwards."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tasklift
from tasklift.settings import Settings

REPO = Path(__file__).resolve().parents[1]


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
