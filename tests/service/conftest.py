"""Service fixtures: real PostgreSQL databases and `tasklift server` processes on free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tasklift.db.session import create_db_engine, upgrade
from tasklift.service.auth import Authenticator
from tasklift.settings import Settings

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REPO = Path(__file__).resolve().parents[2]


def _pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return True
    except OSError:
        return False


def _start_pg() -> bool:
    """Start this machine's PostgreSQL cluster when it is installed but stopped."""
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if not versions:
        return False
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main",
                    "start"], capture_output=True, timeout=60, check=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _pg_available():
            return True
        time.sleep(0.5)
    return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards (fails in CI when PG is down)."""
    if not _pg_available() and not _start_pg():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not answering on 127.0.0.1:5432 (CI needs it)")
        pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
    import sqlalchemy as sa

    name = f"tasklift_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each service test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    return str(request.getfixturevalue("pg_url"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running `tasklift server` subprocess."""

    url: str
    db_url: str
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def settings(self) -> Settings:
        return Settings(home=self.home, db_url=self.db_url, workers=2, quiet=True)

    def token(self, user: str, admin: bool = False) -> str:
        """A fresh API token for ``user`` (made directly in the server's database)."""
        db = create_db_engine(self.db_url)
        try:
            return Authenticator(db=db, settings=self.settings()).create_token(
                user=user, admin=admin)[1]
        finally:
            db.dispose()

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def env(self, token: str) -> dict[str, str]:
        """Environment for a client script that talks to this server."""
        env = dict(os.environ)
        env.update(TASKLIFT_SERVICE=self.url, TASKLIFT_TOKEN=token, TASKLIFT_QUIET="1",
                   TASKLIFT_HOME=str(self.home.parent / "client-home"),
                   TASKLIFT_CONFIG_DIR=str(self.home.parent / "client-config"))
        return env

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_server(
    db_url: str, home: Path, port: int | None = None, extra_env: dict[str, str] | None = None
) -> Server:
    """Migrate ``db_url`` and start a server on it; wait until /health answers."""
    engine = create_db_engine(db_url)
    upgrade(engine)
    engine.dispose()
    port = port or free_port()
    log = home.parent / f"server-{port}.log"
    env = dict(os.environ, TASKLIFT_HOME=str(home), TASKLIFT_WORKERS="2", **(extra_env or {}))
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasklift.cli", "server", "--db", db_url, "--port",
             str(port), "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", db_url, home, proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not answer /health within 60 s:\n{log.read_text()}")


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[Server]:
    """A `tasklift server` on SQLite or PostgreSQL (parametrized), on a free port."""
    srv = start_server(db_url, tmp_path / "server-home")
    yield srv
    srv.stop()



@pytest.fixture
def stomp_url() -> str:
    """A private destination prefix on RabbitMQ's STOMP plugin (enabled here when it is off)."""
    from stomp_broker import private_stomp_url, require_stomp

    return private_stomp_url(require_stomp())
