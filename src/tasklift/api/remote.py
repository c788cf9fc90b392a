"""The client side of a ``tasklift server``: the engine interface the client API uses,
spoken over HTTP (bulk work creation, archive upload by hash, results by cursor).

A new work costs one request: ``POST /works?wait=...`` creates it and streams its results
back (one JSON page per line) on the same connection; a work that outlives the stream is
followed with long polls of ``GET /works/{id}/results`` from the last cursor.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from tasklift.api.answers import mask_service_url, mask_token, raise_for_status
from tasklift.api.http import NDJSON, HttpClient, PollBus, record_from_json
from tasklift.api.http import ResultStream as _ResultStream
from tasklift.archive import PackedArchive
from tasklift.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    ServiceError,
    WorkflowFailedError,
)
from tasklift.records import ResultRecord, WorkSpec
from tasklift.states import WorkflowState
from tasklift.submission import Submission, request_body

if TYPE_CHECKING:
    from collections.abc import Callable

    from tasklift.backends.base import Backend
    from tasklift.engine.engine import WorkRecord
    from tasklift.settings import Settings

__all__ = ["HttpService", "mask_service_url", "mask_token"]

logger = logging.getLogger(__name__)


class HttpService(HttpClient):
    """Talks to ``tasklift server`` with a bearer token; used by ``Workflow(service=URL)``."""

    def __init__(self, url: str, token: str | None, settings: Settings) -> None:
        super().__init__(url, token)
        self.settings = settings
        self._child_tokens: dict[int, str] = {}  # sub-workflows' runner tokens, by id
        self._streams: dict[int, _ResultStream] = {}  # new works' answers, until subscribed
        self.bus = PollBus(self, self._streams)

    # ------------------------------------------------------------------ engine interface
    def create_workflow(self, **values: Any) -> int:
        """Register a workflow run on the server."""
        arguments = values.pop("arguments", None)
        keys = (
            "name",
            "function",
            "source_dir",
            "archive_sha",
            "archive_size",
            "init_env",
            "backend",
            "fresh",
            "parent_id",
        )
        body = {k: values.get(k) for k in keys if values.get(k) is not None}
        body["fresh"] = bool(values.get("fresh"))
        body["arguments"] = orjson.loads(arguments) if arguments else None
        created = self.post("/workflows", body)
        workflow_id = int(created["id"])
        if created.get("token"):  # a sub-workflow made by a workflow runner: its own token
            self._child_tokens[workflow_id] = created["token"]
        return workflow_id

    def for_workflow(self, workflow_id: int) -> HttpService:
        """The client that acts for workflow ``workflow_id``: this one, or, for a sub-workflow
        created with a workflow runner's token, a client with the sub-workflow's own token
        (the caller closes it)."""
        token = self._child_tokens.pop(workflow_id, None)
        if token is None:
            return self
        child = HttpService(self.url, token, self.settings)
        child._reached = self._reached
        return child

    def finish_workflow(
        self, workflow_id: int, status: WorkflowState, result: bytes | None, error: str | None
    ) -> None:
        """Store the end of a workflow run on the server.

        Raises:
            WorkflowFailedError: the workflow was cancelled meanwhile (by whom and when).
        """
        try:
            self.post(
                f"/workflows/{workflow_id}/finish",
                {
                    "status": status.value,
                    "result": orjson.loads(result) if result is not None else None,
                    "error": error,
                },
            )
        except ConflictError:  # it already ended: cancelled, or stored by an earlier try
            row = self.get(f"/workflows/{workflow_id}")
            if row["status"] == status.value:
                return
            if row["status"] == WorkflowState.CANCELLED.value:
                when = time.strftime(
                    "%Y-%m-%d %H:%M:%S %Z", time.localtime(row.get("finished_at") or time.time())
                )
                reason = row.get("error") or "cancelled"
                raise WorkflowFailedError(
                    workflow_id, row["status"], f"{reason} at {when}"
                ) from None
            raise

    def store_archive(self, packed: PackedArchive) -> str | None:
        """Upload the archive unless the server has this hash already."""
        path = f"/archives/{packed.sha256}"
        try:
            self.request("HEAD", path)
            return None
        except NotFoundError:
            pass
        self.request(
            "PUT",
            path,
            content=packed.data,
            headers={"Content-Type": "application/gzip"},
            timeout=300,
        )
        return None

    def submit_work(
        self, submission: Submission, on_stored: Callable[[WorkRecord], None] | None = None
    ) -> tuple[WorkSpec, WorkRecord]:
        """Create the work with all its jobs in one request."""
        from tasklift.engine.engine import WorkRecord

        spec = submission.spec
        body = request_body(submission)
        work, stream = self._create_work(body)
        record = WorkRecord(work_id=work["id"], n_jobs=work["n_jobs"], n_reused=work["n_reused"])
        if stream is not None:
            self._streams[record.work_id] = stream  # taken by the subscription on_stored makes
        try:
            if on_stored is not None:
                on_stored(record)
        finally:
            unclaimed = self._streams.pop(record.work_id, None)
            if unclaimed is not None:
                unclaimed.close()
        return spec, record

    def _create_work(self, body: dict[str, Any]) -> tuple[dict[str, Any], _ResultStream | None]:
        """``POST /works?wait=...``: the new work, and the stream of its results."""
        request = self._client.build_request(
            "POST", self._create_url, content=orjson.dumps(body), headers=self._json, timeout=600
        )
        response = self._send("POST", "/works", lambda: self._client.send(request, stream=True))
        try:
            if response.status_code >= 400 or not response.headers.get(
                "content-type", ""
            ).startswith(NDJSON):
                response.read()  # an error, or a server that does not stream: the work alone
                raise_for_status("POST", "/works", response)
                response.close()
                return response.json(), None
            lines = response.iter_lines()
            work = orjson.loads(next(lines))
        except (StopIteration, httpx.HTTPError, ValueError) as exc:
            response.close()
            raise ServiceError(f"POST /works: the answer broke off: {exc!r}") from exc
        except BaseException:
            response.close()
            raise
        return work, _ResultStream(response, lines)

    def results(self, work_id: int, since: int = 0, limit: int | None = None) -> list[ResultRecord]:
        """Every result after cursor ``since`` (pages through the API)."""
        out: list[ResultRecord] = []
        while True:
            page = self.get(
                f"/works/{work_id}/results",
                params={"since": since, "limit": min(limit or 10_000, 10_000)},
            )
            out.extend(record_from_json(item) for item in page["data"])
            if not page["data"] or (limit is not None and len(out) >= limit):
                return out
            since = page["cursor"]

    def work_row(self, work_id: int) -> dict[str, Any]:
        """The work as the API shows it (same counter names as the table)."""
        return dict(self.get(f"/works/{work_id}"))

    def running_count(self, work_id: int) -> int:
        """Jobs of the work handed to a backend right now."""
        page = self.get(f"/works/{work_id}/jobs", params={"state": "running", "limit": 1})
        queued = self.get(f"/works/{work_id}/jobs", params={"state": "queued", "limit": 1})
        return int(page["count"]) + int(queued["count"])

    def cancel_work(self, work_id: int, message: str = "cancelled by the user") -> int:
        """Cancel a work's open jobs; return how many ended as cancelled."""
        before = self.work_row(work_id)["n_cancelled"]
        return int(self.post(f"/works/{work_id}/cancel")["n_cancelled"]) - int(before)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def add_backend(self, name: str, backend: Backend) -> None:
        """Backend objects run only in the embedded engine.

        Raises:
            ConfigError: always (an object cannot travel to a server).
        """
        raise ConfigError(
            "a backend object runs only with the embedded engine (service='local'); on a "
            "server, configure it under a name ([backends.NAME] in tasklift.toml) and pass that"
        )

    def wait_stored(self, work_id: int, timeout: float | None = None) -> bool:
        """True at once: the server answers the create request with the work stored as far
        as a client can tell (a store that stops short there cancels the work's jobs, which
        arrive as cancelled results)."""
        return True

    def store_error(self, work_id: int) -> str | None:
        """``None``: the server reports a store that stopped short as cancelled jobs (see
        :meth:`wait_stored`)."""
        return None
