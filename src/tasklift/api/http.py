"""The HTTP side of the client of a ``tasklift server``: requests with retries while the
server is away (:class:`HttpClient`), and results followed over HTTP (:class:`PollBus`: the
stream of a work's create request, then long polls of ``GET /works/{id}/results``).

:class:`tasklift.api.remote.HttpService` speaks the engine interface over this.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import orjson

from tasklift.api.answers import (
    Outage,
    describe_failure,
    error_detail,
    mask_service_url,
    raise_for_status,
)
from tasklift.bus.base import Bus, Callback, Subscription
from tasklift.errors import ServiceError, TaskliftError
from tasklift.records import ResultRecord

__all__ = [
    "IDEMPOTENT",
    "LONG_POLL",
    "NDJSON",
    "RETRY_SECONDS",
    "HttpClient",
    "PollBus",
    "ResultStream",
    "record_from_json",
]

logger = logging.getLogger(__name__)

LONG_POLL = 20.0
NDJSON = "application/x-ndjson"
RETRY_SECONDS = 120.0
"""How long requests keep retrying while the server (or its database) is away."""
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
"""Requests sent again after any connection error or 502/503/504. Others (POST) only when
they surely did nothing: the connection was never made, or the server said 503 with
``Retry-After`` (its database did not answer, so nothing was stored)."""


def record_from_json(item: dict[str, Any]) -> ResultRecord:
    """A result as the API gives it (``result`` in base64) as a :class:`ResultRecord`."""
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
                wake.wait(self.IDLE)  # handed a task just as it timed out: set already
            wake.clear()
            task = slot.pop()


_FOLLOWERS = _Followers()


class ResultStream:
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


class PollSubscription(Subscription):
    """One work's results followed on a reused thread until done or closed."""

    def __init__(
        self,
        client: HttpClient,
        work_id: int,
        callback: Callback,
        stream: ResultStream | None = None,
    ) -> None:
        self._client = client
        self._work_id = work_id
        self._callback = callback
        self._stream = stream
        self._stop = threading.Event()
        _FOLLOWERS.run(self._run, name=f"tasklift-results-{work_id}")

    def _deliver(self, page: dict[str, Any]) -> int:
        records = [record_from_json(item) for item in page["data"]]
        if records and not self._stop.is_set():
            self._callback(records)
        return int(page["cursor"])

    def _follow_stream(self, stream: ResultStream) -> tuple[int, bool]:
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
                page = self._client.get(
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


class PollBus(Bus):
    """Result delivery from a server by long polling (``work.<id>`` destinations only)."""

    def __init__(self, client: HttpClient, streams: dict[int, ResultStream]) -> None:
        self._client = client
        self._streams = streams

    def publish(self, destination: str, messages: Sequence[Any]) -> None:
        """Refused: results are published by the server."""
        raise ServiceError("clients do not publish results")

    def subscribe(self, destination: str, callback: Callback) -> Subscription:
        """Follow ``work.<id>``: the create request's stream when there is one, then polls."""
        kind, _, ident = destination.partition(".")
        if kind != "work":
            raise ServiceError(f"cannot subscribe to {destination!r} over HTTP")
        work_id = int(ident)
        stream = self._streams.pop(work_id, None)
        return PollSubscription(self._client, work_id, callback, stream)


class HttpClient:
    """Requests to a ``tasklift server``'s API with a bearer token, retried while it is away."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.retry_seconds = RETRY_SECONDS
        """How long a request is retried while the server or its database is away."""
        self._shown_url = mask_service_url(self.url)
        self._outage = Outage(self._shown_url)
        self._reached = False  # a first request that cannot connect fails at once
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

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()
