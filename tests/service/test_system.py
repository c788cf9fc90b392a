"""/health and /metrics: no auth, DB round trip, Prometheus text format, one registry per app."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, update
from starlette.exceptions import StarletteDeprecationWarning

from tasklift.db.jobs import insert_jobs
from tasklift.db.models import Job
from tasklift.db.session import create_db_engine, upgrade
from tasklift.db.workflows import finish_workflow
from tasklift.db.works import bump_work_counters, insert_work
from tasklift.service.app import create_app
from tasklift.service.metrics import ServiceMetrics, observe_result_latency
from tasklift.settings import Settings
from tasklift.states import JobState

with warnings.catch_warnings():  # starlette 1.x asks for httpx2; the venv has httpx
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient


def _settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path}/t.db"
    db = create_db_engine(url)
    upgrade(db)
    db.dispose()
    return Settings(home=tmp_path / "home", db_url=url, workers=1, quiet=True)


def _state(client: TestClient) -> Any:
    app = client.app
    assert isinstance(app, FastAPI)
    return app.state


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path))) as c:
        yield c


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_health_ok_without_auth(client: TestClient) -> None:
    resp = client.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "db": "ok"}


def test_health_503_when_the_db_is_down(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = create_engine(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    monkeypatch.setattr(_state(client), "engine", SimpleNamespace(db=broken))
    try:
        resp = client.get("/health")
        assert resp.status_code == 503
        assert "database unavailable" in resp.json()["detail"]
        assert client.get("/metrics").status_code == 503
    finally:
        broken.dispose()


def test_metrics_names_and_format(client: TestClient) -> None:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(resp.text)}
    assert {
        "tasklift_jobs",
        "tasklift_queue_depth",
        "tasklift_workflows",
        "tasklift_result_latency_seconds",
    } <= names
    samples = _samples(resp.text)
    assert samples[("tasklift_queue_depth", ())] == 0
    for state in ("pending", "queued", "running", "finished", "failed", "cancelled"):
        assert samples[("tasklift_jobs", (("state", state),))] == 0
    assert samples[("tasklift_workflows", (("status", "running"),))] == 0
    assert samples[("tasklift_result_latency_seconds_count", ())] == 0


def test_metrics_count_jobs_workflows_and_latency(client: TestClient) -> None:
    engine = _state(client).engine
    workflow_id = engine.create_workflow(name="wf", function="main:wf", owner="alice")
    states = [
        JobState.PENDING,
        JobState.PENDING,
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.FINISHED,
        JobState.FAILED,
    ]
    with engine.db.begin() as conn:
        work_id = insert_work(
            conn,
            workflow_id=workflow_id,
            seq=0,
            name="w",
            function="main:f",
            memo_key="m" * 64,
            status="running",
            options="{}",
            n_jobs=len(states),
        )
        ids = insert_jobs(conn, work_id, [(f"k{i}", b"") for i in range(len(states))])
        for job_id, state in zip(ids, states, strict=True):
            conn.execute(update(Job).where(Job.id == job_id).values(state=state.value))
        bump_work_counters(conn, work_id, 1, 1, 0)
    done = engine.create_workflow(name="old", function="main:wf", owner="bob")
    with engine.db.begin() as conn:
        finish_workflow(conn, done, "finished", None, None)

    _state(client).metrics.observe_result_latency(0.2)
    observe_result_latency(_state(client).metrics, 3.0)
    observe_result_latency(None, 1.0)  # metrics off: a no-op

    samples = _samples(client.get("/metrics").text)
    jobs = {
        labels[0][1]: value for (name, labels), value in samples.items() if name == "tasklift_jobs"
    }
    assert jobs == {
        "pending": 2,
        "queued": 1,
        "running": 1,
        "lost": 0,
        "finished": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert samples[("tasklift_queue_depth", ())] == 2
    assert samples[("tasklift_workflows", (("status", "running"),))] == 1
    assert samples[("tasklift_workflows", (("status", "finished"),))] == 1
    assert samples[("tasklift_result_latency_seconds_count", ())] == 2
    assert samples[("tasklift_result_latency_seconds_sum", ())] == pytest.approx(3.2)
    assert samples[("tasklift_result_latency_seconds_bucket", (("le", "0.25"),))] == 1
    assert samples[("tasklift_result_latency_seconds_bucket", (("le", "+Inf"),))] == 2


def test_each_app_has_its_own_registry(client: TestClient, tmp_path: Path) -> None:
    other_home = tmp_path / "other"
    other_home.mkdir()
    with TestClient(create_app(_settings(other_home))) as other:
        _state(client).metrics.observe_result_latency(1.0)
        assert _state(other).metrics is not _state(client).metrics
        counts = [
            _samples(c.get("/metrics").text)[("tasklift_result_latency_seconds_count", ())]
            for c in (client, other)
        ]
    assert counts == [1, 0]
    # two registries in one process: no "Duplicated timeseries" error
    assert ServiceMetrics().registry is not ServiceMetrics().registry
