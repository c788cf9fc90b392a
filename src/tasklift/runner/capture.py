"""Output capture of a local worker: its fds 1 and 2 go to one file, sliced per job.

A job's prints never reach the worker's pipe to the engine (that is the original stdout, kept
elsewhere by the worker); each outcome carries what its job printed, head and tail kept.
"""

from __future__ import annotations

import os
import sys
import tempfile

__all__ = ["LOG_HEAD", "LOG_TAIL", "OutputCapture"]

LOG_HEAD = 16 * 1024
"""Bytes kept from the start of a job's output."""
LOG_TAIL = 48 * 1024
"""Bytes kept from the end of a job's output."""


class OutputCapture:
    """Redirects fds 1 and 2 into one (unlinked) file and slices out what each job printed."""

    LIMIT = 64 * 1024 * 1024
    """The file is emptied when it grows past this many bytes (at a job's start)."""

    def __init__(self) -> None:
        handle, self.path = tempfile.mkstemp(prefix="tasklift-worker-", suffix=".log")
        os.close(handle)
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        os.unlink(self.path)
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)

    def mark(self) -> int:
        """The position a job's output starts at (flushes Python's buffers first)."""
        sys.stdout.flush()
        sys.stderr.flush()
        size = os.fstat(self.fd).st_size
        if size > self.LIMIT:
            os.ftruncate(self.fd, 0)
            return 0
        return size

    def text_since(self, start: int) -> str | None:
        """What was printed since ``start`` (``None``: nothing), head and tail kept."""
        end = self.mark()
        if end <= start:
            return None
        length = end - start
        if length <= LOG_HEAD + LOG_TAIL:
            data = os.pread(self.fd, length, start)
        else:
            skipped = length - LOG_HEAD - LOG_TAIL
            data = (
                os.pread(self.fd, LOG_HEAD, start)
                + f"\n... [{skipped} bytes skipped] ...\n".encode()
                + os.pread(self.fd, LOG_TAIL, end - LOG_TAIL)
            )
        return data.decode("utf-8", errors="replace")
