"""The content store: archives named by their sha256, written atomically, hashed and listed."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tarfile
import tempfile
import zlib
from pathlib import Path

from tasklift.archive.limits import human
from tasklift.archive.pack import PackedArchive
from tasklift.errors import ArchiveError

logger = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def check_sha(sha256: str) -> str:
    """Return ``sha256`` if it is a lowercase hex sha256 digest; raise ArchiveError if not."""
    if not _SHA256_RE.fullmatch(sha256):
        raise ArchiveError(f"{sha256!r} is not a sha256 hex digest")
    return sha256


def archive_path(archive_dir: Path, sha256: str) -> Path:
    """Return where the archive ``sha256`` lives in the content store: ``<sha256>.tar.gz``.

    Raises:
        ArchiveError: when ``sha256`` is not a lowercase hex sha256 digest.
    """
    return Path(archive_dir) / f"{check_sha(sha256)}.tar.gz"


def store_archive(archive_dir: Path, packed: PackedArchive) -> Path:
    """Write a packed archive into the content store, atomically; an existing copy is kept.

    Returns:
        The archive's path in the store.

    Raises:
        ArchiveError: when ``packed.sha256`` is not the hash of ``packed.data``.
    """
    if hashlib.sha256(packed.data).hexdigest() != packed.sha256:
        raise ArchiveError(f"archive data does not match its sha256 {packed.sha256}")
    path = archive_path(archive_dir, packed.sha256)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{packed.sha256[:16]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(packed.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.debug("stored archive %s (%s)", path, human(len(packed.data)))
    return path


def sha256_file(path: Path) -> str:
    """Return the sha256 hex digest of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def verify_archive(path: Path, sha256: str) -> None:
    """Check that a file's content hashes to ``sha256``.

    Raises:
        ArchiveError: when the file is missing or its content has another hash.
    """
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise ArchiveError(f"cannot read archive {str(path)!r}: {exc}") from exc
    if actual != sha256:
        raise ArchiveError(f"archive {str(path)!r} is corrupt: sha256 {actual}, expected {sha256}")


def list_members(tar_path: Path) -> dict[str, tuple[int, str]]:
    """The regular files and symlinks of a (trusted, stored) archive: ``{name: (size, digest)}``.

    The digest is the sha256 of a file's content, or ``-> target`` for a symlink.

    Raises:
        ArchiveError: when the archive cannot be read.
    """
    found: dict[str, tuple[int, str]] = {}
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            for m in tar:
                if m.issym():
                    found[m.name] = (0, f"-> {m.linkname}")
                elif m.isreg() and (fh := tar.extractfile(m)) is not None:
                    found[m.name] = (m.size, hashlib.sha256(fh.read()).hexdigest())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ArchiveError(f"cannot read archive {str(tar_path)!r}: {exc}") from exc
    return found
