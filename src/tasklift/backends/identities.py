"""Runner identities of a multi-user server: which OS account runs whose job runners.

A server (``tasklift server --runner-user ...``) never runs a job as itself: the local backend
starts each tasklift user's workers under an unprivileged OS identity leased to that user alone
(same user, same identity; never two users at once). A lease comes with a private home and temp
directory (mode 0700, owned by the identity). When the lease ends every process of the identity
is killed and its directory removed, so the next user starts from nothing.

An identity is an account name (``tlrun``), a numeric uid (``61001``) or a range of uids with no
account (``61000-61099``, as systemd's ``DynamicUser`` does: group = uid). Switching to them needs
root, or the capabilities ``CAP_SETUID``, ``CAP_SETGID``, ``CAP_CHOWN`` and ``CAP_KILL``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tasklift.errors import ConfigError

__all__ = [
    "IdentityPool",
    "RunnerIdentity",
    "parse_identities",
    "runner_environment",
]

logger = logging.getLogger(__name__)

MAX_RANGE = 100_000
"""Most identities one range may name."""
SHARED_ACCOUNTS = frozenset({"nobody", "nogroup", "daemon", "www-data"})
"""Accounts other daemons use: a job holding one could signal or read their processes."""
PASSED_ON = ("TASKLIFT_ARCHIVE_MAX_MB", "TASKLIFT_ARCHIVE_MAX_FILES", "TASKLIFT_QUIET")
"""The server's variables an isolated worker gets (limits it applies; nothing secret)."""
KILL_TIMEOUT = 10.0
"""Seconds the end of a lease waits for the identity's processes to disappear."""


@dataclass(frozen=True)
class RunnerIdentity:
    """One OS identity job runners can run as.

    Attributes:
        uid: the user id.
        gid: the group id (the account's primary group; the uid for bare uids).
        label: how messages name it (``tlrun (uid 1001)``).
    """

    uid: int
    gid: int
    label: str


@dataclass(frozen=True)
class Lease:
    """An identity leased to one tasklift user, with its private directories."""

    identity: RunnerIdentity
    user: str
    home: Path
    tmp: Path
    lock_fd: int = -1


def _one(spec: str) -> list[RunnerIdentity]:
    spec = spec.strip()
    if not spec:
        return []
    first, sep, last = spec.partition("-")
    if sep and first.isdigit() and last.isdigit():
        low, high = int(first), int(last)
        if high < low or high - low + 1 > MAX_RANGE:
            raise ConfigError(
                f"runner identities {spec!r}: a range is LOW-HIGH with at most {MAX_RANGE} uids"
            )
        return [RunnerIdentity(uid, uid, f"uid {uid}") for uid in range(low, high + 1)]
    if spec.isdigit():
        uid = int(spec)
        with contextlib.suppress(KeyError):
            entry = pwd.getpwuid(uid)
            return [RunnerIdentity(uid, entry.pw_gid, f"{entry.pw_name} (uid {uid})")]
        return [RunnerIdentity(uid, uid, f"uid {uid}")]
    try:
        entry = pwd.getpwnam(spec)
    except KeyError:
        raise ConfigError(
            f"runner user {spec!r} does not exist: create an unprivileged account for job "
            f"runners (e.g. `useradd --system --no-create-home {spec}`), or give a range of "
            "uids with no account (e.g. 61000-61099)"
        ) from None
    if spec in SHARED_ACCOUNTS:
        raise ConfigError(
            f"runner user {spec!r} is shared with other daemons; a job running as it could "
            "signal or read their processes: create a dedicated account"
        )
    return [RunnerIdentity(entry.pw_uid, entry.pw_gid, f"{spec} (uid {entry.pw_uid})")]


def parse_identities(specs: str | list[str]) -> list[RunnerIdentity]:
    """Parse ``--runner-user`` values: names, uids and ``LOW-HIGH`` uid ranges, comma-separated.

    Raises:
        ConfigError: an unknown account, a privileged or shared identity, the server's own
            identity, a malformed range, or nothing at all.
    """
    parts = [specs] if isinstance(specs, str) else list(specs)
    found: dict[int, RunnerIdentity] = {}
    for part in parts:
        for spec in part.split(","):
            for identity in _one(spec):
                found.setdefault(identity.uid, identity)
    if not found:
        raise ConfigError("no runner identity given: --runner-user NAME|UID|LOW-HIGH")
    for identity in found.values():
        if identity.uid == 0 or identity.gid == 0:
            raise ConfigError(
                f"runner identity {identity.label} is root (or in group 0): job runners must "
                "be unprivileged"
            )
        if identity.uid == os.getuid():
            raise ConfigError(
                f"runner identity {identity.label} is the server's own identity: jobs could "
                "read the server's key and database; use another account"
            )
        if identity.uid == 65534:
            raise ConfigError("runner identity 65534 is 'nobody', shared with other daemons")
    return list(found.values())


def runner_environment(lease: Lease, python: str) -> dict[str, str]:
    """The whole environment of a worker started under ``lease``: nothing of the server's."""
    path = os.pathsep.join([str(Path(python).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    limits = {k: os.environ[k] for k in PASSED_ON if k in os.environ}
    return limits | {
        "HOME": str(lease.home),
        "TMPDIR": str(lease.tmp),
        "PATH": path,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "USER": f"tasklift-runner-{lease.identity.uid}",
        "TASKLIFT_RUNNER_PRIVATE": "1",
        "TASKLIFT_HOME": str(lease.home / ".tasklift"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


class IdentityPool:
    """Leases runner identities to tasklift users, one user per identity at a time.

    Args:
        identities: the identities job runners may run as.
        base_dir: where leases get their private directories (created 0711, owned by the
            server: runners can reach their own subdirectory and list nothing).
    """

    def __init__(self, identities: list[RunnerIdentity], base_dir: Path) -> None:
        self._free = list(identities)
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._lease_lock = threading.Lock()  # one lease is made at a time
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o711)
        self.size = len(identities)

    def lease(self, user: str) -> Lease | None:
        """The lease of ``user`` (a new one when it has none); ``None`` when all are taken.

        An identity is taken only with an exclusive ``flock`` on ``<base_dir>/<uid>.lock``,
        held until it is recycled: another engine of this host with the same identities skips
        it, and the processes of an identity nobody holds are leftovers of a dead engine.
        """
        with self._lease_lock:
            with self._lock:
                lease = self._leases.get(user)
                if lease is not None:
                    return lease
                candidates = list(self._free)
            for identity in candidates:
                lock_fd = self._try_lock(identity)
                if lock_fd is None:
                    continue  # another engine on this host holds it
                with self._lock:
                    self._free.remove(identity)
                break
            else:
                return None
            kill_all(identity)  # leftovers of a dead engine, if any
            home = Path(tempfile.mkdtemp(prefix=f"u{identity.uid}-", dir=self.base_dir))
            tmp = home / "tmp"
            tmp.mkdir(mode=0o700)
            for path in (home, tmp):
                os.chown(path, identity.uid, identity.gid)
                os.chmod(path, 0o700)
            lease = Lease(identity=identity, user=user, home=home, tmp=tmp, lock_fd=lock_fd)
            with self._lock:
                self._leases[user] = lease
        logger.info("runner identity %s leased to user %s", identity.label, user)
        return lease

    def _try_lock(self, identity: RunnerIdentity) -> int | None:
        path = self.base_dir / f"{identity.uid}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def release(self, user: str) -> None:
        """End ``user``'s lease: kill every process of its identity, remove its directory."""
        lease = self.detach(user)
        if lease is not None:
            self.recycle(lease)

    def detach(self, user: str) -> Lease | None:
        """Take ``user``'s lease away at once (a new lease of the user gets another
        identity); :meth:`recycle` then cleans the identity up and frees it."""
        with self._lock:
            return self._leases.pop(user, None)

    def recycle(self, lease: Lease) -> None:
        """Kill every process of a detached lease's identity, remove its home, free it."""
        user = lease.user
        kill_all(lease.identity)
        shutil.rmtree(lease.home, ignore_errors=True)
        if lease.home.exists():
            logger.error("could not remove %s after its lease ended", lease.home)
        os.close(lease.lock_fd)  # another engine of this host may take it now
        with self._lock:
            self._free.append(lease.identity)
        logger.info("runner identity %s released by user %s", lease.identity.label, user)

    def leased(self) -> dict[str, Lease]:
        """The current leases by user."""
        with self._lock:
            return dict(self._leases)

    def close(self) -> None:
        """End every lease."""
        for user in list(self.leased()):
            self.release(user)

    def probe(self, python: str) -> None:
        """Start ``python -c 'import tasklift.runner'`` as the first identity, or explain why not.

        Raises:
            ConfigError: the server cannot switch identity, or the identity cannot run this
                Python and tasklift (a private install directory, e.g. under ``/root``).
        """
        lease = self.lease("\0probe")
        if lease is None:  # pragma: no cover - the pool is never empty here
            raise ConfigError("no runner identity is free for the start-up check")
        try:
            proc = subprocess.run(
                [python, "-c", "import tasklift.runner"],
                user=lease.identity.uid,
                group=lease.identity.gid,
                extra_groups=[],
                cwd=lease.home,
                env=runner_environment(lease, python),
                capture_output=True,
                timeout=60,
                check=False,
            )
        except PermissionError as exc:
            if exc.errno == errno.EPERM:  # setuid/setgid refused: not root, no capability
                raise ConfigError(
                    f"this server (uid {os.getuid()}) cannot start processes as the runner "
                    f"identity {lease.identity.label}: run it as root or with the capabilities "
                    "CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_KILL"
                ) from exc
            raise ConfigError(
                f"the runner identity {lease.identity.label} may not execute {python} "
                f"({exc.strerror}): install Python and tasklift where every account can read "
                "them (not under a private home such as /root)"
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"the runner identity {lease.identity.label} cannot start {python}: {exc}; "
                "install Python and tasklift where every account can read them"
            ) from exc
        finally:
            self.release("\0probe")
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise ConfigError(
                f"the runner identity {lease.identity.label} cannot run {python} with tasklift "
                f"(exit {proc.returncode}: {' | '.join(tail) or 'no output'}); install Python "
                "and tasklift where every account can read them (not under a private home "
                "such as /root)"
            )


def kill_all(identity: RunnerIdentity) -> None:
    """Kill every process running as ``identity`` and wait until none is left.

    ``kill(-1, SIGKILL)`` from a process of the identity reaches all of them in one call (a
    forking job cannot outrun it); a scan of ``/proc`` then confirms none is left.
    """
    deadline = time.monotonic() + KILL_TIMEOUT
    while True:
        pids = _pids_of(identity.uid)
        if not pids:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [sys.executable, "-S", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"],
                user=identity.uid,
                group=identity.gid,
                extra_groups=[],
                env={},
                cwd="/",
                timeout=10,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for pid in _pids_of(identity.uid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            logger.error("processes of %s survive SIGKILL: %s", identity.label, pids)
            return
        time.sleep(0.02)


def _pids_of(uid: int) -> list[int]:
    """Processes whose real, effective or saved uid is ``uid`` (``/proc/PID/status``: the
    directory's owner would be root for a process that made itself non-dumpable)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as handle:
                for line in handle:
                    if line.startswith(b"Uid:"):
                        if uid in {int(x) for x in line.split()[1:4]}:
                            pids.append(int(entry.name))
                        break
        except (OSError, ValueError):
            continue
    return pids
