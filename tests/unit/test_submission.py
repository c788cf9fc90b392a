"""The one submission builder: client and server build the same work from the same call (the
client's ``POST /works`` body read back by the service route), one memo-key formula, typed
options stored and read back, and the runner's JSON form of a spec."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from tasklift.errors import SubmissionError
from tasklift.keys import memo_key
from tasklift.records import JobSpec, WorkOptions
from tasklift.service.principal import Principal
from tasklift.service.routes import works as works_route
from tasklift.service.schemas import JobSpecPublic, WorkCreate
from tasklift.submission import (
    Submission,
    WorkCode,
    build_submission,
    request_body,
    runner_spec,
    spec_from_row,
    work_spec_from_runner,
)

Ref = works_route.Ref  # the data-flow input the route builds (wherever it is defined)
SHA = "ab" * 32
PAYLOADS = [b'{"kwargs":{"x":1}}', b'{"kwargs":{"x":2}}']
JOBS = [(hashlib.sha256(p).hexdigest(), p) for p in PAYLOADS]


def _options(**changes: Any) -> WorkOptions:
    base = WorkOptions(
        map_results=True,
        retries=3,
        timeout=12.5,
        resources={"cores": 2},
        backend="dask",
        init_env="module load x",
        min_success=0.5,
        serializer="json",
        when_arg="x",
    )
    return replace(base, **changes)


def _client(**changes: Any) -> Submission:
    values: dict[str, Any] = {
        "when": b"predicate",
        "refs": [[Ref("x", 3, 0, "each")], [Ref("x", 3, 1, "each")]],
    }
    values.update(changes)
    code = WorkCode("square", "pkg.mod:square", None, SHA, f"/archives/{SHA}.tar.gz", "/cache")
    options = values.pop("options", _options())
    return build_submission(7, code, options, JOBS, **values)


class _Engine:
    """Just what the service route asks of the engine: the submission is kept."""

    settings = SimpleNamespace(cache_dir="/cache")

    def __init__(self) -> None:
        self.submitted: list[Submission] = []

    def archive_file(self, sha: str) -> str:
        return f"/archives/{sha}.tar.gz"

    def submit_work(self, submission: Submission, on_stored: Any = None) -> tuple[Any, Any]:
        self.submitted.append(submission)
        return submission.spec, SimpleNamespace(work_id=1, n_jobs=len(submission.jobs))


def _serve(body: dict[str, Any], owner: str = "alice", fresh: bool = False) -> Submission:
    """What the service route builds from a client's body (through JSON, as on the wire)."""
    workflow = {
        "owner": owner,
        "archive_sha": SHA,
        "backend": "local",
        "init_env": None,
        "fresh": fresh,
    }
    engine = _Engine()
    create = WorkCreate.model_validate_json(json.dumps(body))
    works_route._create(create, engine, {7: workflow}, Principal(user=owner), None)  # type: ignore[arg-type]
    [submission] = engine.submitted
    return submission


def test_client_and_server_build_the_same_work() -> None:
    client = _client()
    server = _serve(request_body(client))
    assert server.spec == client.spec
    assert server.options == client.options
    assert list(server.jobs) == list(client.jobs)
    assert server.refs == client.refs
    assert server.reuse and server.require_running and not client.require_running
    assert server.min_success == client.min_success == 0.5


def test_one_memo_key_formula_the_server_adds_the_owner() -> None:
    client = _client()
    server = _serve(request_body(client), owner="bob")
    assert client.memo_key == memo_key(SHA, "pkg.mod:square", None, "json", when=b"predicate")
    assert server.memo_key == memo_key(
        SHA, "pkg.mod:square", None, "json", owner="bob", when=b"predicate"
    )
    assert server.memo_key != client.memo_key  # memo reuse never crosses users
    assert _serve(request_body(client), owner="carol").memo_key != server.memo_key


def test_memo_keys_of_stored_data_are_kept() -> None:
    """The texts both sides always hashed: existing works keep reusing their jobs."""
    plain = hashlib.sha256(f"{SHA}|m:f|None|json".encode()).hexdigest()
    owned = hashlib.sha256(f"alice|{SHA}|m:f|None|json".encode()).hexdigest()
    assert memo_key(SHA, "m:f", None, "json") == plain
    assert memo_key(SHA, "m:f", None, "json", owner="alice") == owned
    with_when = memo_key(SHA, "m:f", None, "json", when=b"p")
    assert (
        with_when
        == hashlib.sha256(
            f"{SHA}|m:f|None|json|when:{hashlib.sha256(b'p').hexdigest()}".encode()
        ).hexdigest()
    )


def test_server_fills_in_the_workflow_set_up_and_fresh_means_no_reuse() -> None:
    body = request_body(_client(options=_options(init_env=None), refs=None, when=None))
    body.update(backend=None, when_arg=None)
    server = _serve(body, fresh=True)
    assert server.spec.backend == server.options.backend == "local"
    assert server.spec.init_env is None
    assert server.refs is None and not server.reuse


def test_bad_bodies_are_refused() -> None:
    body = request_body(_client(refs=None))
    with pytest.raises(SubmissionError, match="repeats key"):
        _serve({**body, "jobs": [body["jobs"][0], body["jobs"][0]]})
    with pytest.raises(SubmissionError, match="when_arg"):
        _serve({**body, "when_arg": None})
    with pytest.raises(SubmissionError, match="not JSON"):
        job = {**body["jobs"][0], "payload": base64.b64encode(b"{nope").decode()}
        _serve({**body, "jobs": [job]})


def test_options_are_typed_and_round_trip() -> None:
    options = _options(kind="workflow", service_url="http://s")
    assert WorkOptions.from_json(options.to_json()) == options
    assert json.loads(options.to_json())["resources"] == {"cores": 2}
    assert WorkOptions.from_json(None) == WorkOptions.from_json("{}") == WorkOptions()
    old = WorkOptions.from_json('{"backend": null, "retries": 0, "newer": 1}')
    assert old.backend == "local" and old.retries == 0 and old.min_success == 1.0


def test_spec_from_row_rebuilds_the_stored_spec() -> None:
    client = _client()
    row = {
        "id": 11,
        "workflow_id": 7,
        "name": "square",
        "function": "pkg.mod:square",
        "script": None,
        "archive_sha": SHA,
        "options": client.options.to_json(),
        "when_predicate": b"predicate",
    }
    spec = spec_from_row(row, cache_dir="/cache", archive_file=lambda s: f"/archives/{s}.tar.gz")
    assert spec == replace(client.spec, work_id=11, workflow_id=7)
    assert spec_from_row(row).archive_file is None


def test_runner_spec_round_trips_and_is_the_job_api_answer() -> None:
    spec = replace(_client().spec, work_id=11, workflow_id=7)
    job = JobSpec(5, 2, b'{"kwargs":{"x":1}}')
    d = runner_spec(spec, job)
    assert d["job_id"] == 5 and base64.b64decode(d["payload"]) == job.payload
    back = work_spec_from_runner(json.loads(json.dumps(d)), cache_dir="/r", service_url="http://s")
    assert (back.work_id, back.workflow_id, back.function, back.when, back.when_arg) == (
        11, 7, "pkg.mod:square", b"predicate", "x"
    )  # fmt: skip
    assert back.archive_file == f"/r/archives/{SHA}.tar.gz" and back.cache_dir == "/r/cache"
    answer = JobSpecPublic(**d, attempt=2, init_env=None, resources={})
    assert answer.payload == d["payload"] and answer.timeout == 12.5
    assert "job_id" not in runner_spec(spec)
