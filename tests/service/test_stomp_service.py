"""Results travel through RabbitMQ's STOMP plugin when the server runs with a STOMP bus."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from test_api import run_campaign

from conftest import REPO, start_server

pytestmark = pytest.mark.stomp


def _stomp_ready() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 61613), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def stomp_url() -> str:
    if not _stomp_ready():
        subprocess.run(["bash", str(REPO / "scripts" / "enable-stomp.sh")], capture_output=True,
                       timeout=180, check=False)
    if not _stomp_ready():
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ's STOMP port 61613 is closed (CI needs it)")
        pytest.skip("RabbitMQ's STOMP port 61613 is closed")
    return f"stomp://guest:guest@127.0.0.1:61613/tl-test-{uuid.uuid4().hex[:8]}"


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
