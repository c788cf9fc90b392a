"""A work submission, built in one place: its spec, typed options, memo key and jobs.

The bottom of the house (it imports only other bottom modules). Every path that makes or
remakes a :class:`~tasklift.records.WorkSpec` goes through here:

- :func:`build_submission`: a new work, from the client (``api/submit.py``) or a service route
  (``service/routes/works.py``, the one job of a remote workflow in ``routes/workflows.py``);
- :func:`spec_from_row`: a stored work read back (recovery, the job API's spec);
- :func:`runner_spec` / :func:`work_spec_from_runner`: the JSON form a remote job runner gets
  (``GET /jobs/{id}/spec``, or handed over with the job by Dask) and reads;
- :func:`request_body`: the ``POST /works`` body a client sends a server.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tasklift.keys import memo_key as memo_key_of
from tasklift.records import JobSpec, WorkOptions, WorkSpec

__all__ = [
    "Submission",
    "WorkCode",
    "build_submission",
    "request_body",
    "runner_spec",
    "spec_from_row",
    "work_spec_from_runner",
]

Jobs = Sequence[tuple[str, bytes]]
"""A work's jobs: ``(key, payload)`` each (a lazy sequence for a large client work)."""


@dataclass(frozen=True)
class WorkCode:
    """What a work runs and where its code comes from: the :class:`WorkSpec` fields of the
    same names (``name``, ``function``, ``script``, ``archive_sha``, ``archive_file``,
    ``cache_dir``)."""

    name: str
    function: str
    script: str | None
    archive_sha: str | None
    archive_file: str | None
    cache_dir: str


@dataclass(frozen=True)
class Submission:
    """Everything a new work carries to the engine (``EngineClient.submit_work``).

    Attributes:
        workflow_id: the workflow the work belongs to.
        spec: what its job runners need (``work_id`` is 0 until it is stored).
        options: the typed options stored with it (``works.options``).
        memo_key: finished jobs of works with the same memo key and job key are reused.
        jobs: ``(key, payload)`` per job, in submission order.
        reuse: whether finished jobs of earlier works may be reused.
        refs: per job, its inputs from other works (``db.dataflow.Ref``), or ``None``.
        require_running: the store first checks that the workflow still runs (service).
    """

    workflow_id: int
    spec: WorkSpec
    options: WorkOptions
    memo_key: str
    jobs: Jobs
    reuse: bool = True
    refs: Sequence[Sequence[Any]] | None = None
    require_running: bool = False

    @property
    def min_success(self) -> float:
        """The share of jobs that must finish for the work to count as finished."""
        return self.options.min_success


_CODE_FIELDS = tuple(f.name for f in fields(WorkCode))
_OPTION_FIELDS = tuple(
    f.name for f in fields(WorkOptions) if f.name in WorkSpec.__dataclass_fields__
)
"""The options a job runner needs too (all but ``map_results`` and ``min_success``)."""


def _spec(
    code: WorkCode, options: WorkOptions, work_id: int, workflow_id: int, when: bytes | None
) -> WorkSpec:
    """The one mapping of a work's code and options onto its spec."""
    shared = {name: getattr(code, name) for name in _CODE_FIELDS}
    shared.update((name, getattr(options, name)) for name in _OPTION_FIELDS)
    return WorkSpec(work_id=work_id, workflow_id=workflow_id, when=when, **shared)


def build_submission(
    workflow_id: int,
    code: WorkCode,
    options: WorkOptions,
    jobs: Jobs,
    *,
    when: bytes | None = None,
    owner: str | None = None,
    memo_key: str | None = None,
    reuse: bool = True,
    refs: Sequence[Sequence[Any]] | None = None,
    require_running: bool = False,
) -> Submission:
    """The one builder of a new work's submission.

    The memo key is :func:`tasklift.keys.memo_key` of the archive, function, script,
    serializer and ``when`` predicate; a server passes the workflow's ``owner`` (memo reuse
    never crosses users). ``memo_key`` replaces it for a work that must never share results
    with another (a remote workflow's own job). ``refs`` without any input become ``None``.
    """
    if memo_key is None:
        memo_key = memo_key_of(
            code.archive_sha, code.function, code.script, options.serializer,
            owner=owner, when=when,
        )  # fmt: skip
    return Submission(
        workflow_id=workflow_id,
        spec=_spec(code, options, 0, 0, when),
        options=options,
        memo_key=memo_key,
        jobs=jobs,
        reuse=reuse,
        refs=refs if refs and any(refs) else None,
        require_running=require_running,
    )


def spec_from_row(
    row: Mapping[str, Any],
    *,
    options: WorkOptions | None = None,
    cache_dir: str = "",
    archive_file: Callable[[str], str] | None = None,
) -> WorkSpec:
    """The spec of a stored work (a ``works`` row), its options read once unless given.

    ``archive_file`` tells where an archive lives on this host (``Engine.archive_file``);
    without it the spec has none (enough for the job API's answer).
    """
    if options is None:
        options = WorkOptions.from_json(row["options"])
    sha = row["archive_sha"]
    file = archive_file(sha) if sha and archive_file is not None else None
    code = WorkCode(row["name"], row["function"], row["script"], sha, file, cache_dir)
    return _spec(code, options, int(row["id"]), int(row["workflow_id"]), row.get("when_predicate"))


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data else None


def runner_spec(spec: WorkSpec, job: JobSpec | None = None) -> dict[str, Any]:
    """The JSON form of a work's spec a remote job runner reads (:func:`work_spec_from_runner`),
    with ``job_id`` and ``payload`` (base64) when ``job`` is given.

    ``GET /jobs/{id}/spec`` answers it (plus the attempt, set-up and heartbeat interval); a
    backend that hands the spec over with the job (Dask) sends it as it is.
    """
    out: dict[str, Any] = {} if job is None else {"job_id": job.job_id}
    out.update(
        work_id=spec.work_id,
        workflow_id=spec.workflow_id,
        name=spec.name,
        function=spec.function,
        script=spec.script,
        archive_sha=spec.archive_sha,
        serializer=spec.serializer,
        timeout=spec.timeout,
    )
    if job is not None:
        out["payload"] = base64.b64encode(job.payload).decode()
    out.update(when=_b64(spec.when), when_arg=spec.when_arg)
    return out


def work_spec_from_runner(
    d: Mapping[str, Any], *, cache_dir: str | Path, service_url: str | None
) -> WorkSpec:
    """The spec a remote runner rebuilds from :func:`runner_spec`'s form: archives are kept
    under ``cache_dir``/archives, extracted under ``cache_dir``/cache."""
    sha = d.get("archive_sha")
    root = Path(cache_dir)
    return WorkSpec(
        work_id=int(d["work_id"]),
        name=d["name"],
        function=d["function"],
        script=d.get("script"),
        archive_sha=sha,
        archive_file=str(root / "archives" / f"{sha}.tar.gz") if sha else None,
        cache_dir=str(root / "cache"),
        serializer=d.get("serializer", "json"),
        timeout=d.get("timeout"),
        workflow_id=int(d.get("workflow_id") or 0),
        service_url=service_url,
        when=base64.b64decode(d["when"]) if d.get("when") else None,
        when_arg=d.get("when_arg"),
    )


def _ref_dict(ref: Any) -> dict[str, Any]:
    """A data-flow input (``db.dataflow.Ref``, a dataclass) as the API takes it."""
    return dict(vars(ref))


def request_body(submission: Submission) -> dict[str, Any]:
    """The ``POST /works`` body of a submission (a server rebuilds it with
    :func:`build_submission`, adding the workflow's archive and owner)."""
    spec, options, refs = submission.spec, submission.options, submission.refs
    return {
        "workflow_id": submission.workflow_id,
        "name": spec.name,
        "function": spec.function,
        "script": spec.script,
        "serializer": spec.serializer,
        "timeout": spec.timeout,
        "retries": spec.retries,
        "init_env": spec.init_env,
        "backend": spec.backend,
        "resources": spec.resources,
        "min_success": options.min_success,
        "map_results": options.map_results,
        "reuse": submission.reuse,
        "jobs": [
            {
                "key": key,
                "payload": base64.b64encode(p).decode(),
                **({"refs": [_ref_dict(r) for r in refs[i]]} if refs and refs[i] else {}),
            }
            for i, (key, p) in enumerate(submission.jobs)
        ],
        "when": _b64(spec.when),
        "when_arg": spec.when_arg,
    }
