"""What a remote runner is handed: the batch directory of a Slurm array (or of one isolated Dask
task) and the inline spec a Dask task carries.

A batch directory holds ``batch.json`` (job API URL, array offset, ``[job id, attempt]`` per
element) and ``tokens.json`` (one job token per element), both mode 0600, so that neither
inputs nor tokens ever appear on a command line. The spec is what ``GET /jobs/{id}/spec``
answers; ``tasklift.submission.runner_spec`` builds it on the engine's side and
``work_spec_from_runner`` reads it on the runner's.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tasklift.errors import ConfigError
from tasklift.records import JobSpec

__all__ = [
    "BATCH_FILE",
    "TOKENS_FILE",
    "RemoteAttempt",
    "private_file",
    "read_batch",
    "write_batch",
]

BATCH_FILE = "batch.json"
TOKENS_FILE = "tokens.json"


@dataclass(frozen=True)
class RemoteAttempt:
    """One attempt a remote runner runs: where the job API is, which job, the job's token."""

    api_url: str
    job_id: int
    attempt: int
    token: str = field(repr=False)  # secret: never logged


def write_batch(directory: Path, api_url: str, jobs: Sequence[JobSpec], offset: int = 0) -> Path:
    """Write the batch files a set of array elements read their jobs from (mode 0600).

    Element ``i`` runs ``jobs[i - offset]``. Every job must carry its token.

    Raises:
        ConfigError: a job has no token.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tokens = []
    for job in jobs:
        if not job.token:
            raise ConfigError(f"job {job.job_id} has no job token: the engine fills them in")
        tokens.append(job.token)
    batch = {"api_url": api_url, "offset": offset, "jobs": [[j.job_id, j.attempt] for j in jobs]}
    with private_file(directory / BATCH_FILE) as fh:
        fh.write(json.dumps(batch).encode())
    with private_file(directory / TOKENS_FILE) as fh:
        fh.write(json.dumps(tokens).encode())
    return directory


def read_batch(directory: Path, index: int) -> RemoteAttempt:
    """The job of array element ``index`` of a batch directory.

    Raises:
        ConfigError: the files are missing or the index is outside the batch.
    """
    directory = Path(directory)
    try:
        batch = json.loads((directory / BATCH_FILE).read_text())
        tokens = json.loads((directory / TOKENS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the batch in {directory}: {exc}") from exc
    position = index - int(batch.get("offset", 0))
    if not 0 <= position < len(batch["jobs"]):
        raise ConfigError(
            f"array index {index} is outside the batch in {directory} "
            f"({len(batch['jobs'])} jobs from index {batch.get('offset', 0)})"
        )
    job_id, attempt = batch["jobs"][position]
    return RemoteAttempt(batch["api_url"], int(job_id), int(attempt), tokens[position])


@contextlib.contextmanager
def private_file(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` (mode 0600) whole or not at all: a temporary file beside it is renamed
    over it when the ``with`` block ends, and removed when the block raises."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
