"""Reading an untrusted archive's headers under limits, and refusing members that could escape.

Headers are read as a stream through a capped reader (bounded work and memory whatever the
members declare); :func:`check_members` refuses absolute paths, ``..``, duplicates, special files
and links that resolve outside the target.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tasklift.archive.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, Limits, human
from tasklift.errors import ArchiveError

_MEMBER_OVERHEAD = 4096  # tar header, pax header and padding allowed per member when streaming
_MAX_LINK_HOPS = 40  # as many symlinks as Linux follows in one path before ELOOP


def check_archive(
    tar_path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    name: str | None = None,
) -> int:
    """Check an archive as :func:`safe_extract` would, writing nothing; return its member count.

    The tar headers are read as a stream (decompressing, never storing the data), stopping at
    the first member over a limit.

    Args:
        tar_path: the ``.tar`` / ``.tar.gz`` file.
        max_bytes: the largest total size of the archive's files once extracted.
        max_files: the most members (files, directories, links) the archive may hold.
        name: how errors name the archive (default: the file's name).

    Raises:
        ArchiveError: naming the limit reached or the offending member, or when the archive
            cannot be read.
    """
    limits = Limits(name or Path(tar_path).name, max_bytes, max_files)
    try:
        with open_tar(Path(tar_path), limits) as tar:
            members = scan(tar, limits)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ArchiveError(f"cannot read archive {str(tar_path)!r}: {exc}") from exc
    check_members(members)
    return len(members)


class _CappedReader(io.RawIOBase):
    """A read-only view of a (decompressed) stream that fails once it goes past ``cap`` bytes.

    Bounds the work and memory of reading tar headers, whatever the members declare (a huge pax
    header, gigabytes of padding); tarfile skips member data by seeking, which counts too.
    """

    def __init__(self, raw: IO[bytes], cap: int, limits: Limits) -> None:
        super().__init__()
        self._raw, self._cap, self._limits = raw, cap, limits

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._raw.tell()

    def _check(self, position: int) -> None:
        if position > self._cap:
            raise self._limits.too_large(f"its tar stream reaches {human(position)}")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._check(offset)
        elif whence == io.SEEK_CUR:
            self._check(self._raw.tell() + offset)
        return self._raw.seek(offset, whence)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._cap + 1 - self._raw.tell()
        data = self._raw.read(max(0, min(size, self._cap + 1 - self._raw.tell())))
        self._check(self._raw.tell())
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


@contextlib.contextmanager
def open_tar(path: Path, limits: Limits) -> Iterator[tarfile.TarFile]:
    """Open a ``.tar`` or ``.tar.gz`` for reading through a :class:`_CappedReader`."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    cap = limits.max_bytes + (limits.max_files + 1) * _MEMBER_OVERHEAD + 1024 * 1024
    with (
        gzip.open(path, "rb") if gzipped else path.open("rb") as raw,
        _CappedReader(raw, cap, limits) as capped,
        tarfile.open(fileobj=capped, mode="r:") as tar,  # type: ignore[arg-type]
    ):
        yield tar


def scan(tar: tarfile.TarFile, limits: Limits) -> list[tarfile.TarInfo]:
    """Read the members' headers one by one, refusing at the first one past a limit."""
    members: list[tarfile.TarInfo] = []
    declared = 0
    for m in tar:
        members.append(m)
        if len(members) > limits.max_files:
            raise limits.too_many()
        if m.isreg():
            declared += m.size
            if declared > limits.max_bytes:
                raise limits.too_large(f"its files declare {human(declared)} at {m.name!r}")
    return members


def check_members(members: list[tarfile.TarInfo]) -> None:
    """Refuse the whole archive if any member could write outside the target (see safe_extract)."""
    links: dict[str, str] = {}
    names: list[str] = []
    for m in members:
        if not m.name or m.name.startswith("/"):
            raise ArchiveError(f"archive member {m.name!r} has an absolute or empty path; refused")
        if ".." in m.name.split("/"):
            raise ArchiveError(f"archive member {m.name!r} contains '..'; refused")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise ArchiveError(f"archive member {m.name!r} is a device, fifo or special file")
        names.append(posixpath.normpath(m.name))
        if m.issym():
            links[names[-1]] = m.linkname
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise ArchiveError(f"archive member {dup!r} appears more than once; refused")
    files: set[str] = set()
    for m, name in zip(members, names, strict=True):
        parent = [] if name == "." else name.split("/")[:-1]
        if _resolve(parent, links) is None:
            raise ArchiveError(f"archive member {m.name!r} would be written outside the target")
        if m.issym() and (
            m.linkname.startswith("/") or _resolve([*parent, m.linkname], links) is None
        ):
            raise ArchiveError(f"archive symlink {m.name!r} -> {m.linkname!r} leaves the target")
        if m.islnk() and posixpath.normpath(m.linkname or "/") not in files:
            raise ArchiveError(
                f"archive hardlink {m.name!r} -> {m.linkname!r}: no such earlier file"
            )
        if m.isreg():
            files.add(name)


def _resolve(parts: list[str], links: dict[str, str]) -> list[str] | None:
    """Resolve a path inside the target, following the archive's symlinks; None if it escapes."""
    out: list[str] = []
    todo = "/".join(parts).split("/")
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                return None
            out.pop()
            continue
        link = links.get("/".join([*out, part]))
        if link is None:
            out.append(part)
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS or link.startswith("/"):
            return None
        todo = link.split("/") + todo
    return out
