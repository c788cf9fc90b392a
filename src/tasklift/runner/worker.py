"""The local worker process: ``python -m tasklift.runner worker``, fed by the ``local`` backend.

It reads :mod:`~tasklift.runner.protocol` messages on stdin and writes its answers on its
original stdout; the jobs' own prints go to a capture file instead, so they never mix. It says
:class:`~tasklift.runner.protocol.Ready` once up, :class:`~tasklift.runner.protocol.Started`
for a job that runs for a while (at once for a work with a timeout: the backend times it from
there), and :class:`~tasklift.runner.protocol.Done` with each outcome.

A worker of a multi-user server (``TASKLIFT_RUNNER_PRIVATE=1``) runs under its own identity and
cannot read the server's archive store: the engine sends each archive over the pipe, and the
worker verifies and extracts it in its private home.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasklift import _context
from tasklift.records import JobSpec, WorkSpec
from tasklift.runner.capture import OutputCapture
from tasklift.runner.execute import execute
from tasklift.runner.loader import FunctionLoader
from tasklift.runner.protocol import (
    Archive,
    Cancel,
    Done,
    FromWorker,
    Jobs,
    Ready,
    Started,
    ToWorker,
    Work,
    read_message,
    write_message,
)
from tasklift.settings import Settings

__all__ = ["STARTED_AFTER", "PipeWorker", "main"]

STARTED_AFTER = 0.1
"""Seconds a job runs before its worker says it started (shorter jobs never do: no message
more per job on the fast path)."""


class StartReporter:
    """A thread that says :class:`Started` for the job running in the worker's main thread once
    it has run for :data:`STARTED_AFTER` seconds.

    The main thread only notes each job (an attribute set: no lock, no wake-up, so a short job
    costs nothing more); the reporter looks every half :data:`STARTED_AFTER`.
    """

    def __init__(self, send: Callable[[FromWorker], None], after: float = STARTED_AFTER) -> None:
        self._send = send
        self._after = after
        # (sequence number, job id, attempt, monotonic start, already reported)
        self._current: tuple[int, int, int, float, bool] | None = None
        self._sequence = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tasklift-started", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def begin(self, job: JobSpec, *, reported: bool) -> None:
        """The main thread starts ``job`` (``reported``: it said Started itself)."""
        self._sequence += 1
        self._current = (self._sequence, job.job_id, job.attempt, time.monotonic(), reported)

    def end(self) -> None:
        """The main thread finished its job."""
        self._current = None

    def stop(self) -> None:
        """Stop watching (the worker ends)."""
        self._stop.set()
        self._thread.join(timeout=2 * self._after + 1.0)

    def _loop(self) -> None:
        reported = 0  # sequence number of the last job reported
        while not self._stop.wait(self._after / 2):
            current = self._current
            if current is None:
                continue
            sequence, job_id, attempt, began, said = current
            if said or sequence == reported or time.monotonic() - began < self._after:
                continue
            if self._current is current:
                # a job that ends meanwhile is reported Done after this, or before: the
                # backend ignores a Started of a job it no longer runs
                self._send(Started(job_id, attempt))
                reported = sequence


class PipeWorker:
    """The persistent worker loop of the local backend: messages in, outcomes out."""

    def __init__(
        self,
        in_fd: int,
        out_fd: int,
        workflow_call: Callable[..., Callable[..., Any]] | None = None,
    ) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        private = os.environ.get("TASKLIFT_RUNNER_PRIVATE") == "1"
        settings = Settings()  # this process's edge: the archive limits of its environment
        self.loader = FunctionLoader(
            Path.home() / "worker" if private else None,
            max_bytes=settings.archive_max_bytes,
            max_files=settings.archive_max_files,
        )
        self.workflow_call = workflow_call
        self.works: dict[int, WorkSpec] = {}
        self.queue: deque[tuple[int, JobSpec]] = deque()
        self.cancelled: set[int] = set()
        self.lock = threading.Lock()
        self.capture = OutputCapture()
        self.starts = StartReporter(self.send)

    def handle(self, message: ToWorker) -> None:
        """Act on one message of the engine."""
        match message:
            case Work(spec):
                self.works[spec.work_id] = spec
            case Jobs(work_id, jobs):
                self.queue.extend((work_id, job) for job in jobs)
            case Archive(sha256, data):
                self.loader.receive_archive(sha256, data)
            case Cancel(job_ids):
                self.cancelled.update(job_ids)

    def drain_input(self, block: bool) -> None:
        """Handle the engine's messages: all that are waiting, or (``block``) at least one."""
        while True:
            if not block:
                ready, _, _ = select.select([self.in_fd], [], [], 0)
                if not ready:
                    return
            self.handle(read_message(self.in_fd))
            block = False

    def send(self, message: FromWorker) -> None:
        """Write one message to the engine (from the main or the start reporter's thread)."""
        with self.lock:
            write_message(self.out_fd, message)

    def run_next(self) -> None:
        """Run the job at the head of the queue and send its outcome."""
        work_id, job = self.queue.popleft()
        if job.job_id in self.cancelled:
            self.cancelled.discard(job.job_id)
            return
        work = self.works[work_id]
        start = self.capture.mark()
        timed = work.timeout is not None
        self.starts.begin(job, reported=timed)
        try:
            outcome = execute(
                self.loader,
                work,
                job,
                workflow_call=self.workflow_call,
                before_run=(lambda: self.send(Started(job.job_id, job.attempt))) if timed else None,
            )
        finally:
            self.starts.end()
        captured = self.capture.text_since(start)
        if captured:
            outcome.stdout = captured
        # written at once: the engine reads whatever is in the pipe in one go (batching on
        # its side), and a worker that dies next never takes a finished result with it
        self.send(Done([outcome]))

    def loop(self) -> None:
        """Run jobs until the engine closes the pipe."""
        self.starts.start()
        try:
            while True:
                self.drain_input(block=not self.queue)
                while self.queue:
                    self.run_next()
                    self.drain_input(block=False)
        except EOFError:
            pass  # the engine closed our stdin: exit quietly
        finally:
            self.starts.stop()


def _workflow_call(
    fn: Callable[..., Any], work: WorkSpec, token: str | None, root: str | None
) -> Callable[..., Any]:
    """Run a remote workflow's function with the client API (imported on first use only)."""
    from tasklift.api.workflow_run import remote_workflow_call

    return remote_workflow_call(fn, work, token, root)


def main() -> None:
    """Entry point of ``python -m tasklift.runner worker``."""
    out_fd = os.dup(1)
    in_fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _context.in_job_runner.set(True)
    os.environ["TASKLIFT_IN_JOB"] = "1"
    worker = PipeWorker(in_fd, out_fd, _workflow_call)
    worker.send(Ready())
    worker.loop()
