"""The Celery application of the benchmark: imported by the client and by the worker.

Broker and result backend are Redis, on a database number of its own (``BENCH_REDIS_URL``,
default ``redis://127.0.0.1:6379/13``) and a queue of its own, so nothing else on the same
Redis is touched. The worker is started by :mod:`bench.systems.celery_sys` as
``celery -A bench.systems.celery_app worker -P prefork -c 2``.
"""

from __future__ import annotations

import os

from celery import Celery

from bench.systems import tasks

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
QUEUE = "tasklift-bench"

app = Celery("tasklift_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
)


@app.task(name="bench.noop")
def noop(x):
    """``tasks.noop`` as a Celery task."""
    return tasks.noop(x)


@app.task(name="bench.sleep")
def sleep(seconds):
    """``tasks.sleep`` as a Celery task."""
    return tasks.sleep(seconds)


TASKS = {tasks.noop: noop, tasks.sleep: sleep}
"""Shared task body -> Celery task."""
