"""The ``slurm`` backend: one Slurm job array per submitted batch, one job per array element.

URL format: ``slurm`` (``[backends.NAME] type = "slurm"`` in ``tasklift.toml``, or
``Workflow(backend=SlurmBackend(partition=..., account=...))``).
Supports: job arrays (``--array=0-(N-1)%max_running``, split at the cluster's ``MaxArraySize``),
resources (``cores``, ``memory_mb``, ``walltime``, ``gpus``), partition/account/qos and extra
``sbatch`` arguments, poll (one ``squeue``, then one ``sacct`` or the elements' exit records),
cancel (one ``scancel``), handles that outlive the engine (``slurm:<array job id>_<index>``).

Each array element runs ``python -m tasklift.runner job --batch-dir DIR`` (through the work's
``init_env``); the runner reads its job and token from the batch directory by its array index
and reports to the job API: results never travel through Slurm. The spool directory holding the
batch directories must be on a filesystem the compute nodes share with the engine.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from tasklift.backends.base import Backend, OutcomeSink
from tasklift.backends.command import job_environment
from tasklift.backends.slurm_script import (
    SLURM_STATES,
    SQUEUE_FORMAT,
    Element,
    array_ranges,
    batch_script,
    parse_handle,
    parse_sacct,
    parse_squeue,
    sbatch_resources,
)
from tasklift.errors import BackendError, ConfigError
from tasklift.records import JobSpec, WorkSpec
from tasklift.runner.batch import TOKENS_FILE, write_batch
from tasklift.states import JobState

_ENDED = frozenset({JobState.FINISHED, JobState.FAILED, JobState.LOST})

__all__ = ["SlurmBackend"]

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 60.0
"""Seconds any one Slurm command (sbatch, squeue, sacct, scancel, scontrol) may take."""
FORBIDDEN_ARGS = ("--array", "-a", "--output", "-o", "--error", "-e", "--parsable", "--wrap")
"""``sbatch`` options the backend sets itself; ``extra_args`` may not override them."""
MAX_REASONS = 10_000
_JOB_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def _check_name(what: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c.isspace() or c == "," for c in value):
        raise ConfigError(f"SlurmBackend {what} must be one name without spaces, got {value!r}")
    return value


class SlurmBackend(Backend):
    """Runs each job as one element of a Slurm job array (``sbatch --array``).

    Args:
        partition: ``--partition`` (default: the cluster's default partition).
        account: ``--account`` to charge.
        qos: ``--qos``.
        max_running: most elements of one array running at once (``--array=...%N``).
        extra_args: further ``sbatch`` arguments, e.g. ``["--constraint=haswell"]``.
        spool_dir: where batch directories go (default ``<tasklift home>/slurm``); it must be
            on a filesystem the compute nodes share.
        python: the job runner's interpreter on the nodes (default: ``job_python`` or this one).
        max_array_size: most elements per array (default: ``MaxArraySize`` of the cluster).
        command_timeout: seconds any one Slurm command may take.
    """

    name: ClassVar[str] = "slurm"
    handles_outlive_engine: ClassVar[bool] = True
    runs_remotely: ClassVar[bool] = True

    def __init__(
        self,
        *,
        partition: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        max_running: int | None = None,
        extra_args: Sequence[str] = (),
        spool_dir: str | os.PathLike[str] | None = None,
        python: str | None = None,
        max_array_size: int | None = None,
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        self.partition = _check_name("partition", partition)
        self.account = _check_name("account", account)
        self.qos = _check_name("qos", qos)
        for what, number in (("max_running", max_running), ("max_array_size", max_array_size)):
            if number is not None and (
                isinstance(number, bool) or not isinstance(number, int) or number < 1
            ):
                raise ConfigError(f"SlurmBackend {what} must be a positive integer, got {number!r}")
        self.max_running = max_running
        self.max_array_size = max_array_size
        if isinstance(extra_args, str | bytes) or not all(isinstance(a, str) for a in extra_args):
            raise ConfigError(
                f"SlurmBackend extra_args must be a list of strings, got {extra_args!r}"
            )
        self.extra_args = list(extra_args)
        for arg in self.extra_args:
            option = arg.split("=", 1)[0]
            if option in FORBIDDEN_ARGS:
                raise ConfigError(f"SlurmBackend sets {option} itself; remove it from extra_args")
        if command_timeout <= 0:
            raise ConfigError(f"command_timeout must be positive, got {command_timeout!r}")
        self.command_timeout = float(command_timeout)
        self.spool_dir = Path(spool_dir).expanduser() if spool_dir is not None else None
        self.python = python
        self._accounting: bool | None = None  # sacct works (accounting storage is configured)
        self._lock = threading.Lock()
        self._dirs: dict[int, Path] = {}  # array job id -> its batch directory
        # array job id -> elements not yet seen ending; at none, its tokens file is deleted
        self._open: dict[int, set[int]] = {}
        self._reasons: dict[str, str] = {}
        self._cancelled: dict[str, None] = {}  # handles this backend cancelled (ordered set)

    # ------------------------------------------------------------------ lifecycle
    def start(self, sink: OutcomeSink) -> None:
        """Choose the spool directory (from the engine's settings unless given)."""
        settings = getattr(sink, "settings", None)
        if self.spool_dir is None:
            home = getattr(settings, "home", None)
            self.spool_dir = (Path(home) if home else Path.home() / ".tasklift") / "slurm"
        if self.python is None:
            self.python = getattr(settings, "job_python", None) or sys.executable
        if "%" in str(self.spool_dir):
            raise ConfigError(f"the Slurm spool dir must not contain '%': {self.spool_dir}")
        (self.spool_dir / "jobs").mkdir(parents=True, exist_ok=True, mode=0o700)

    def close(self) -> None:
        """Nothing to stop: submitted arrays keep running (their handles outlive the engine)."""

    # ------------------------------------------------------------------ commands
    def _run(self, argv: list[str], *, env: Mapping[str, str] | None = None) -> str:
        """Run one Slurm command; return its standard output.

        Raises:
            BackendError: not found, timed out, or a non-zero exit (with its stderr).
        """
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=self.command_timeout,
                env=env,
                check=False,
            )
        except FileNotFoundError as exc:
            raise BackendError(f"{argv[0]} not found: is Slurm installed and on the PATH?") from exc
        except subprocess.TimeoutExpired as exc:
            raise BackendError(
                f"{argv[0]} did not answer within {self.command_timeout:g} s"
            ) from exc
        if proc.returncode != 0:
            why = proc.stderr.strip() or proc.stdout.strip() or "no message"
            raise BackendError(f"{argv[0]} failed (exit status {proc.returncode}): {why}")
        return proc.stdout

    def _read_config(self) -> None:
        """Read ``MaxArraySize`` and the accounting storage type once (``scontrol``)."""
        if self._accounting is not None:
            return
        config: dict[str, str] = {}
        for line in self._run(["scontrol", "show", "config"]).splitlines():
            key, sep, value = line.partition("=")
            if sep:
                config[key.strip()] = value.strip()
        if self.max_array_size is None:
            try:
                self.max_array_size = max(1, int(config.get("MaxArraySize", "1001")) - 1)
            except ValueError as exc:
                raise BackendError(f"unreadable MaxArraySize: {config['MaxArraySize']!r}") from exc
        self._accounting = config.get("AccountingStorageType", "") not in (
            "",
            "accounting_storage/none",
        )

    # ------------------------------------------------------------------ submit
    def submit(self, work: WorkSpec, jobs: Sequence[JobSpec]) -> list[str]:
        """Submit ``jobs`` as one job array (several past ``MaxArraySize``); one handle each.

        Raises:
            BackendError: no job API URL or tokens, bad resources, or ``sbatch`` refused.
        """
        if not jobs:
            return []
        if self.spool_dir is None:
            raise BackendError("SlurmBackend.submit before start()")
        if not work.service_url:
            raise BackendError(
                "the slurm backend runs job runners remotely: the work has no job API URL"
            )
        if any(not job.token for job in jobs):
            raise BackendError("the slurm backend needs a job token for every job")
        resource_args = sbatch_resources(work.resources)
        self._read_config()
        size = self.max_array_size or 1000
        handles: list[str] = []
        for offset in range(0, len(jobs), size):
            chunk = jobs[offset : offset + size]
            try:
                batch_dir = self._write_batch(work, chunk)
                array_id = self._sbatch(work, batch_dir, len(chunk), resource_args)
            except BackendError:
                if handles:  # earlier arrays of this batch run: do not leave them orphaned
                    self.cancel(handles)
                raise
            handles.extend(f"slurm:{array_id}_{i}" for i in range(len(chunk)))
        return handles

    def _write_batch(self, work: WorkSpec, jobs: Sequence[JobSpec]) -> Path:
        """Write one array's batch directory: jobs and tokens (0600), the script (0700).

        Raises:
            BackendError: the spool directory is not writable.
        """
        from tasklift.backends.command import runner_command

        assert self.spool_dir is not None and work.service_url
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        batch_dir = self.spool_dir / f"work-{work.work_id}" / stamp
        argv = runner_command(
            self.python or sys.executable, work.init_env, ["job", "--batch-dir", str(batch_dir)]
        )
        text = batch_script(work.work_id, work.name, len(jobs), argv, str(batch_dir / "exits"))
        try:
            write_batch(batch_dir, work.service_url, jobs)
            (batch_dir / "exits").mkdir(mode=0o700, exist_ok=True)
            fd = os.open(batch_dir / "submit.sh", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        except OSError as exc:
            raise BackendError(
                f"cannot write the Slurm batch directory {batch_dir}: {exc}"
            ) from exc
        return batch_dir

    def _sbatch(
        self, work: WorkSpec, batch_dir: Path, n_jobs: int, resource_args: list[str]
    ) -> int:
        """Submit the array of one batch directory; return its job id.

        Raises:
            BackendError: ``sbatch`` refused (its message), failed or printed no job id.
        """
        assert self.spool_dir is not None
        array = f"0-{n_jobs - 1}" + (f"%{self.max_running}" if self.max_running else "")
        command = [
            "sbatch",
            "--parsable",
            f"--array={array}",
            f"--job-name={_JOB_NAME_CHARS.sub('_', f'tasklift-{work.name}')[:64]}",
            f"--output={batch_dir}/%A_%a.out",
            f"--chdir={batch_dir}",
            "--nodes=1",
            "--ntasks=1",
            *([f"--partition={self.partition}"] if self.partition else []),
            *([f"--account={self.account}"] if self.account else []),
            *([f"--qos={self.qos}"] if self.qos else []),
            *resource_args,
            *self.extra_args,
            str(batch_dir / "submit.sh"),
        ]
        env = job_environment()  # sbatch copies its environment into the jobs
        out = self._run(command, env=env).strip()
        try:
            array_id = int(out.split(";")[0])
        except ValueError as exc:
            raise BackendError(f"sbatch printed no job id: {out!r}") from exc
        link = self.spool_dir / "jobs" / str(array_id)
        try:
            link.symlink_to(batch_dir)
        except OSError as exc:  # poll still finds it while this engine runs
            logger.warning("cannot link %s -> %s: %s", link, batch_dir, exc)
        with self._lock:
            self._dirs[array_id] = batch_dir
            self._open[array_id] = set(range(n_jobs))
        logger.info(
            "work %s: %d jobs as Slurm array %d (%s)", work.name, n_jobs, array_id, batch_dir
        )
        return array_id

    # ------------------------------------------------------------------ poll
    def _batch_dir(self, array_id: int) -> Path | None:
        with self._lock:
            known = self._dirs.get(array_id)
        if known is not None:
            return known
        link = (self.spool_dir or Path()) / "jobs" / str(array_id)
        try:
            target = link.resolve(strict=True)
        except OSError:
            return None
        with self._lock:
            self._dirs[array_id] = target
        return target

    def _squeue(self, array_ids: Sequence[int]) -> dict[Element, tuple[str, str, str]]:
        """``{element: (state, time limit, reason)}`` of the elements Slurm still lists."""
        jobs = ",".join(map(str, array_ids))
        argv = ["squeue", "--noheader", "--array", "--states=all", f"--jobs={jobs}"]
        try:
            return parse_squeue(self._run([*argv, f"--format={SQUEUE_FORMAT}"]))
        except BackendError as exc:
            if "Invalid job id specified" in str(exc):  # none of them is known any more
                return {}
            raise

    def _sacct(self, array_ids: Sequence[int]) -> dict[Element, tuple[str, str, str]]:
        """``{element: (state, "", exit code)}`` from the accounting database."""
        jobs = ",".join(map(str, array_ids))
        argv = ["sacct", "-X", "-P", "-n", f"--jobs={jobs}", "--format=JobID,State,ExitCode"]
        return parse_sacct(self._run(argv))

    def _exit_code(self, array_id: int, index: int) -> int | None:
        """The element's own exit record (``exits/<index>`` in its batch directory)."""
        batch_dir = self._batch_dir(array_id)
        if batch_dir is None:
            return None
        try:
            return int((batch_dir / "exits" / str(index)).read_text().strip())
        except (OSError, ValueError):
            return None

    def poll(self, handles: Sequence[str]) -> dict[str, JobState]:
        """States of ``handles``: one ``squeue`` call, then ``sacct`` or exit records.

        Raises:
            BackendError: ``squeue`` (or ``sacct``) failed: nothing is concluded then.
        """
        states: dict[str, JobState] = {}
        reasons: dict[str, str] = {}
        parsed: dict[str, Element] = {}
        for handle in handles:
            try:
                parsed[handle] = parse_handle(handle)
            except BackendError as exc:
                states[handle], reasons[handle] = JobState.LOST, str(exc)
        if parsed:
            ids = sorted({array_id for array_id, _ in parsed.values()})
            listed = self._squeue(ids)
            missing = [key for key in parsed.values() if key not in listed]
            if missing:
                self._read_config()
                if self._accounting:
                    listed.update(self._sacct(sorted({a for a, _ in missing})))
            for handle, (array_id, index) in parsed.items():
                what = f"array element {index} of job {array_id}"
                entry = listed.get((array_id, index))
                if entry is not None:
                    code, limit, extra = entry
                    state = SLURM_STATES.get(code)
                    if state is None:
                        logger.warning("unknown Slurm state %r of %s: taken as running", code, what)
                        state = JobState.RUNNING
                    states[handle] = state
                    if state in (JobState.LOST, JobState.FAILED):
                        reasons[handle] = self._ended(what, array_id, index, code, limit, extra)
                    continue
                exit_code = self._exit_code(array_id, index)
                if exit_code == 0:
                    states[handle] = JobState.FINISHED
                elif exit_code is not None:
                    states[handle] = JobState.FAILED
                    reasons[handle] = f"the job runner of {what} exited with status {exit_code}"
                elif handle in self._cancelled:  # a pending element leaves no record
                    states[handle] = JobState.LOST
                    reasons[handle] = f"{what} was cancelled (scancel) by tasklift"
                else:
                    states[handle] = JobState.LOST
                    reasons[handle] = (
                        f"Slurm no longer knows {what} and it left no exit record "
                        "(killed: time limit, node failure, preemption or scancel)"
                    )
        for handle, (array_id, index) in parsed.items():
            batch_dir = self._batch_dir(array_id)
            if handle in reasons and batch_dir is not None:
                reasons[handle] += f"; output in {batch_dir}/{array_id}_{index}.out"
        with self._lock:
            self._reasons.update(reasons)
            while len(self._reasons) > MAX_REASONS:
                del self._reasons[next(iter(self._reasons))]
        self._forget_tokens([parsed[h] for h, st in states.items() if h in parsed and st in _ENDED])
        return states

    def _forget_tokens(self, elements: Sequence[Element]) -> None:
        """Delete the tokens file of every batch all of whose elements have now ended: no
        runner of it can start any more (outputs and exit records stay for debugging)."""
        finished: list[int] = []
        with self._lock:
            for array_id, index in elements:
                still = self._open.get(array_id)
                if still is None:
                    continue  # already cleaned, or submitted before an engine restart
                still.discard(index)
                if not still:
                    del self._open[array_id]
                    finished.append(array_id)
        for array_id in finished:
            batch_dir = self._batch_dir(array_id)
            if batch_dir is None:
                continue
            try:
                (batch_dir / TOKENS_FILE).unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("cannot delete the job tokens of Slurm array %d: %s", array_id, exc)

    def _ended(
        self, what: str, array_id: int, index: int, code: str, limit: str, extra: str
    ) -> str:
        """One line on an element Slurm ended badly: its state, time limit or exit code."""
        if code == "TIMEOUT" and limit:
            detail = f"time limit {limit}"
        elif ":" in extra:  # sacct's ExitCode
            detail = f"exit code {extra}"
        elif (exit_code := self._exit_code(array_id, index)) is not None:
            detail = f"exit status {exit_code}"
        else:
            detail = extra if extra and extra != "None" else ""
        return f"Slurm ended {what} with {code}" + (f" ({detail})" if detail else "")

    def lost_reason(self, handle: str) -> str | None:
        """Why ``poll`` last reported ``handle`` lost or failed (Slurm's state, time limit)."""
        with self._lock:
            return self._reasons.get(handle)

    # ------------------------------------------------------------------ cancel
    def cancel(self, handles: Sequence[str]) -> None:
        """Cancel queued and running elements with one ``scancel`` (ended ones are ignored).

        Raises:
            BackendError: a handle is not a Slurm handle, or ``scancel`` failed.
        """
        by_array: dict[int, list[int]] = {}
        for handle in handles:
            array_id, index = parse_handle(handle)
            by_array.setdefault(array_id, []).append(index)
        if not by_array:
            return
        ids = [f"{a}_[{array_ranges(indices)}]" for a, indices in sorted(by_array.items())]
        self._run(["scancel", *ids])
        with self._lock:
            self._cancelled.update(dict.fromkeys(handles))
            while len(self._cancelled) > MAX_REASONS:
                del self._cancelled[next(iter(self._cancelled))]
        # a cancelled element never starts: its token is no longer needed
        self._forget_tokens([(a, i) for a, indices in by_array.items() for i in indices])
