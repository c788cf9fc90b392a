"""Results travel through RabbitMQ's STOMP plugin when the server runs with a STOMP bus."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_api import run_campaign

from conftest import start_server

pytestmark = pytest.mark.stomp


def test_server_with_stomp_bus_delivers_every_result(tmp_path: Path, stomp_url: str):
    server = start_server(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "home",
                          extra_env={"TASKLIFT_BUS": stomp_url})
    try:
        token = server.token("alice")
        result, _ = run_campaign(server, token, tmp_path, n=20)
        assert len(result["map"]) == 20 and result["failed"] == [0, 3, 6]
        assert "guest:guest" not in server.log.read_text()
    finally:
        server.stop()
