"""The records every layer shares: work specs and options, job specs, outcomes, results.

The bottom of the house: nothing here imports another tasklift module. A record is built in
one place (:mod:`tasklift.submission` builds a work's spec and options; :meth:`Outcome.failure`
a failed attempt) and read everywhere else.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["JobSpec", "Outcome", "ResultRecord", "WorkOptions", "WorkSpec"]


@dataclass(frozen=True)
class WorkOptions:
    """A work's options as stored with it (``works.options``, JSON) and read back.

    One definition of the stored form: :meth:`to_json` writes it, :meth:`from_json` reads it
    (unknown keys of a newer writer are ignored, missing ones take these defaults).

    Attributes:
        map_results: results are returned as a mapping keyed by the kwargs.
        retries: how many times a failed job is tried again.
        timeout: seconds one attempt may run, or ``None``.
        resources: ``cores``, ``memory_mb``, ``walltime`` hints for batch backends.
        backend: the backend name the jobs run on.
        init_env: command prefix (and ``;``-separated set-up commands) for the job runner.
        min_success: the share of jobs that must finish for the work to count as finished.
        serializer: ``json`` or ``pickle``.
        when_arg: the input a ``when=`` predicate is applied to.
        kind: ``work``, or ``workflow`` for the one job that runs a remote workflow function.
        service_url: where a ``workflow`` job's runner submits its works.
    """

    map_results: bool = False
    retries: int = 2
    timeout: float | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    backend: str = "local"
    init_env: str | None = None
    min_success: float = 1.0
    serializer: str = "json"
    when_arg: str | None = None
    kind: str = "work"
    service_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every option by name (the API's and the pages' form)."""
        return asdict(self)

    def to_json(self) -> str:
        """The stored form (a JSON object)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> WorkOptions:
        """Read the stored form; ``None`` or ``""`` gives the defaults."""
        raw = json.loads(text) if text else {}
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known and v is not None}
        if "resources" in values and not isinstance(values["resources"], dict):
            values["resources"] = {}
        if not values.get("backend"):
            values.pop("backend", None)
        return cls(**values)


@dataclass(frozen=True)
class WorkSpec:
    """What a job runner needs to know about a work, shared by all its jobs.

    Attributes:
        work_id: the work's id.
        name: the work's name (for messages).
        function: ``module:qualname`` of the work function.
        script: the path inside the archive of the script that defines the function when it
            was defined in ``__main__``; ``None`` when ``function``'s module is importable.
        archive_sha: sha256 of the workflow's source archive (``None``: no archive).
        archive_file: where the archive can be read on this host.
        cache_dir: where archives are extracted on this host.
        serializer: ``json`` or ``pickle``.
        timeout: seconds one attempt may run, or ``None``.
        retries: how many times a failed job is tried again.
        init_env: command prefix (and ``;``-separated set-up commands) for the job runner.
        backend: the backend name the jobs run on.
        resources: ``cores``, ``memory_mb``, ``walltime`` hints for batch backends.
        kind: ``work``, or ``workflow`` for the one job that runs a remote workflow's function.
        workflow_id: the workflow the work belongs to.
        service_url: where a ``workflow`` job's runner submits its works.
        when: cloudpickled predicate; the runner skips a job whose ``when_arg`` fails it.
        when_arg: the argument (an upstream result) the predicate is applied to.
    """

    work_id: int
    name: str
    function: str
    script: str | None
    archive_sha: str | None
    archive_file: str | None
    cache_dir: str
    serializer: str = "json"
    timeout: float | None = None
    retries: int = 2
    init_env: str | None = None
    backend: str = "local"
    resources: dict[str, Any] = field(default_factory=dict)
    kind: str = "work"
    workflow_id: int = 0
    service_url: str | None = None
    when: bytes | None = None
    when_arg: str | None = None


@dataclass(frozen=True)
class JobSpec:
    """One attempt of one job handed to a backend.

    Attributes:
        job_id: the job's id.
        attempt: 1 for the first run, 2 for the first retry, ...
        payload: serialized ``{"args": [...], "kwargs": {...}}``.
        token: a short-lived job token for runners that call the service (never stored).
    """

    job_id: int
    attempt: int
    payload: bytes
    token: str | None = field(default=None, repr=False)


@dataclass
class Outcome:
    """What happened to one attempt of one job.

    Attributes:
        job_id: the job's id.
        attempt: the attempt number this outcome is for (stale attempts are ignored).
        ok: the function returned; ``result`` holds the serialized value.
        result: serialized return value when ``ok``.
        error_type: exception class name, or a reason: ``Timeout``, ``WorkerLost``, ...
        error_message: one-line description.
        traceback: formatted traceback, when there is one.
        retryable: ``False`` when running again cannot help (e.g. unserializable result).
        skipped: the work's ``when=`` condition was false: the function did not run.
        started_at: epoch seconds the attempt started.
        finished_at: epoch seconds it ended.
        stdout: captured standard output (head and tail kept).
        stderr: captured standard error (head and tail kept).
    """

    job_id: int
    attempt: int
    ok: bool
    result: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    retryable: bool = True
    skipped: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    stdout: str | None = None
    stderr: str | None = None

    @classmethod
    def failure(
        cls,
        job_id: int,
        attempt: int,
        error_type: str,
        message: str,
        *,
        traceback: str | None = None,
        retryable: bool = True,
        started_at: float | None = None,
        finished_at: float | None = None,
    ) -> Outcome:
        """A failed attempt: the one constructor for failures made outside the function
        (lost workers, time-outs, refused submissions, import errors)."""
        now = time.time()
        return cls(
            job_id,
            attempt,
            ok=False,
            error_type=error_type,
            error_message=message,
            traceback=traceback,
            retryable=retryable,
            started_at=now if started_at is None else started_at,
            finished_at=now if finished_at is None else finished_at,
        )


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """A terminal job as a waiting submitter sees it (DB row or bus message).

    Slotted: a waiting handle of a million-job work holds a million of them (~100 MB less).
    """

    job_id: int
    idx: int
    state: str
    result: bytes | None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    attempts: int = 0
    done_seq: int = 0
