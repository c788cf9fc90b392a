"""Request and response bodies of the REST API (pydantic), one family per resource."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "DagPublic",
    "EdgePublic",
    "JobIn",
    "JobPublic",
    "JobSpecPublic",
    "JobsPublic",
    "LogsPublic",
    "OutcomeIn",
    "RefIn",
    "ResultPublic",
    "ResultsPage",
    "WorkCreate",
    "WorkPublic",
    "WorkflowCreate",
    "WorkflowFinish",
    "WorkflowPublic",
    "WorkflowsPublic",
    "WorksPublic",
]

SHA256 = r"^[0-9a-f]{64}$"
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
"""The integers JSON values are stored with (orjson): larger ones are refused, not rounded."""


def _storable_json(value: Any) -> Any:
    """Refuse what stored JSON cannot hold exactly: NaN/Infinity and integers beyond 64 bits."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                digits = str(abs(item))
                raise ValueError(
                    f"integer {digits[:12]}... ({len(digits)} digits) does not fit in the 64 "
                    "bits JSON numbers are stored with; pass it as a string"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{item} is not a JSON number (JSON has no NaN or Infinity)")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


JsonValue = Annotated[Any, AfterValidator(_storable_json)]
"""Any JSON value the server stores as it came (checked by :func:`_storable_json`)."""


class _Body(BaseModel):
    # JSON has no NaN or Infinity (Python's parser accepts them): refused in float fields too
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class WorkflowCreate(_Body):
    """Register a workflow run."""

    name: str = Field(min_length=1, max_length=200)
    function: str = Field(min_length=1, max_length=500)
    source_dir: str | None = Field(default=None, max_length=4096)
    archive_sha: str | None = Field(default=None, pattern=SHA256)
    archive_size: int | None = Field(default=None, ge=0, le=2**62)
    init_env: str | None = Field(default=None, max_length=4096)
    backend: str = Field(default="local", min_length=1, max_length=200)
    fresh: bool = False
    arguments: JsonValue = None
    parent_id: int | None = Field(default=None, ge=1, le=2_147_483_647)
    """The workflow this one runs inside (a sub-workflow)."""
    remote: bool = False
    """Run the workflow function itself as a job here (``arguments``: ``{args, kwargs}``)."""
    script: str | None = Field(default=None, max_length=4096)
    """Remote workflows: the script inside the archive that defines ``function``."""


class WorkflowFinish(_Body):
    """The end of a workflow run, reported by whoever ran its function."""

    status: Literal["finished", "failed"]
    result: JsonValue = None
    error: str | None = Field(default=None, max_length=1_000_000)


class WorkflowPublic(BaseModel):
    """A workflow as the API shows it."""

    id: int
    name: str
    owner: str
    status: str
    function: str
    source_dir: str | None
    archive_sha: str | None
    archive_size: int | None
    init_env: str | None
    backend: str
    fresh: bool
    created_at: float
    finished_at: float | None
    error: str | None
    result: Any = None
    arguments: Any = None
    """The workflow function's arguments (``{"args": [...], "kwargs": {...}}``) when JSON."""
    n_works: int = 0
    n_jobs: int = 0
    n_finished: int = 0
    n_failed: int = 0
    n_cancelled: int = 0
    token: str | None = None
    """Only when a workflow runner's job token created this sub-workflow: the job token of the
    sub-workflow's runner (its works and its end are reported with it)."""


class WorkflowsPublic(BaseModel):
    """A page of workflows, newest first."""

    data: list[WorkflowPublic]
    count: int


class RefIn(_Body):
    """An input of a job taken from another work's job(s) (data-flow)."""

    arg: str = Field(min_length=1, max_length=200)
    work_id: int = Field(ge=1, le=2_147_483_647)
    idx: int | None = Field(default=None, ge=0, le=2_147_483_647)
    mode: Literal["each", "job", "all"]


class JobIn(_Body):
    """One job of a new work: its key and serialized ``{"args", "kwargs"}`` (base64)."""

    key: str = Field(pattern=SHA256)
    payload: str = Field(max_length=16 * 1024 * 1024)
    refs: list[RefIn] = Field(default_factory=list, max_length=1000)


class WorkCreate(_Body):
    """A new work with all its jobs, in one request."""

    workflow_id: int = Field(ge=1, le=2_147_483_647)
    name: str = Field(min_length=1, max_length=200)
    function: str = Field(min_length=1, max_length=500)
    script: str | None = Field(default=None, max_length=4096)
    serializer: Literal["json", "pickle"] = "json"
    timeout: float | None = Field(default=None, gt=0)
    retries: int = Field(default=2, ge=0, le=100)
    init_env: str | None = Field(default=None, max_length=4096)
    backend: str | None = Field(default=None, max_length=200)
    resources: dict[str, JsonValue] = Field(default_factory=dict)
    min_success: float = Field(default=1.0, ge=0.0, le=1.0)
    map_results: bool = False
    reuse: bool = True
    when: str | None = Field(default=None, max_length=1024 * 1024)
    """``when=`` predicate, cloudpickled, base64 (applied by the job runner)."""
    when_arg: str | None = Field(default=None, max_length=200)
    jobs: list[JobIn] = Field(min_length=1, max_length=2_000_000)


class WorkPublic(BaseModel):
    """A work as the API shows it."""

    id: int
    workflow_id: int
    seq: int
    name: str
    function: str
    script: str | None
    archive_sha: str | None
    status: str
    options: dict[str, Any]
    n_jobs: int
    n_finished: int
    n_failed: int
    n_cancelled: int
    n_reused: int
    n_skipped: int = 0
    created_at: float
    finished_at: float | None


class EdgePublic(BaseModel):
    """A data dependency: ``work_id`` takes ``arg`` from ``upstream_work_id`` (mode)."""

    work_id: int
    upstream_work_id: int
    arg: str
    mode: str


class DagPublic(BaseModel):
    """A workflow's works and the edges between them (data-flow and submission order)."""

    works: list[WorkPublic]
    edges: list[EdgePublic]
    children: list[int]


class WorksPublic(BaseModel):
    """The works of a workflow, in submission order."""

    data: list[WorkPublic]
    count: int


class JobPublic(BaseModel):
    """A job as the API shows it (kwargs and result decoded when they are JSON)."""

    id: int
    work_id: int
    idx: int
    key: str
    state: str
    attempts: int
    kwargs: Any = None
    result: Any = None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    backend_handle: str | None
    reused_from: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None


class JobsPublic(BaseModel):
    """A page of a work's jobs, in submission order."""

    data: list[JobPublic]
    count: int


class LogsPublic(BaseModel):
    """A job's captured output (head and tail kept when long)."""

    job_id: int
    stdout: str
    stderr: str


class ResultPublic(BaseModel):
    """A terminal job in the results stream; ``result`` is the serialized value, base64."""

    job_id: int
    idx: int
    state: str
    result: str | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    attempts: int
    done_seq: int


class ResultsPage(BaseModel):
    """Results after a cursor; pass ``cursor`` back as ``since`` to continue."""

    data: list[ResultPublic]
    cursor: int
    done: bool


class JobSpecPublic(BaseModel):
    """What a remote job runner needs to run one job (its job token fetches it)."""

    job_id: int
    work_id: int
    workflow_id: int
    attempt: int
    name: str
    function: str
    script: str | None
    archive_sha: str | None
    serializer: str
    timeout: float | None
    init_env: str | None
    resources: dict[str, Any]
    payload: str
    """Serialized ``{"args", "kwargs"}``, base64, with inputs from upstream jobs filled in."""
    when: str | None = None
    when_arg: str | None = None
    heartbeat_interval: float = 10.0
    """Seconds between the runner's heartbeats (the monitor's timeout is several of these)."""


class OutcomeIn(_Body):
    """A remote job runner's report of one attempt."""

    attempt: int = Field(ge=1, le=1000)
    ok: bool
    result: str | None = Field(default=None, max_length=64 * 1024 * 1024)
    error_type: str | None = Field(default=None, max_length=300)
    error_message: str | None = Field(default=None, max_length=100_000)
    traceback: str | None = Field(default=None, max_length=1_000_000)
    retryable: bool = True
    skipped: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    stdout: str | None = Field(default=None, max_length=1_000_000)
    stderr: str | None = Field(default=None, max_length=1_000_000)
