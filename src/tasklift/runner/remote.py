"""The remote job runner: one attempt of one job, outside the engine's process.

Backends whose runners live elsewhere (Dask workers, Slurm array elements) start this runner;
it talks to the job API of the service (or of the embedded engine) over HTTP, with a token
scoped to that one job:

1. ``GET /api/v1/jobs/{id}/spec``: the function, the archive hash and the inputs;
2. the source archive by hash from the local cache, downloaded on a miss and verified;
3. ``POST .../heartbeat`` at start and every ``heartbeat_interval`` seconds while it runs;
4. ``POST .../outcome``: retried with backoff while the service is away, and spooled to disk
   first so that a runner killed meanwhile loses nothing: the next runner on the host (or
   ``python -m tasklift.runner flush-spool``) delivers it.

A Slurm array element runs ``python -m tasklift.runner job --batch-dir DIR``: the batch
directory (:mod:`tasklift.runner.batch`, mode 0600) maps the array index to its job, attempt
and token. Neither inputs nor tokens ever appear on a command line. A Dask task calls
:func:`run_remote_job` in the worker's process (the backend names this module, it does not
import it: an entry point).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tasklift import _context
from tasklift.errors import ConfigError
from tasklift.records import JobSpec, Outcome, WorkSpec
from tasklift.runner.batch import RemoteAttempt, private_file, read_batch
from tasklift.runner.execute import execute, failure_outcome
from tasklift.runner.loader import FunctionLoader
from tasklift.settings import Settings
from tasklift.submission import work_spec_from_runner

__all__ = ["batch_main", "flush_spool", "outcome_body", "run_remote_job"]

logger = logging.getLogger(__name__)

API = "/api/v1"
CONNECT_DEADLINE = 300.0
"""Seconds a runner keeps trying to fetch its spec while the service is unreachable."""
REPORT_DEADLINE = 24 * 3600.0
"""Seconds a runner keeps trying to deliver its outcome (it is spooled on disk meanwhile)."""
BACKOFF_MAX = 10.0


# --------------------------------------------------------------------------- HTTP
class _Gone(Exception):
    """The service answered that this attempt is no longer wanted (409) or refused it."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


_clients: dict[str, httpx.Client] = {}
_clients_lock = threading.Lock()


def _shared_client(api_url: str) -> httpx.Client:
    """One pooled HTTP client per job API and process: a Dask worker running thousands of
    jobs reuses its connections (and builds no TLS context per job)."""
    with _clients_lock:
        client = _clients.get(api_url)
        if client is None:
            # TCP_NODELAY: httpx writes a POST's headers and body separately; with Nagle's
            # algorithm and delayed ACKs every small report would wait ~40 ms
            transport = httpx.HTTPTransport(
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
            )
            client = _clients[api_url] = httpx.Client(
                base_url=api_url + API,
                timeout=httpx.Timeout(30.0, connect=10.0),
                transport=transport,
            )
        return client


class _JobAPI:
    """A small client of the job API with one job's token."""

    def __init__(self, api_url: str, token: str) -> None:
        self.api_url = api_url.rstrip("/")
        self._client = _shared_client(self.api_url)
        self._auth = {"Authorization": f"Bearer {token}"}

    def close(self) -> None:
        """Nothing to release: the HTTP client is shared by the process's jobs."""

    def call(
        self, method: str, path: str, *, deadline: float, json_body: Any = None
    ) -> httpx.Response:
        """Send one request, retrying connection errors and 5xx answers until ``deadline``."""
        delay = 0.2
        while True:
            try:
                response = self._client.request(method, path, json=json_body, headers=self._auth)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code < 500:
                    raise _Gone(response.status_code, _detail(response))
                problem = f"HTTP {response.status_code}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{method} {path} on {self.api_url}: {problem}")
            logger.info(
                "job API %s unreachable (%s); retrying in %.1f s", self.api_url, problem, delay
            )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(BACKOFF_MAX, delay * 2)

    def download(self, path: str, target: Path, deadline: float) -> None:
        """Stream ``path`` into ``target`` (atomically), retrying like :meth:`call`."""
        delay = 0.2
        while True:
            try:
                with self._client.stream("GET", path, headers=self._auth) as response:
                    if 400 <= response.status_code < 500:
                        response.read()
                        raise _Gone(response.status_code, _detail(response))
                    if response.status_code < 400:
                        with private_file(target) as fh:
                            for chunk in response.iter_bytes(1 << 20):
                                fh.write(chunk)
                        return
                    problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"GET {path} on {self.api_url}: {problem}")
            time.sleep(delay)
            delay = min(BACKOFF_MAX, delay * 2)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


# --------------------------------------------------------------------------- spool
def _spool_dir() -> Path:
    return Settings().home / "spool"


def _spool(spool_dir: Path, api_url: str, token: str, job_id: int, body: dict[str, Any]) -> Path:
    spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = spool_dir / f"{job_id}-{body['attempt']}.json"
    record = {"api_url": api_url, "token": token, "job_id": job_id, "body": body}
    with private_file(path) as fh:
        fh.write(json.dumps(record).encode())
    return path


def flush_spool(spool_dir: Path | None = None, *, deadline_seconds: float = 5.0) -> int:
    """Deliver outcomes earlier runners spooled; return how many were delivered or dropped."""
    spool_dir = spool_dir or _spool_dir()
    if not spool_dir.is_dir():
        return 0
    done = 0
    for path in sorted(spool_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("unreadable spooled outcome %s: %s", path, exc)
            continue
        api = _JobAPI(record["api_url"], record["token"])
        try:
            api.call(
                "POST",
                f"/jobs/{record['job_id']}/outcome",
                deadline=time.monotonic() + deadline_seconds,
                json_body=record["body"],
            )
        except _Gone as exc:
            logger.warning("spooled outcome of job %s refused: %s", record["job_id"], exc)
        except TimeoutError:
            continue  # still away: a later runner tries again
        finally:
            api.close()
        path.unlink(missing_ok=True)
        done += 1
    return done


# --------------------------------------------------------------------------- running
class _Heartbeat:
    """Posts heartbeats from a thread until stopped; notes when the attempt is no longer wanted."""

    def __init__(
        self,
        api: _JobAPI,
        job_id: int,
        attempt: int,
        interval: float,
        on_unwanted: Callable[[str], None] | None = None,
    ) -> None:
        self._api = api
        self._on_unwanted = on_unwanted
        self._path = f"/jobs/{job_id}/heartbeat?attempt={attempt}"
        self._interval = interval
        self._stop = threading.Event()
        self.unwanted: str | None = None
        self._thread = threading.Thread(target=self._loop, name="tasklift-heartbeat", daemon=True)

    def start(self) -> None:
        """Beat from now on (fetching the spec was the first sign of life)."""
        self._thread.start()

    def beat(self) -> None:
        try:
            self._api.call("POST", self._path, deadline=time.monotonic() + self._interval)
        except _Gone as exc:
            self.unwanted = str(exc)
            self._stop.set()
            if self._on_unwanted is not None:
                self._on_unwanted(self.unwanted)
        except TimeoutError as exc:
            logger.warning("heartbeat not delivered: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval + 35)


def _fetch_archive(api: _JobAPI, work: WorkSpec, deadline: float) -> None:
    if work.archive_sha is None or work.archive_file is None:
        return
    extracted = Path(work.cache_dir) / work.archive_sha
    target = Path(work.archive_file)
    if extracted.is_dir() or target.is_file():
        return  # extracted already, or cached (ensure_extracted verifies the hash)
    target.parent.mkdir(parents=True, exist_ok=True)
    api.download(f"/archives/{work.archive_sha}", target, deadline)


def outcome_body(outcome: Outcome) -> dict[str, Any]:
    """The JSON body of ``POST /jobs/{id}/outcome`` for ``outcome``."""
    return {
        "attempt": outcome.attempt,
        "ok": outcome.ok,
        "result": base64.b64encode(outcome.result).decode() if outcome.result is not None else None,
        "error_type": outcome.error_type,
        "error_message": outcome.error_message,
        "traceback": outcome.traceback,
        "retryable": outcome.retryable,
        "skipped": outcome.skipped,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
        "stdout": outcome.stdout,
        "stderr": outcome.stderr,
    }


_cached: dict[str, Any] = {}
_cached_lock = threading.Lock()


def _settings() -> Settings:
    """This process's settings, read once (a Dask worker runs many jobs)."""
    with _cached_lock:
        if "settings" not in _cached:
            _cached["settings"] = Settings()
        settings: Settings = _cached["settings"]
    return settings


def _loader() -> FunctionLoader:
    """This process's function loader: imports and archive activations are reused."""
    settings = _settings()
    with _cached_lock:
        if "loader" not in _cached:
            _cached["loader"] = FunctionLoader(
                max_bytes=settings.archive_max_bytes, max_files=settings.archive_max_files
            )
        loader: FunctionLoader = _cached["loader"]
    return loader


@contextlib.contextmanager
def _in_job() -> Iterator[None]:
    token = _context.in_job_runner.set(True)
    try:
        yield
    finally:
        _context.in_job_runner.reset(token)


def run_remote_job(
    job: RemoteAttempt,
    *,
    cache_dir: Path | None = None,
    spool_dir: Path | None = None,
    exit_when_unwanted: bool = False,
    spec: dict[str, Any] | None = None,
) -> str:
    """Run one attempt of one job here and report its outcome to the job API.

    Args:
        job: the attempt: job API URL (``http://host:port``), job, attempt number, and the
            job's own token (secret: never log it).
        cache_dir: where archives are kept and extracted (default: ``<TASKLIFT_HOME>``).
        spool_dir: where undelivered outcomes wait (default: ``<TASKLIFT_HOME>/spool``).
        exit_when_unwanted: end the process when the service says the attempt is no longer
            wanted (cancelled, timed out): for a runner that owns its process (Slurm).
        spec: the job's spec handed over with the job (``tasklift.submission.runner_spec``);
            ``None``: fetch it from the job API (which also tells the engine the job started).

    Returns:
        ``"reported"``, ``"stale"`` (the service no longer wanted it) or ``"spooled"`` (not
        delivered before the deadline; the outcome waits on disk).
    """
    settings = _settings()
    cache_dir = cache_dir or settings.home
    spool_dir = spool_dir or settings.home / "spool"
    flush_spool(spool_dir, deadline_seconds=2.0)
    api = _JobAPI(job.api_url, job.token)
    try:
        inline = spec is not None
        if spec is None:
            try:
                spec = api.call(
                    "GET", f"/jobs/{job.job_id}/spec", deadline=time.monotonic() + CONNECT_DEADLINE
                ).json()
            except _Gone as exc:
                logger.warning("job %d: the service refused its spec: %s", job.job_id, exc)
                return "stale"
        interval = float(spec.get("heartbeat_interval") or settings.heartbeat_interval)
        heartbeat = _Heartbeat(
            api, job.job_id, job.attempt, interval, _exit_process if exit_when_unwanted else None
        )
        if inline and spec.get("timeout") is not None:
            heartbeat.beat()  # the monitor times the job from its start: say it started
        heartbeat.start()
        try:
            outcome = _run(api, job, spec, Path(cache_dir))
        finally:
            heartbeat.stop()
        return _report(api, spool_dir, job.api_url, job.token, outcome)
    finally:
        api.close()


def _run(api: _JobAPI, job: RemoteAttempt, spec: dict[str, Any], cache_dir: Path) -> Outcome:
    """Fetch the archive and run the job (never raises for the job's own errors)."""
    work = work_spec_from_runner(spec, cache_dir=cache_dir, service_url=job.api_url)
    attempt = JobSpec(job.job_id, job.attempt, base64.b64decode(spec["payload"]))
    try:
        _fetch_archive(api, work, time.monotonic() + CONNECT_DEADLINE)
    except Exception as exc:  # noqa: BLE001 - reported as the job's outcome
        return failure_outcome(attempt, exc)
    with _in_job():
        return execute(_loader(), work, attempt)


def _exit_process(why: str) -> None:
    """End a runner that owns its process: the service cancelled or timed out its attempt."""
    logger.error("the service no longer wants this attempt (%s): exiting", why)
    os._exit(3)


def _report(api: _JobAPI, spool_dir: Path, api_url: str, token: str, outcome: Outcome) -> str:
    body = outcome_body(outcome)
    path = f"/jobs/{outcome.job_id}/outcome"
    try:
        api.call("POST", path, deadline=time.monotonic() + 2.0, json_body=body)
        return "reported"
    except _Gone as exc:
        logger.warning("job %d: outcome not taken: %s", outcome.job_id, exc)
        return "stale"
    except TimeoutError:
        pass
    spooled = _spool(spool_dir, api_url, token, outcome.job_id, body)
    logger.warning("job %d: service away; outcome spooled to %s", outcome.job_id, spooled)
    try:
        api.call("POST", path, deadline=time.monotonic() + REPORT_DEADLINE, json_body=body)
    except _Gone as exc:
        logger.warning("job %d: outcome not taken: %s", outcome.job_id, exc)
        spooled.unlink(missing_ok=True)
        return "stale"
    except TimeoutError:
        return "spooled"
    spooled.unlink(missing_ok=True)
    return "reported"


def batch_main(batch_dir: str, index: int | None) -> int:
    """``python -m tasklift.runner job --batch-dir DIR [--index I]``."""
    if index is None:
        raw = os.environ.get("SLURM_ARRAY_TASK_ID")
        if raw is None:
            raise ConfigError("no --index and no SLURM_ARRAY_TASK_ID: which job of the batch?")
        index = int(raw)
    job = read_batch(Path(batch_dir), index)
    os.environ["TASKLIFT_IN_JOB"] = "1"
    status = run_remote_job(job, exit_when_unwanted=True)
    return 0 if status in ("reported", "stale") else 4
