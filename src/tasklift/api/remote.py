"""The client side of a ``tasklift server``: the engine interface the client API uses,
spoken over HTTP (bulk work creation, archive upload by hash, results by cursor).

A new work costs one request: ``POST /works?wait=...`` creates it and streams its results
back (one JSON page per line) on the same connection; a work that outlives the stream is
followed with long polls of ``GET /works/{id}/results`` from the last cursor.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from tasklift.api.answers import (
    Outage,
    describe_failure,
    error_detail,
    mask_service_url,
    mask_token,
    raise_for_status,
)
from tasklift.archive import PackedArchive
from tasklift.bus.base import Bus, Callback, Subscription
from tasklift.errors import (
    ConflictError,
    NotFoundError,
    ServiceError,
    TaskliftError,
    WorkflowFailedError,
)
from tasklift.records import ResultRecord, WorkSpec
from tasklift.states import WorkflowState
from tasklift.submission import Submission, request_body

if TYPE_CHECKING:
    from collections.abc import Callable

    from tasklift.engine.engine import WorkRecord
    from tasklift.settings import Settings

__all__ = ["HttpService", "mask_service_url", "mask_token"]

logger = logging.getLogger(__name__)

LONG_POLL = 20.0
NDJSON = "application/x-ndjson"
RETRY_SECONDS = 120.0
"""How long requests keep retrying while the server (or its database) is away."""
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
"""Requests sent again after any connection error or 502/503/504. Others (POST) only when
they surely did nothing: the connection was never made, or the server said 503 with
``Retry-After`` (its database did not answer, so nothing was stored)."""


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


class _Followers:
    """Daemon threads that follow works' results, reused: a single-job work is too short to
    pay for starting a thread. An idle thread ends after ``IDLE`` seconds."""

    IDLE = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[tuple[threading.Event, list[Callable[[], None]]]] = []

    def run(self, task: Callable[[], None], name: str) -> None:
        """Run ``task`` on an idle thread, or on a new one."""
        with self._lock:
            if self._idle:
                wake, slot = self._idle.pop()
                slot.append(task)
                wake.set()
                return
        threading.Thread(target=self._loop, args=(task,), daemon=True, name=name).start()

    def _loop(self, task: Callable[[], None]) -> None:
        wake = threading.Event()
        slot: list[Callable[[], None]] = []
        while True:
            try:
                task()
            except Exception:  # a follower's own errors are logged where they happen
                logger.exception("a results follower failed")
            with self._lock:
                self._idle.append((wake, slot))
            if not wake.wait(self.IDLE):
                with self._lock:
                    if (wake, slot) in self._idle:
                        self._idle.remove((wake, slot))
                        return
                wake.wait()  # handed a task just as it timed out
            wake.clear()
            task = slot.pop()


_FOLLOWERS = _Followers()


class _ResultStream:
    """The open answer of a ``POST /works?wait=...``: result pages, one JSON per line."""

    def __init__(self, response: httpx.Response, lines: Iterator[str]) -> None:
        self._response = response
        self._lines = lines

    def pages(self) -> Iterator[dict[str, Any]]:
        """Yield the pages as they arrive; end with the answer."""
        for line in self._lines:
            if line:
                yield orjson.loads(line)

    def close(self) -> None:
        """Release the connection (drops it when the answer is not complete)."""
        self._response.close()


class _PollSubscription(Subscription):
    def __init__(
        self,
        service: HttpService,
        work_id: int,
        callback: Callback,
        stream: _ResultStream | None = None,
    ) -> None:
        self._service = service
        self._work_id = work_id
        self._callback = callback
        self._stream = stream
        self._stop = threading.Event()
        _FOLLOWERS.run(self._run, name=f"tasklift-results-{work_id}")

    def _deliver(self, page: dict[str, Any]) -> int:
        records = [_record(item) for item in page["data"]]
        if records and not self._stop.is_set():
            self._callback(records)
        return int(page["cursor"])

    def _follow_stream(self, stream: _ResultStream) -> tuple[int, bool]:
        """Take the pages of the create request's answer: ``(cursor, done)``."""
        cursor, done = 0, False
        try:
            # to the end of the answer (it ends after a done page): the connection is reused
            for page in stream.pages():
                cursor = self._deliver(page)
                done = done or bool(page["done"])
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            logger.info("results of work %d: stream ended early (%s)", self._work_id, exc)
        finally:
            stream.close()
        return cursor, done

    def _run(self) -> None:
        cursor = 0
        if self._stream is not None:
            cursor, done = self._follow_stream(self._stream)
            if done:
                return
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
            cursor = self._deliver(page)
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
        work_id = int(ident)
        stream = self._service._streams.pop(work_id, None)
        return _PollSubscription(self._service, work_id, callback, stream)


class HttpService:
    """Talks to ``tasklift server`` with a bearer token; used by ``Workflow(service=URL)``."""

    def __init__(self, url: str, token: str | None, settings: Settings) -> None:
        self.url = url.rstrip("/")
        self.settings = settings
        self.retry_seconds = RETRY_SECONDS
        """How long a request is retried while the server or its database is away."""
        self._shown_url = mask_service_url(self.url)
        self._outage = Outage(self._shown_url)
        self._reached = False  # a first request that cannot connect fails at once
        self._child_tokens: dict[int, str] = {}  # sub-workflows' runner tokens, by id
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
        self._streams: dict[int, _ResultStream] = {}  # new works' answers, until subscribed
        # absolute, built once: httpx spends more on merging and parsing URLs than on sending
        self._create_url = httpx.URL(self.url + "/api/v1/works", params={"wait": LONG_POLL})
        self._json = {"Content-Type": "application/json"}

    # ------------------------------------------------------------------ HTTP
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; raise the tasklift error that matches a failure status.

        A server that is away (a restart, its database down) is waited for: see
        :meth:`_send`.
        """
        response = self._send(method, path, lambda: self._client.request(method, path, **kwargs))
        raise_for_status(method, path, response)
        return response

    def _send(
        self, method: str, path: str, attempt: Callable[[], httpx.Response]
    ) -> httpx.Response:
        """Run ``attempt`` until the server answers; return the answer (any status).

        The first request of this client fails at once when the server cannot be reached
        (a wrong URL, a server that is not running: the user hears it now). After that,
        requests are retried with backoff for up to ``retry_seconds`` on connection errors
        and 502/503/504 (see :data:`IDEMPOTENT` for POST), saying so on stderr once when
        the retries start and once when the server answers again.

        Raises:
            ServiceError: the server could not be reached (first request), or not within
                ``retry_seconds``.
        """
        deadline: float | None = None
        delay = 0.2
        while True:
            try:
                response = attempt()
            except httpx.TransportError as exc:
                cause = describe_failure(exc)
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if not self._reached or (sent and method not in IDEMPOTENT):
                    raise ServiceError(
                        f"cannot reach the tasklift server at {self._shown_url}: {cause}"
                    ) from exc
            else:
                status = response.status_code
                again = status in (502, 503, 504) and (
                    method in IDEMPOTENT or (status == 503 and "retry-after" in response.headers)
                )
                if not again:
                    self._reached = True
                    self._outage.answered()
                    return response
                response.read()
                response.close()
                cause = f"{status} {error_detail(response)}"
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.retry_seconds
                self._outage.failing(cause, self.retry_seconds)
            elif now >= deadline:
                raise ServiceError(
                    f"{method} {path}: the tasklift server at {self._shown_url} did not answer "
                    f"for {self.retry_seconds:.0f} s: {cause}"
                )
            logger.info("%s %s: %s; trying again in %.1f s", method, path, cause, delay)
            time.sleep(min(delay, max(deadline - now, 0.0)))
            delay = min(delay * 2, 5.0)

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
