"""Safe extraction of an archive, and the extraction cache (one directory per sha256)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from tasklift.archive.check import check_members, open_tar, scan
from tasklift.archive.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, Limits, human
from tasklift.archive.store import check_sha, verify_archive
from tasklift.errors import ArchiveError

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".tasklift-complete"


def safe_extract(
    tar_path: Path,
    target: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> None:
    """Extract an archive into ``target``, refusing anything that could land outside it.

    Every member is checked before anything is written: absolute paths, ``..`` components,
    duplicate names, special files (devices, fifos), and symlinks or hardlinks that resolve
    outside ``target`` (following the archive's own symlinks) are refused, and so is an archive
    of more than ``max_files`` members or whose files declare more than ``max_bytes`` (the
    headers are read as a stream, and reading stops at the first member over a limit).
    Extraction then runs under tarfile's ``data`` filter as a second guard and counts the bytes
    really written, stopping past ``max_bytes``; if it fails, ``target`` is cleaned up.

    Args:
        tar_path: the ``.tar`` / ``.tar.gz`` file.
        target: an empty or not yet existing directory.
        max_bytes: the largest total size of the archive's files once extracted.
        max_files: the most members (files, directories, links) the archive may hold.

    Raises:
        ArchiveError: naming the offending member or the limit reached, or when the archive
            cannot be read or ``target`` is not empty.
    """
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ArchiveError(f"extraction target {str(target)!r} is not an empty directory")
    limits = Limits(Path(tar_path).name, max_bytes, max_files)
    try:
        with open_tar(Path(tar_path), limits) as tar:
            members = scan(tar, limits)
            check_members(members)
            created = not target.exists()
            target.mkdir(parents=True, exist_ok=True)
            try:
                tar.extractall(target, members=_counted(members, target, limits), filter="data")
            except BaseException:  # leave target as it was: absent or empty
                shutil.rmtree(target, ignore_errors=True)
                if not created:
                    target.mkdir()
                raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ArchiveError(f"cannot extract archive {str(tar_path)!r}: {exc}") from exc


def _counted(
    members: list[tarfile.TarInfo], target: Path, limits: Limits
) -> Iterator[tarfile.TarInfo]:
    """Yield ``members`` to ``extractall``, adding up the bytes each one really wrote."""
    written = 0
    for m in members:
        yield m  # extractall writes it before asking for the next one
        if m.isreg():
            try:
                written += os.lstat(target / m.name).st_size
            except FileNotFoundError:  # the data filter may have refused it: tarfile raised
                continue
            if written > limits.max_bytes:
                raise limits.too_large(f"{human(written)} written at {m.name!r}")


def ensure_extracted(
    sha256: str,
    archive_file: Path,
    cache_dir: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> Path:
    """Return ``cache_dir/<sha256>``, extracting the archive there first if needed.

    The hot path (already extracted) takes no lock. Otherwise an exclusive ``flock`` on
    ``cache_dir/<sha256>.lock`` makes one process verify and extract into a temporary
    directory, write the completion marker and rename it into place; the others wait and reuse it.
    A refused archive leaves nothing in ``cache_dir`` but the lock file.

    Args:
        sha256: the archive's hash.
        archive_file: the archive, already on local disk.
        cache_dir: the extraction cache, one directory per hash.
        max_bytes: the largest total size of the archive's files (``Settings.archive_max_bytes``;
            never below what packing allows).
        max_files: the most members the archive may hold (``Settings.archive_max_files``).

    Returns:
        The directory holding the extracted tree (and the ``.tasklift-complete`` marker).

    Raises:
        ArchiveError: when the archive does not match ``sha256`` or is refused by
            :func:`safe_extract` (a limit, an unsafe member).
    """
    final = Path(cache_dir) / check_sha(sha256)
    if (final / COMPLETE_MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f"{sha256}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        if (final / COMPLETE_MARKER).is_file():
            return final
        if final.exists():  # an incomplete leftover from something other than this function
            shutil.rmtree(final)
        verify_archive(archive_file, sha256)
        staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:16]}.", dir=final.parent))
        try:
            os.chmod(staging, 0o755)
            safe_extract(archive_file, staging, max_bytes=max_bytes, max_files=max_files)
            (staging / COMPLETE_MARKER).write_text(sha256 + "\n", encoding="utf-8")
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    logger.info("extracted archive %s into %s", sha256, final)
    return final
