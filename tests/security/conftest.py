"""Security fixtures: the service's real servers and databases (tests/service/conftest.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "tasklift_service_fixtures", Path(__file__).resolve().parents[1] / "service" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _fixtures
_spec.loader.exec_module(_fixtures)

pg_url = _fixtures.pg_url
db_url = _fixtures.db_url
Server = _fixtures.Server
start_server = _fixtures.start_server


@pytest.fixture
def launch_server():
    """``start_server(db_url, home, extra_env=...)`` of tests/service/conftest.py."""
    return _fixtures.start_server
