"""The client side of a ``tasklift server``: the engine interface the client API uses,
spoken over HTTP (bulk work creation, archive upload by hash, results by cursor)."""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from tasklift.archive import PackedArchive
from tasklift.bus.base import Bus, Callback, Subscription
from tasklift.engine.specs import ResultRecord, WorkSpec
from tasklift.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ServiceError,
    SubmissionError,
    TaskliftError,
)
from tasklift.states import WorkflowState

if TYPE_CHECKING:
    from collections.abc import Callable

    from tasklift.engine.core import WorkRecord
    from tasklift.settings import Settings

__all__ = ["HttpService", "mask_token"]

logger = logging.getLogger(__name__)

LONG_POLL = 20.0
RETRY_SECONDS = 120.0
"""How long reads keep retrying while the server is away (a restart)."""
_ERRORS: dict[int, type[TaskliftError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: SubmissionError,
    422: SubmissionError,
}


def mask_token(token: str) -> str:
    """A token shortened for messages: never the secret part."""
    return token[:6] + "…" if token else ""


def _record(item: dict[str, Any]) -> ResultRecord:
    data = item.get("result")
    return ResultRecord(
        job_id=item["job_id"],
        idx=item["idx"],
        state=item["state"],
        result=base64.b64decode(data) if data is not None else None,
        error_type=item.get("error_type"),
        error_message=item.get("error_message"),
        traceback=item.get("traceback"),
        attempts=item.get("attempts", 0),
        done_seq=item.get("done_seq", 0),
    )


class _PollSubscription(Subscription):
    def __init__(self, service: HttpService, work_id: int, callback: Callback) -> None:
        self._service = service
        self._work_id = work_id
        self._callback = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"tasklift-results-{work_id}"
        )
        self._thread.start()

    def _run(self) -> None:
        cursor = 0
        backoff = 0.5
        while not self._stop.is_set():
            try:
                page = self._service.get(
                    f"/works/{self._work_id}/results",
                    params={"since": cursor, "wait": LONG_POLL},
                    timeout=LONG_POLL + 30,
                )
            except (ServiceError, httpx.TransportError) as exc:
                logger.warning(
                    "results of work %d: %s; retrying in %.1f s", self._work_id, exc, backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            except TaskliftError:
                logger.exception("results of work %d can no longer be read", self._work_id)
                return
            backoff = 0.5
            records = [_record(item) for item in page["data"]]
            if records and not self._stop.is_set():
                self._callback(records)
            cursor = page["cursor"]
            if page["done"]:
                return

    def close(self) -> None:
        self._stop.set()


class _PollBus(Bus):
    """Result delivery from a server by long polling (``work.<id>`` destinations only)."""

    def __init__(self, service: HttpService) -> None:
        self._service = service

    def publish(self, destination: str, messages: Sequence[Any]) -> None:
        raise ServiceError("clients do not publish results")

    def subscribe(self, destination: str, callback: Callback) -> Subscription:
        kind, _, ident = destination.partition(".")
        if kind != "work":
            raise ServiceError(f"cannot subscribe to {destination!r} over HTTP")
        return _PollSubscription(self._service, int(ident), callback)


class HttpService:
    """Talks to ``tasklift server`` with a bearer token; used by ``Workflow(service=URL)``."""

    def __init__(self, url: str, token: str | None, settings: Settings) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # TCP_NODELAY: httpx writes a POST's headers and body separately; with Nagle's
        # algorithm and delayed ACKs each small request would wait ~40 ms
        transport = httpx.HTTPTransport(
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        self._client = httpx.Client(
            base_url=self.url + "/api/v1",
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(60.0, connect=10.0),
        )
        self.bus = _PollBus(self)

    # ------------------------------------------------------------------ HTTP
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; raise the tasklift error that matches a failure status.

        Reads (GET, HEAD) ride out a server restart: they are retried with backoff for up to
        ``RETRY_SECONDS`` on connection errors and 502/503/504, then fail with ServiceError.
        """
        retry = method in ("GET", "HEAD")
        deadline = time.monotonic() + RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if not retry or time.monotonic() >= deadline:
                    raise ServiceError(
                        f"cannot reach the tasklift server at {self.url}: {exc}"
                    ) from exc
                logger.warning("%s %s: %s; retrying in %.1f s", method, path, exc, delay)
            else:
                if not (retry and response.status_code in (502, 503, 504)) or (
                    time.monotonic() >= deadline
                ):
                    break
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:500]
            cls = _ERRORS.get(response.status_code, ServiceError)
            raise cls(f"{method} {path}: {response.status_code} {detail}")
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        """GET and decode JSON."""
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        """POST JSON and decode JSON."""
        return self.request(
            "POST",
            path,
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
            **kwargs,
        ).json()

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
        return int(self.post("/workflows", body)["id"])

    def finish_workflow(
        self, workflow_id: int, status: WorkflowState, result: bytes | None, error: str | None
    ) -> None:
        """Store the end of a workflow run on the server."""
        self.post(
            f"/workflows/{workflow_id}/finish",
            {
                "status": status.value,
                "result": orjson.loads(result) if result is not None else None,
                "error": error,
            },
        )

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
        self,
        *,
        workflow_id: int,
        spec: WorkSpec,
        memo_key: str,
        options: str,
        min_success: float,
        jobs: Sequence[tuple[str, bytes]],
        reuse: bool,
        on_stored: Callable[[WorkRecord], None] | None = None,
        refs: Sequence[Sequence[Any]] | None = None,
    ) -> tuple[WorkSpec, WorkRecord]:
        """Create the work with all its jobs in one request."""
        from tasklift.engine.core import WorkRecord

        body = {
            "workflow_id": workflow_id,
            "name": spec.name,
            "function": spec.function,
            "script": spec.script,
            "serializer": spec.serializer,
            "timeout": spec.timeout,
            "retries": spec.retries,
            "init_env": spec.init_env,
            "backend": spec.backend,
            "resources": spec.resources,
            "min_success": min_success,
            "map_results": bool(orjson.loads(options).get("map_results")),
            "reuse": reuse,
            "jobs": [
                {
                    "key": key,
                    "payload": base64.b64encode(p).decode(),
                    **({"refs": [r.__dict__ for r in refs[i]]} if refs and refs[i] else {}),
                }
                for i, (key, p) in enumerate(jobs)
            ],
            "when": base64.b64encode(spec.when).decode() if spec.when else None,
            "when_arg": spec.when_arg,
        }
        work = self.post("/works", body, timeout=600)
        record = WorkRecord(work_id=work["id"], n_jobs=work["n_jobs"], n_reused=work["n_reused"])
        if on_stored is not None:
            on_stored(record)
        return spec, record

    def results(self, work_id: int, since: int = 0, limit: int | None = None) -> list[ResultRecord]:
        """Every result after cursor ``since`` (pages through the API)."""
        out: list[ResultRecord] = []
        while True:
            page = self.get(
                f"/works/{work_id}/results",
                params={"since": since, "limit": min(limit or 10_000, 10_000)},
            )
            out.extend(_record(item) for item in page["data"])
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
