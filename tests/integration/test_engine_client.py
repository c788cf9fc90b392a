"""Both implementations of :class:`~tasklift.api.client.EngineClient` (the embedded engine and
``HttpService`` against a real ``tasklift server``) answer every member of the interface, with
results of the same types and meaning.

Every member of the Protocol has a check in :data:`CHECKS`: a member added without one fails
:func:`test_every_member_of_the_interface_is_checked`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import workfns

from tasklift.api.client import WORK_ROW_KEYS, EngineClient
from tasklift.api.remote import HttpService
from tasklift.api.submit import submit_work
from tasklift.api.workflow_run import WorkflowRun
from tasklift.archive import PackedArchive, pack_source, state_paths
from tasklift.backends.local import LocalBackend
from tasklift.bus.base import Bus
from tasklift.db.session import create_db_engine, upgrade
from tasklift.embedded import build_engine
from tasklift.errors import ConfigError
from tasklift.records import ResultRecord
from tasklift.service.auth import Authenticator
from tasklift.settings import Settings
from tasklift.states import JobState, WorkflowState, WorkState

HERE = Path(__file__).resolve().parent
TIMEOUT = 60.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def embedded(settings: Settings) -> Iterator[EngineClient]:
    engine = build_engine(settings)
    yield engine
    engine.close()


@pytest.fixture
def http(tmp_path: Path) -> Iterator[EngineClient]:
    """An ``HttpService`` talking to a ``tasklift server`` (SQLite) started for the test."""
    home = tmp_path / "server-home"
    db_url = f"sqlite:///{tmp_path / 'server.db'}"
    db = create_db_engine(db_url)
    upgrade(db)
    server_settings = Settings(home=home, db_url=db_url, workers=2, quiet=True)
    token = Authenticator(db=db, settings=server_settings).create_token(user="alice")[1]
    db.dispose()
    port = _free_port()
    log = tmp_path / "server.log"
    env = dict(os.environ, TASKLIFT_HOME=str(home), TASKLIFT_WORKERS="2")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasklift.cli", "server", "--db", db_url, "--port", str(port),
             "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert proc.poll() is None, f"server exited early:\n{log.read_text()}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server did not start:\n{log.read_text()}"
            time.sleep(0.1)
        client = HttpService(url, token, Settings(home=tmp_path / "client-home", quiet=True))
        yield client
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Scenario:
    """One client taken through every member of the interface, in a workflow's order; each
    check returns what both implementations must agree on."""

    def __init__(self, client: EngineClient) -> None:
        self.client = client
        self.packed: PackedArchive = pack_source(HERE, skip=state_paths(client.settings))
        self.archive_file: str | None = None
        self.workflow_id = 0
        self.run: WorkflowRun | None = None
        self.work_id = 0
        self.sleeping: Any = None

    def _run(self) -> WorkflowRun:
        assert self.run is not None, "create_workflow runs first"
        return self.run

    def _wait_until(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not done():
            assert time.monotonic() < deadline, f"{what}: not within {TIMEOUT} s"
            time.sleep(0.1)

    # ------------------------------------------------------------------ the checks
    def settings(self) -> Any:
        assert isinstance(self.client.settings, Settings)
        return type(self.client.settings.cache_dir).__name__

    def bus(self) -> Any:
        assert isinstance(self.client.bus, Bus)
        self.client.bus.subscribe("work.999999", lambda messages: None).close()
        return "subscribed"

    def store_archive(self) -> Any:
        stored = self.client.store_archive(self.packed)
        assert stored is None or Path(stored).is_file()  # a path on this machine, or the server's
        assert self.client.store_archive(self.packed) == stored  # once per hash
        self.archive_file = stored
        return "stored"

    def create_workflow(self) -> Any:
        self.workflow_id = self.client.create_workflow(
            name="interface",
            function="workfns:flow",
            source_dir=str(HERE),
            archive_sha=self.packed.sha256,
            archive_size=len(self.packed.data),
            init_env=None,
            backend="local",
            fresh=False,
            arguments=b'{"args": [], "kwargs": {}}',
        )
        assert isinstance(self.workflow_id, int) and self.workflow_id > 0
        self.run = WorkflowRun(
            engine=self.client,
            workflow_id=self.workflow_id,
            name="interface",
            source_dir=HERE,
            archive_sha=self.packed.sha256,
            archive_file=self.archive_file,
            init_env=None,
            backend="local",
            fresh=False,
            show_progress=False,
        )
        return "created"

    def for_workflow(self) -> Any:
        # a workflow created with a user's token is acted for by the same client
        assert self.client.for_workflow(self.workflow_id) is self.client
        return "same client"

    def submit_work(self) -> Any:
        work = submit_work(self._run(), workfns.add, (), {"y": 10}, [{"x": 1}, {"x": 2}], True)
        self.work_id = work.work_id
        assert work.results(timeout=TIMEOUT) == [11, 12]
        return ("results", work.results())

    def wait_stored(self) -> Any:
        assert self.client.wait_stored(self.work_id, TIMEOUT) is True
        return True

    def store_error(self) -> Any:
        assert self.client.store_error(self.work_id) is None
        return None

    def results(self) -> Any:
        records = self.client.results(self.work_id)
        assert all(isinstance(r, ResultRecord) for r in records)
        assert len(self.client.results(self.work_id, 0, 1)) == 1
        assert self.client.results(self.work_id, since=len(records)) == []
        return sorted((r.idx, r.state, r.result, r.attempts) for r in records)

    def work_row(self) -> Any:
        row = self.client.work_row(self.work_id)
        assert isinstance(row, dict) and set(row) >= WORK_ROW_KEYS
        assert row["id"] == self.work_id and row["workflow_id"] == self.workflow_id
        return {k: row[k] for k in sorted(WORK_ROW_KEYS - {"id", "workflow_id"})}

    def running_count(self) -> Any:
        assert self.client.running_count(self.work_id) == 0  # a finished work
        work = submit_work(
            self._run(), workfns.sleep_then, (), {"delay": 120.0}, [{"x": 1}, {"x": 2}], True
        )
        self.sleeping = work
        self._wait_until(
            "both jobs handed out", lambda: self.client.running_count(work.work_id) == 2
        )
        return 2

    def cancel_work(self) -> Any:
        work = self.sleeping
        cancelled = self.client.cancel_work(work.work_id)
        self._wait_until("cancelled", lambda: work.status == WorkState.CANCELLED)
        assert self.client.running_count(work.work_id) == 0
        assert self.client.cancel_work(work.work_id) == 0  # nothing left to cancel
        work.close()
        return (cancelled, [r.state for r in self.client.results(work.work_id)])

    def add_backend(self) -> Any:
        backend = LocalBackend(workers=1)
        try:
            self.client.add_backend("extra", backend)
        except ConfigError as exc:  # a server: objects cannot travel there
            assert "embedded engine" in str(exc)
            backend.close()
            return "refused"
        return "added"

    def finish_workflow(self) -> Any:
        self.client.finish_workflow(self.workflow_id, WorkflowState.FINISHED, b"3", None)
        return "finished"

    def close(self) -> Any:
        self.client.close()
        return "closed"


CHECKS: list[str] = [
    "settings",
    "bus",
    "store_archive",
    "create_workflow",
    "for_workflow",
    "submit_work",
    "wait_stored",
    "store_error",
    "results",
    "work_row",
    "running_count",
    "cancel_work",
    "add_backend",
    "finish_workflow",
    "close",
]
"""Every member of :class:`EngineClient`, in the order the scenario calls them."""

DIFFERENT = {"add_backend": ("added", "refused")}
"""Where the two sides differ by design: (embedded, HTTP)."""


def protocol_members() -> set[str]:
    """The members a class must have to be an :class:`EngineClient`."""
    return {name for name in vars(EngineClient) if not name.startswith("_")} | set(
        EngineClient.__annotations__
    )


def observe(client: EngineClient) -> dict[str, Any]:
    scenario = Scenario(client)
    return {name: getattr(scenario, name)() for name in CHECKS}


def test_every_member_of_the_interface_is_checked() -> None:
    assert protocol_members() == set(CHECKS)
    assert len(CHECKS) == len(set(CHECKS))


def test_both_implementations_are_engine_clients(
    embedded: EngineClient, http: EngineClient
) -> None:
    assert isinstance(embedded, EngineClient)
    assert isinstance(http, EngineClient)
    assert not isinstance(object(), EngineClient)


def test_both_implementations_answer_alike(embedded: EngineClient, http: EngineClient) -> None:
    seen = {"embedded": observe(embedded), "http": observe(http)}
    for name in CHECKS:
        local, remote = seen["embedded"][name], seen["http"][name]
        if name in DIFFERENT:
            assert (local, remote) == DIFFERENT[name], name
        else:
            assert local == remote, f"{name}: embedded {local!r}, over HTTP {remote!r}"
    assert seen["embedded"]["work_row"]["status"] == WorkState.FINISHED.value
    assert seen["embedded"]["cancel_work"] == (2, [JobState.CANCELLED.value] * 2)
