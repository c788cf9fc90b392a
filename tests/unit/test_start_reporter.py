"""A local worker says Started only for a job that lasts (or at once for a timed one, itself):
no message more per short job."""

from __future__ import annotations

import time

from tasklift.records import JobSpec
from tasklift.runner.protocol import Started
from tasklift.runner.worker import StartReporter


def _reporter(sent: list[object]) -> StartReporter:
    reporter = StartReporter(sent.append, after=0.05)
    reporter.start()
    return reporter


def test_a_job_that_lasts_is_reported_once() -> None:
    sent: list[object] = []
    reporter = _reporter(sent)
    try:
        reporter.begin(JobSpec(4, 2, b""), reported=False)
        time.sleep(0.3)
        reporter.end()
    finally:
        reporter.stop()
    assert sent == [Started(4, 2)]


def test_short_jobs_and_jobs_reported_by_the_worker_are_not() -> None:
    sent: list[object] = []
    reporter = _reporter(sent)
    try:
        for job_id in range(200):
            reporter.begin(JobSpec(job_id, 1, b""), reported=False)
            reporter.end()
        reporter.begin(JobSpec(999, 1, b""), reported=True)  # timed: said Started itself
        time.sleep(0.2)
        reporter.end()
        time.sleep(0.1)
    finally:
        reporter.stop()
    assert sent == []
