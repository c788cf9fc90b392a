"""Source archives: deterministic packing, the content store, hashing, and safe extraction.

An archive is a reproducible ``.tar.gz`` of a workflow's source tree, named by its sha256.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import logging
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pathspec

from tasklift.errors import ArchiveError

if TYPE_CHECKING:
    from tasklift.settings import Settings

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FILES",
    "OUTPUT_DIR",
    "PackedArchive",
    "archive_path",
    "check_archive",
    "ensure_extracted",
    "list_members",
    "pack_source",
    "safe_extract",
    "sha256_file",
    "state_paths",
    "store_archive",
    "verify_archive",
]

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".tasklift-complete"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Largest total size of an archive's files, packed or extracted (``Settings.archive_max_mb``)."""
DEFAULT_MAX_FILES = 20_000
"""Most members (files, directories, links) of an archive (``Settings.archive_max_files``)."""
OUTPUT_DIR = "tasklift_out"
"""A folder name never packed (at any depth): where jobs and workflows can write outputs."""
_BUILTIN_EXCLUDES = pathspec.GitIgnoreSpec.from_lines(
    [".git", "__pycache__/", "*.py[co]", ".venv/", ".tox/", ".mypy_cache/", ".pytest_cache/",
     ".ruff_cache/", "*.egg-info/", "node_modules/", ".tasklift/", f"{OUTPUT_DIR}/"]
)  # fmt: skip
_SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")
_MEMBER_OVERHEAD = 4096  # tar header, pax header and padding allowed per member when streaming
_VENV_MARKERS = ("pyvenv.cfg", "conda-meta")  # a virtualenv, a conda environment
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MAX_LINK_HOPS = 40  # as many symlinks as Linux follows in one path before ELOOP

_Chain = tuple[tuple[str, pathspec.GitIgnoreSpec], ...]  # (dir relative to root, its .gitignore)


@dataclass(frozen=True)
class PackedArchive:
    """A packed source tree: the ``.tar.gz`` bytes and their sha256."""

    sha256: str
    data: bytes
    n_files: int
    unpacked_bytes: int


@dataclass(frozen=True)
class _Entry:
    rel: str  # POSIX path relative to the source root
    path: Path
    size: int  # 0 for symlinks
    linkname: str | None = None  # relative link target, for symlinks


def pack_source(
    source_dir: Path,
    *,
    exclude: Sequence[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    skip: Sequence[str | os.PathLike[str]] = (),
) -> PackedArchive:
    """Pack a source tree into a deterministic ``.tar.gz``: an unchanged tree gives the same hash.

    Skips version-control, cache and virtualenv directories, ``.tasklift/`` and
    ``tasklift_out/`` folders, whatever ``.gitignore`` files (root and nested) ignore,
    ``exclude``, and the paths in ``skip`` (tasklift's own state, see :func:`state_paths`).
    Symlinks are kept when they point inside the tree.

    Args:
        source_dir: the directory to pack.
        exclude: gitignore-style patterns relative to ``source_dir``; ``!pattern`` re-includes
            something a ``.gitignore`` ignored.
        max_bytes: the largest total size of the files to pack, before compression.
        max_files: the most files (and symlinks) to pack.
        skip: files or directories never packed, wherever they are (those outside
            ``source_dir``, or ``source_dir`` itself, change nothing).

    Returns:
        The packed archive.

    Raises:
        ArchiveError: when ``source_dir`` is not a directory, cannot be read, or is too large.
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise ArchiveError(f"source directory {str(root)!r} does not exist or is not a directory")
    user_spec = pathspec.GitIgnoreSpec.from_lines(list(exclude))
    try:
        skip_rel = _inside(root, skip)
        entries = sorted(_walk(root, user_spec, skip_rel), key=lambda e: e.rel)
    except OSError as exc:
        raise ArchiveError(f"cannot read source directory {str(root)!r}: {exc}") from exc
    total = sum(e.size for e in entries)
    if total > max_bytes:
        raise ArchiveError(_too_large_message(root, entries, total, max_bytes))
    if len(entries) > max_files:
        raise ArchiveError(_too_many_message(root, entries, max_files))

    buf = io.BytesIO()
    try:
        with (
            gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for entry in entries:
                info = tarfile.TarInfo(entry.rel)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if entry.linkname is not None:
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.linkname, 0o777
                    tar.addfile(info)
                    continue
                with entry.path.open("rb") as fh:
                    st = os.fstat(fh.fileno())
                    info.size = st.st_size
                    info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                    tar.addfile(info, fh)
    except OSError as exc:
        raise ArchiveError(f"cannot pack {str(root)!r}: {exc}") from exc
    data = buf.getvalue()
    packed = PackedArchive(hashlib.sha256(data).hexdigest(), data, len(entries), total)
    logger.info("packed %s: %d files, %s (%s gzipped), sha256 %s",
                root, packed.n_files, _human(total), _human(len(data)), packed.sha256)  # fmt: skip
    return packed


def state_paths(settings: Settings) -> list[Path]:
    """Tasklift's own state, never packed: home, archive store, cache, SQLite database files.

    The home itself is listed too, but :func:`pack_source` ignores a path that is the source
    directory or holds it; the named parts inside it are then skipped one by one.
    """
    home = Path(settings.home)
    paths = [home, Path(settings.archive_dir), Path(settings.cache_dir), home / "spool"]
    paths.append(home / "server.key")
    databases = [home / "tasklift.db"]
    url = settings.database_url
    if url.startswith("sqlite:///"):
        databases.append(Path(url.removeprefix("sqlite:///").split("?", 1)[0]))
    paths += [db.with_name(db.name + side) for db in databases for side in _SQLITE_SIDE_FILES]
    return paths


def _inside(root: Path, paths: Sequence[str | os.PathLike[str]]) -> frozenset[str]:
    """The POSIX paths relative to ``root`` of those ``paths`` strictly inside it."""
    real_root = os.path.realpath(root)
    found: set[str] = set()
    for path in paths:
        real = os.path.realpath(path)
        if real.startswith(real_root + os.sep):
            found.add(os.path.relpath(real, real_root).replace(os.sep, "/"))
    return frozenset(found)


def _walk(
    root: Path, user_spec: pathspec.GitIgnoreSpec, skip_rel: frozenset[str] = frozenset()
) -> list[_Entry]:
    """Collect the files and inside-the-tree symlinks to pack, pruning excluded directories."""
    real_root = os.path.realpath(root)
    entries: list[_Entry] = []
    stack: list[tuple[str, _Chain]] = [("", ())]
    while stack:
        rel_dir, chain = stack.pop()
        abs_dir = root / rel_dir
        gitignore = abs_dir / ".gitignore"
        if gitignore.is_file():
            lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
            chain = (*chain, (rel_dir, pathspec.GitIgnoreSpec.from_lines(lines)))
        with os.scandir(abs_dir) as it:
            children = sorted(it, key=lambda d: d.name)
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            if rel in skip_rel:
                logger.debug("skipping %s: tasklift's own state", rel)
            elif child.is_symlink():
                if not _excluded(rel, user_spec, chain):
                    _add_symlink(entries, rel, Path(child.path), real_root)
            elif child.is_dir(follow_symlinks=False):
                venv = any(os.path.exists(os.path.join(child.path, m)) for m in _VENV_MARKERS)
                if not venv and not _excluded(rel + "/", user_spec, chain):
                    stack.append((rel, chain))
            elif child.is_file(follow_symlinks=False):
                if not _excluded(rel, user_spec, chain):
                    entries.append(_Entry(rel, Path(child.path), child.stat().st_size))
            else:
                logger.debug("skipping %s: not a regular file, directory or symlink", rel)
    return entries


def _excluded(rel: str, user_spec: pathspec.GitIgnoreSpec, chain: _Chain) -> bool:
    """Decide one path (directories end in ``/``): built-ins, then ``exclude``, then .gitignore."""
    if _BUILTIN_EXCLUDES.match_file(rel):
        return True
    verdict = user_spec.check_file(rel).include
    if verdict is not None:
        return verdict
    for base, spec in reversed(chain):  # the deepest .gitignore has the last word
        verdict = spec.check_file(rel[len(base) + 1 :] if base else rel).include
        if verdict is not None:
            return verdict
    return False


def _add_symlink(entries: list[_Entry], rel: str, path: Path, real_root: str) -> None:
    if not os.path.exists(path):
        logger.warning("skipping symlink %s: its target does not exist (or it loops)", rel)
        return
    resolved = os.path.realpath(path)
    if resolved != real_root and not resolved.startswith(real_root + os.sep):
        logger.warning("skipping symlink %s: it points outside the source tree (%s)", rel, resolved)
        return
    link = os.path.relpath(resolved, os.path.realpath(path.parent))
    entries.append(_Entry(rel, path, 0, link.replace(os.sep, "/")))


def _too_large_message(root: Path, entries: list[_Entry], total: int, max_bytes: int) -> str:
    largest = sorted(entries, key=lambda e: (-e.size, e.rel))[:5]
    lines = [
        f"source directory {str(root)!r} holds {_human(total)} in {len(entries)} files, "
        f"over the archive limit of {_human(max_bytes)}. Largest files:",
        *(f"  {_human(e.size):>10}  {e.rel}" for e in largest),
        "Exclude what jobs do not need with exclude=[...] or a .gitignore entry, "
        "or raise the limit with TASKLIFT_ARCHIVE_MAX_MB.",
    ]
    return "\n".join(lines)


def _too_many_message(root: Path, entries: list[_Entry], max_files: int) -> str:
    counts: dict[str, int] = {}
    for e in entries:
        parts = e.rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            counts[folder] = counts.get(folder, 0) + 1
    shown: list[str] = []  # most files first; a parent holding no more than a child shown is not
    for folder in sorted(counts, key=lambda d: (-counts[d], -d.count("/"), d)):
        if not any(s.startswith(folder + "/") and counts[s] == counts[folder] for s in shown):
            shown.append(folder)
        if len(shown) == 5:
            break
    lines = [
        f"source directory {str(root)!r} holds {len(entries)} files, over the archive limit "
        f"of {max_files} files. Directories with the most files:",
        *(f"  {counts[d]:>8}  {d}/" for d in shown),
        "Exclude what jobs do not need with exclude=[...] or a .gitignore entry (outputs "
        f"can go to a {OUTPUT_DIR}/ folder, never packed), "
        "or raise the limit with TASKLIFT_ARCHIVE_MAX_FILES.",
    ]
    return "\n".join(lines)


def _human(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    return f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} B"


def _check_sha(sha256: str) -> str:
    if not _SHA256_RE.fullmatch(sha256):
        raise ArchiveError(f"{sha256!r} is not a sha256 hex digest")
    return sha256


def archive_path(archive_dir: Path, sha256: str) -> Path:
    """Return where the archive ``sha256`` lives in the content store: ``<sha256>.tar.gz``.

    Raises:
        ArchiveError: when ``sha256`` is not a lowercase hex sha256 digest.
    """
    return Path(archive_dir) / f"{_check_sha(sha256)}.tar.gz"


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
    logger.debug("stored archive %s (%s)", path, _human(len(packed.data)))
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
    limits = _Limits(Path(tar_path).name, max_bytes, max_files)
    try:
        with _open_tar(Path(tar_path), limits) as tar:
            members = _scan(tar, limits)
            _check_members(members)
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
    limits = _Limits(name or Path(tar_path).name, max_bytes, max_files)
    try:
        with _open_tar(Path(tar_path), limits) as tar:
            members = _scan(tar, limits)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ArchiveError(f"cannot read archive {str(tar_path)!r}: {exc}") from exc
    _check_members(members)
    return len(members)


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


@dataclass(frozen=True)
class _Limits:
    name: str  # how errors name the archive
    max_bytes: int
    max_files: int

    def too_large(self, reached: str) -> ArchiveError:
        return ArchiveError(
            f"archive {self.name} expands past {_human(self.max_bytes)} (the extraction limit, "
            f"TASKLIFT_ARCHIVE_MAX_MB): {reached}; refused"
        )

    def too_many(self) -> ArchiveError:
        return ArchiveError(
            f"archive {self.name} holds more than {self.max_files} members (the extraction "
            "limit, TASKLIFT_ARCHIVE_MAX_FILES); refused"
        )


class _CappedReader(io.RawIOBase):
    """A read-only view of a (decompressed) stream that fails once it goes past ``cap`` bytes.

    Bounds the work and memory of reading tar headers, whatever the members declare (a huge pax
    header, gigabytes of padding); tarfile skips member data by seeking, which counts too.
    """

    def __init__(self, raw: IO[bytes], cap: int, limits: _Limits) -> None:
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
            raise self._limits.too_large(f"its tar stream reaches {_human(position)}")

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
def _open_tar(path: Path, limits: _Limits) -> Iterator[tarfile.TarFile]:
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


def _scan(tar: tarfile.TarFile, limits: _Limits) -> list[tarfile.TarInfo]:
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
                raise limits.too_large(f"its files declare {_human(declared)} at {m.name!r}")
    return members


def _counted(
    members: list[tarfile.TarInfo], target: Path, limits: _Limits
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
                raise limits.too_large(f"{_human(written)} written at {m.name!r}")


def _check_members(members: list[tarfile.TarInfo]) -> None:
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
    final = Path(cache_dir) / _check_sha(sha256)
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
