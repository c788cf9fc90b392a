"""What the Slurm backend writes for Slurm and reads back: the array batch script, ``sbatch``
options from a work's resources, handles, ``squeue``/``sacct`` output and the state table.

Pure text handling (no processes), so that it is tested without a cluster.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tasklift.errors import BackendError
from tasklift.states import JobState

__all__ = [
    "SLURM_STATES",
    "SQUEUE_FORMAT",
    "Element",
    "array_ranges",
    "batch_script",
    "format_walltime",
    "parse_handle",
    "parse_sacct",
    "parse_squeue",
    "sbatch_resources",
]

SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.QUEUED,
    "CONFIGURING": JobState.QUEUED,
    "REQUEUED": JobState.QUEUED,
    "REQUEUE_HOLD": JobState.QUEUED,
    "REQUEUE_FED": JobState.QUEUED,
    "RESV_DEL_HOLD": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "COMPLETED": JobState.FINISHED,
    "FAILED": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "TIMEOUT": JobState.LOST,
    "NODE_FAIL": JobState.LOST,
    "PREEMPTED": JobState.LOST,
    "CANCELLED": JobState.LOST,
    "BOOT_FAIL": JobState.LOST,
    "DEADLINE": JobState.LOST,
    "REVOKED": JobState.LOST,
}
"""Slurm job state codes (``squeue %T``, ``sacct State``) -> tasklift job states.

``FINISHED`` only means the element exited: its outcome comes through the job API (the
monitor fails a job whose runner ended without reporting). ``FAILED`` is a job runner that
crashed outside the function (the function's own exceptions are reported outcomes)."""

SQUEUE_FORMAT = "%i|%T|%l|%r"
"""``squeue --format``: element id, state, time limit, reason."""

Element = tuple[int, int]
"""``(array job id, array index)``."""

_HANDLE = re.compile(r"slurm:(\d+)_(\d+)")
_ELEMENT = re.compile(r"(\d+)_(\d+)")
_COLLAPSED = re.compile(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]")

_SCRIPT = """#!/bin/bash
# Written by tasklift's SlurmBackend: work {work_id} ({name}), {n} jobs.
# Array element I runs job I of this batch directory (batch.json, tokens.json); its exit
# status goes to exits/I (one file per element: appends are not atomic on NFS).
{command}
code=$?
printf '%s\\n' "$code" > {exits}/.$SLURM_ARRAY_TASK_ID.tmp \\
    && mv -f {exits}/.$SLURM_ARRAY_TASK_ID.tmp {exits}/$SLURM_ARRAY_TASK_ID
exit "$code"
"""


def batch_script(work_id: int, name: str, n_jobs: int, argv: Sequence[str], exits: str) -> str:
    """The ``sbatch`` script of one array: run the job runner, record its exit status."""
    return _SCRIPT.format(
        work_id=work_id,
        name=" ".join(name.split()),
        n=n_jobs,
        command=shlex.join(argv),
        exits=shlex.quote(exits),
    )


def parse_handle(handle: str) -> Element:
    """Return ``(array job id, array index)`` of a ``slurm:<id>_<index>`` handle.

    Raises:
        BackendError: not a Slurm handle.
    """
    match = _HANDLE.fullmatch(handle)
    if match is None:
        raise BackendError(f"not a Slurm job handle: {handle!r} (expected slurm:<jobid>_<index>)")
    return int(match[1]), int(match[2])


def format_walltime(seconds: float) -> str:
    """``--time`` value (``D-HH:MM:SS``) for ``seconds``; Slurm rounds it up to minutes."""
    total = math.ceil(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def _number(resources: Mapping[str, Any], key: str, *, whole: bool, zero_ok: bool) -> float | None:
    value = resources.get(key)
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok) or (whole and value != int(value)):
        kind = "whole number" if whole else "number"
        raise BackendError(
            f"resources[{key!r}] must be a {kind} {'>= 0' if zero_ok else '> 0'}, got {value!r}"
        )
    return float(value)


def sbatch_resources(resources: Mapping[str, Any]) -> list[str]:
    """``sbatch`` options for a work's ``resources``.

    ``cores`` -> ``--cpus-per-task``, ``memory_mb`` -> ``--mem=<n>M``, ``walltime`` (seconds)
    -> ``--time=D-HH:MM:SS``, ``gpus`` -> ``--gres=gpu:<n>``.

    Raises:
        BackendError: a value is not a positive number, or ``cores``/``gpus`` not whole.
    """
    cores = _number(resources, "cores", whole=True, zero_ok=False)
    memory = _number(resources, "memory_mb", whole=False, zero_ok=False)
    walltime = _number(resources, "walltime", whole=False, zero_ok=False)
    gpus = _number(resources, "gpus", whole=True, zero_ok=True)
    args: list[str] = []
    if cores is not None:
        args.append(f"--cpus-per-task={int(cores)}")
    if memory is not None:
        args.append(f"--mem={math.ceil(memory)}M")
    if walltime is not None:
        args.append(f"--time={format_walltime(walltime)}")
    if gpus:
        args.append(f"--gres=gpu:{int(gpus)}")
    return args


def _element_keys(job: str) -> list[Element]:
    """``"41_3"`` -> ``[(41, 3)]``; collapsed ``"41_[3,5-6%2]"`` -> ``[(41, 3), (41, 5), ...]``."""
    if match := _ELEMENT.fullmatch(job):
        return [(int(match[1]), int(match[2]))]
    if match := _COLLAPSED.fullmatch(job):
        keys: list[Element] = []
        for part in match[2].split(","):
            low, _, high = part.partition("-")
            keys.extend((int(match[1]), i) for i in range(int(low), int(high or low) + 1))
        return keys
    return []


def parse_squeue(text: str) -> dict[Element, tuple[str, str, str]]:
    """``{element: (state, time limit, reason)}`` from ``squeue --format=SQUEUE_FORMAT``."""
    return {key: (state, row[2], row[3]) for key, state, row in _table_rows(text, 4)}


def parse_sacct(text: str) -> dict[Element, tuple[str, str, str]]:
    """``{element: (state, "", exit code)}`` from ``sacct -P -n --format=JobID,State,ExitCode``.

    ``State`` may carry a suffix (``CANCELLED by 0``): only the code is kept.
    """
    return {key: (state, "", row[2]) for key, state, row in _table_rows(text, 3)}


def _table_rows(text: str, width: int) -> Iterator[tuple[Element, str, list[str]]]:
    """``(element, state code, fields)`` for each element of each ``|``-separated line of
    ``width`` fields (job id first, state second); other lines are skipped."""
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) == width:
            state = fields[1].split()[0] if fields[1].strip() else ""
            for key in _element_keys(fields[0]):
                yield key, state, fields


def array_ranges(indices: Sequence[int]) -> str:
    """``[3, 5, 6, 7]`` -> ``"3,5-7"`` (Slurm's array index notation)."""
    values = sorted(set(indices))
    parts: list[str] = []
    start = prev = values[0]
    for value in [*values[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ",".join(parts)
