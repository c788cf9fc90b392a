"""Celery, prefork pool of 2, Redis broker and result backend.

Result polling: ``AsyncResult.get`` / ``GroupResult.get`` take ``interval=0.5`` by default. We
pass ``interval=BENCH_CELERY_POLL`` (default 0.01 s) on every wait so Celery is not handicapped
by the default (set ``BENCH_CELERY_POLL=0.5`` to see the default's cost).

Redis: ``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/13``). If nothing answers there and
``redis-server`` is installed, a private throw-away Redis is started on a free port for the run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.systems import tasks
from bench.systems.base import WORKERS, BenchSystem

DEFAULT_URL = "redis://127.0.0.1:6379/13"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


class CelerySystem(BenchSystem):
    """One map is ``group(t.s(a) for a in args).apply_async().get(interval=poll)``."""

    name = "celery"
    label = "Celery + Redis (result poll 10 ms)"
    packages = ("celery", "kombu", "redis")

    def __init__(self) -> None:
        self.poll = float(os.environ.get("BENCH_CELERY_POLL", "0.01"))
        if self.poll != 0.01:
            self.label = f"Celery + Redis (result poll {self.poll * 1000:g} ms)"
        self.url = os.environ.get("BENCH_REDIS_URL", DEFAULT_URL)
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-celery-")
        self.redis_proc: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.app = None
        self._tasks: dict[Any, Any] = {}

    def _ensure_redis(self) -> None:
        if _ping(self.url):
            return
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(f"no Redis at {self.url} and no redis-server to start one")
        port = _free_port()
        self.redis_proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{port}/13"
        deadline = time.monotonic() + 10
        while not _ping(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not come up")
            time.sleep(0.05)

    def _flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushdb()

    def start(self) -> None:
        """Check Redis, start the worker subprocess, wait until both children ran a task."""
        self._ensure_redis()
        os.environ["BENCH_REDIS_URL"] = self.url
        self._flush()
        from bench.systems import celery_app

        self.app = celery_app.app
        self._tasks = celery_app.TASKS
        log = Path(self._tmp.name) / "worker.log"
        cmd = [
            sys.executable, "-m", "celery", "-A", "bench.systems.celery_app", "worker",
            "--pool", "prefork", "--concurrency", str(WORKERS), "--queues", celery_app.QUEUE,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "WARNING", "--hostname", f"bench-{os.getpid()}@%h",
        ]  # fmt: skip
        with open(log, "wb") as fh:
            self.worker = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        try:
            self._tasks[tasks.noop].delay(0).get(timeout=60, interval=self.poll)
        except Exception as exc:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"celery worker did not answer: {exc!r}\n{tail}") from exc
        self.map(tasks.sleep, [0.05] * WORKERS)

    def map(self, fn, args: list[Any]) -> list[Any]:
        """One group over ``args``; results in submission order."""
        from celery import group

        t = self._tasks[fn]
        res = group(t.s(a) for a in args).apply_async()
        return res.get(interval=self.poll)

    def call(self, fn, arg: Any) -> Any:
        """``task.delay(arg).get(interval=poll)``."""
        return self._tasks[fn].delay(arg).get(interval=self.poll)

    def close(self) -> None:
        """Warm-shutdown the worker, flush the bench database, stop a private Redis."""
        if self.worker is not None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        try:
            self._flush()
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the results
            print(f"celery: flush failed: {exc!r}", file=sys.stderr)
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            self.redis_proc.wait(timeout=10)
        self._tmp.cleanup()
