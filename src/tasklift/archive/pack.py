"""Packing a source tree into a deterministic ``.tar.gz``: what is packed, what is skipped.

An unchanged tree always gives the same bytes, hence the same sha256 (the archive's name).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pathspec

from tasklift.archive.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, OUTPUT_DIR, human
from tasklift.errors import ArchiveError

if TYPE_CHECKING:
    from tasklift.settings import Settings

logger = logging.getLogger(__name__)

_BUILTIN_EXCLUDES = pathspec.GitIgnoreSpec.from_lines(
    [".git", "__pycache__/", "*.py[co]", ".venv/", ".tox/", ".mypy_cache/", ".pytest_cache/",
     ".ruff_cache/", "*.egg-info/", "node_modules/", ".tasklift/", f"{OUTPUT_DIR}/"]
)  # fmt: skip
_SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")
_VENV_MARKERS = ("pyvenv.cfg", "conda-meta")  # a virtualenv, a conda environment

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
                root, packed.n_files, human(total), human(len(data)), packed.sha256)  # fmt: skip
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
        f"source directory {str(root)!r} holds {human(total)} in {len(entries)} files, "
        f"over the archive limit of {human(max_bytes)}. Largest files:",
        *(f"  {human(e.size):>10}  {e.rel}" for e in largest),
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
