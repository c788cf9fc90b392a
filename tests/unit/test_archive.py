"""Tests for tasklift.archive: deterministic packing, excludes, the store, safe extraction."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from tasklift.archive import (
    COMPLETE_MARKER,
    PackedArchive,
    archive_path,
    check_archive,
    ensure_extracted,
    pack_source,
    safe_extract,
    sha256_file,
    state_paths,
    store_archive,
    verify_archive,
)
from tasklift.errors import ArchiveError
from tasklift.settings import Settings


def write(path: Path, text: str = "x", mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path


def members(packed: PackedArchive) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(packed.data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    write(src / "flow.py", "print('hi')\n")
    write(src / "pkg" / "__init__.py", "")
    write(src / "pkg" / "model.py", "W = 1\n")
    write(src / "run.sh", "#!/bin/sh\n", mode=0o750)
    write(src / "data" / "small.csv", "a,b\n1,2\n")
    return src


# ---------------------------------------------------------------- determinism


def test_same_tree_gives_same_hash_even_after_touching_mtimes(tree: Path) -> None:
    first = pack_source(tree)
    assert pack_source(tree).sha256 == first.sha256
    later = time.time() + 3600
    for path in tree.rglob("*"):
        os.utime(path, (later, later))
    (tree / "flow.py").chmod(0o600)  # modes are normalised too
    again = pack_source(tree)
    assert again.sha256 == first.sha256
    assert again.data == first.data


def test_content_change_gives_different_hash(tree: Path) -> None:
    before = pack_source(tree)
    write(tree / "pkg" / "model.py", "W = 2\n")
    assert pack_source(tree).sha256 != before.sha256


def test_archive_entries_are_normalised(tree: Path) -> None:
    packed = pack_source(tree)
    found = members(packed)
    assert list(found) == sorted(found)
    assert set(found) == {"data/small.csv", "flow.py", "pkg/__init__.py", "pkg/model.py", "run.sh"}
    assert packed.n_files == 5
    assert packed.unpacked_bytes == sum(m.size for m in found.values())
    for m in found.values():
        assert m.isreg()
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    assert found["run.sh"].mode == 0o755
    assert found["flow.py"].mode == 0o644
    assert packed.data[4:8] == b"\0\0\0\0"  # gzip header mtime


# ---------------------------------------------------------------- excludes


def test_builtin_excludes_and_virtualenvs(tree: Path) -> None:
    write(tree / ".git" / "HEAD", "ref")
    write(tree / "pkg" / "__pycache__" / "model.cpython-311.pyc", "bytecode")
    write(tree / "stray.pyc", "bytecode")
    write(tree / ".venv" / "lib" / "x.py")
    write(tree / "myenv" / "pyvenv.cfg", "home = /usr\n")
    write(tree / "myenv" / "lib" / "site.py")
    write(tree / "env" / "settings.py", "real source: no pyvenv.cfg here\n")
    write(tree / "node_modules" / "left-pad" / "index.js")
    write(tree / "pkg.egg-info" / "PKG-INFO")
    for cache in (".tox", ".mypy_cache", ".pytest_cache", ".ruff_cache"):
        write(tree / cache / "junk")
    names = set(members(pack_source(tree)))
    assert names == {
        "data/small.csv",
        "env/settings.py",
        "flow.py",
        "pkg/__init__.py",
        "pkg/model.py",
        "run.sh",
    }


def test_gitignore_root_nested_negation_and_dir_only(tree: Path) -> None:
    write(tree / ".gitignore", "*.log\n!keep.log\nbuild/\n/top_only.txt\n")
    write(tree / "a.log")
    write(tree / "keep.log")
    write(tree / "pkg" / "deep.log")
    write(tree / "build" / "out.bin")
    write(tree / "pkg" / "build", "a file named build is not a directory")
    write(tree / "top_only.txt")
    write(tree / "pkg" / "top_only.txt")
    write(tree / "pkg" / ".gitignore", "*.tmp\n!deep.log\n")
    write(tree / "pkg" / "scratch.tmp")
    write(tree / "pkg" / "sub" / "more.tmp")
    write(tree / "other.tmp", "the nested .gitignore does not apply here")
    names = set(members(pack_source(tree)))
    assert {"keep.log", "pkg/deep.log", "pkg/build", "pkg/top_only.txt", "other.tmp"} <= names
    assert {".gitignore", "pkg/.gitignore"} <= names
    for gone in ("a.log", "build/out.bin", "top_only.txt", "pkg/scratch.tmp", "pkg/sub/more.tmp"):
        assert gone not in names


def test_user_excludes(tree: Path) -> None:
    write(tree / ".gitignore", "*.h5\n")
    write(tree / "data" / "big.h5")
    write(tree / "data" / "needed.h5")
    write(tree / "notebooks" / "scratch.ipynb")
    packed = pack_source(tree, exclude=["notebooks/", "*.csv", "!data/needed.h5"])
    names = set(members(packed))
    assert "data/small.csv" not in names
    assert not any(n.startswith("notebooks") for n in names)
    assert "data/needed.h5" in names
    assert "data/big.h5" not in names


def test_symlinks_inside_kept_outside_skipped(
    tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = write(tmp_path / "secret.txt", "secret")
    (tree / "pkg" / "alias.py").symlink_to("model.py")
    (tree / "abs_alias.py").symlink_to(tree / "flow.py")  # absolute, but inside
    (tree / "pkg_link").symlink_to("pkg", target_is_directory=True)
    (tree / "leak").symlink_to(outside)
    (tree / "dangling").symlink_to("nowhere")
    with caplog.at_level(logging.WARNING, logger="tasklift.archive"):
        found = members(pack_source(tree))
    assert found["pkg/alias.py"].issym() and found["pkg/alias.py"].linkname == "model.py"
    assert found["abs_alias.py"].linkname == "flow.py"
    assert found["pkg_link"].issym() and found["pkg_link"].linkname == "pkg"
    assert "pkg_link/model.py" not in found  # the link is kept, not followed
    assert "leak" not in found and "dangling" not in found
    assert "outside the source tree" in caplog.text


def test_missing_source_dir(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="nope"):
        pack_source(tmp_path / "nope")
    with pytest.raises(ArchiveError, match="not a directory"):
        pack_source(write(tmp_path / "file.py"))


def test_size_limit_lists_largest_files(tree: Path) -> None:
    for i, size in enumerate([300_000, 200_000, 150_000, 120_000, 110_000, 100_000]):
        write(tree / "data" / f"blob{i}.bin", "0" * size)
    with pytest.raises(ArchiveError) as info:
        pack_source(tree, max_bytes=500_000)
    message = str(info.value)
    assert "over the archive limit of 488.3 KB" in message
    assert "957.1 KB in 11 files" in message  # the total: 980,000 + 36 bytes of source
    for i in range(5):
        assert f"data/blob{i}.bin" in message
    assert "blob5" not in message
    assert "293.0 KB  data/blob0.bin" in message
    assert "exclude=[...]" in message and ".gitignore" in message
    assert "TASKLIFT_ARCHIVE_MAX_MB" in message
    assert pack_source(tree, exclude=["*.bin"], max_bytes=500_000).n_files == 5


def test_file_limit_lists_the_directories_with_most_files(tree: Path) -> None:
    for i in range(12):
        write(tree / "data" / "raw" / f"r{i}.txt")
    for i in range(5):
        write(tree / "deep" / "a" / "b" / f"d{i}.txt")
    for i in range(4):
        write(tree / "logs" / f"l{i}.txt")
    with pytest.raises(ArchiveError) as info:
        pack_source(tree, max_files=20)
    message = str(info.value)
    assert "holds 26 files, over the archive limit of 20 files" in message
    listed = r" +13  data/\n +12  data/raw/\n +5  deep/a/b/\n +4  logs/\n +2  pkg/\n"
    assert re.search(listed, message), message  # deep/ and deep/a/ add nothing to deep/a/b/
    assert "TASKLIFT_ARCHIVE_MAX_FILES" in message and "tasklift_out/" in message
    assert pack_source(tree, max_files=26).n_files == 26


def test_tasklift_state_inside_the_tree_is_never_packed(tree: Path, tmp_path: Path) -> None:
    before = pack_source(tree)
    home = tree / "state"
    settings = Settings(home=home, archive_store=tree / "store", db_url=f"sqlite:///{tree}/x.db")
    for rel in ("tasklift.db", "tasklift.db-wal", "archives/a.tar.gz", "cache/a/f.py",
                "spool/1.json", "server.key"):  # fmt: skip
        write(home / rel)
    for rel in ("store/b.tar.gz", "x.db", "x.db-wal", "x.db-shm", "x.db-journal"):
        write(tree / rel)
    write(tree / ".tasklift" / "notes")
    write(tree / "sub" / "tasklift_out" / "result.csv")
    write(tree / "state_notes.txt", "not tasklift's")
    packed = pack_source(tree, skip=state_paths(settings))
    assert sorted(members(packed)) == sorted([*members(before), "state_notes.txt"])
    assert pack_source(tree, skip=[tmp_path, tree]).sha256 != before.sha256  # holders: no-ops


def test_home_that_is_the_tree_itself_skips_only_its_state(tree: Path) -> None:
    before = pack_source(tree)
    for rel in ("tasklift.db", "tasklift.db-shm", "archives/a.tar.gz", "cache/x/y.py"):
        write(tree / rel)
    assert pack_source(tree, skip=state_paths(Settings(home=tree))).sha256 == before.sha256


def test_check_archive_counts_members_and_refuses_unsafe_ones(tree: Path, tmp_path: Path) -> None:
    packed = pack_source(tree)
    path = store_archive(tmp_path / "archives", packed)
    assert check_archive(path) == packed.n_files
    evil = hostile(tmp_path / "evil.tar.gz", ("../evil", tarfile.REGTYPE, ""))
    with pytest.raises(ArchiveError, match=r"'\.\.'"):
        check_archive(evil)
    assert not (tmp_path / "evil").exists()


# ---------------------------------------------------------------- store and verify


def test_store_is_atomic_content_addressed_and_idempotent(tree: Path, tmp_path: Path) -> None:
    packed = pack_source(tree)
    store = tmp_path / "archives"
    path = store_archive(store, packed)
    assert path == archive_path(store, packed.sha256) == store / f"{packed.sha256}.tar.gz"
    assert sha256_file(path) == packed.sha256
    stat = path.stat()
    assert store_archive(store, packed) == path
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert [p.name for p in store.iterdir()] == [path.name]  # no temp files left
    forged = PackedArchive("0" * 64, packed.data, packed.n_files, packed.unpacked_bytes)
    with pytest.raises(ArchiveError, match="does not match"):
        store_archive(store, forged)
    with pytest.raises(ArchiveError, match="not a sha256"):
        archive_path(store, "../../etc/passwd")


def test_verify_archive_detects_corruption(tree: Path, tmp_path: Path) -> None:
    packed = pack_source(tree)
    path = store_archive(tmp_path / "archives", packed)
    verify_archive(path, packed.sha256)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="corrupt"):
        verify_archive(path, packed.sha256)
    cache = tmp_path / "cache"
    with pytest.raises(ArchiveError, match="corrupt"):
        ensure_extracted(packed.sha256, path, cache)
    assert not (cache / packed.sha256).exists()
    with pytest.raises(ArchiveError, match="cannot read"):
        verify_archive(tmp_path / "missing.tar.gz", packed.sha256)


# ---------------------------------------------------------------- extraction


def test_round_trip(tree: Path, tmp_path: Path) -> None:
    (tree / "pkg" / "alias.py").symlink_to("model.py")
    (tree / "pkg" / "up.py").symlink_to("../flow.py")  # '..' inside a link that stays inside
    packed = pack_source(tree)
    path = store_archive(tmp_path / "archives", packed)
    out = ensure_extracted(packed.sha256, path, tmp_path / "cache")
    assert out == tmp_path / "cache" / packed.sha256
    assert (out / COMPLETE_MARKER).is_file()
    assert (out / "pkg" / "model.py").read_text() == "W = 1\n"
    assert (out / "pkg" / "alias.py").is_symlink()
    assert (out / "pkg" / "alias.py").read_text() == "W = 1\n"
    assert (out / "pkg" / "up.py").read_text() == "print('hi')\n"
    assert os.access(out / "run.sh", os.X_OK)
    assert ensure_extracted(packed.sha256, path, tmp_path / "cache") == out


def hostile(path: Path, *specs: tuple[str, bytes, str]) -> Path:
    """Build a tar.gz whose first member is harmless and whose others are ``(name, type, link)``."""
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        for name, kind, link in specs:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            payload = b"pwned" if kind == tarfile.REGTYPE else b""
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


HOSTILE = {
    "absolute": ([("{abs}", tarfile.REGTYPE, "")], "absolute"),
    "dotdot": ([("../evil", tarfile.REGTYPE, "")], "'..'"),
    "nested_dotdot": ([("a/../../evil", tarfile.REGTYPE, "")], "'..'"),
    "symlink_passwd": ([("passwd", tarfile.SYMTYPE, "/etc/passwd")], "'passwd'"),
    "symlink_up": ([("up", tarfile.SYMTYPE, "../outside")], "'up'"),
    "symlink_dir_escape": (
        [("d", tarfile.SYMTYPE, ".."), ("d/evil", tarfile.REGTYPE, "")],
        "'d'",
    ),
    "symlink_chain_escape": (  # each link alone looks harmless; z really resolves to ../
        [
            ("x/y", tarfile.SYMTYPE, ".."),
            ("a", tarfile.SYMTYPE, "x/y"),
            ("z", tarfile.SYMTYPE, "a/.."),
        ],
        "'z'",
    ),
    "write_through_symlink": (
        [
            ("x", tarfile.DIRTYPE, ""),
            ("x/up", tarfile.SYMTYPE, "../.."),
            ("x/up/evil", tarfile.REGTYPE, ""),
        ],
        "'x/up'",
    ),
    "hardlink_outside": ([("hl", tarfile.LNKTYPE, "../outside/secret")], "'hl'"),
    "hardlink_absolute": ([("hl", tarfile.LNKTYPE, "/etc/passwd")], "'hl'"),
    "char_device": ([("null", tarfile.CHRTYPE, "")], "'null'"),
    "fifo": ([("pipe", tarfile.FIFOTYPE, "")], "'pipe'"),
    "duplicate": ([("ok.txt", tarfile.SYMTYPE, "/etc/passwd")], "more than once"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    specs, needle = HOSTILE[case]
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "secret", "secret")
    specs = [(n.format(abs=str(tmp_path / "abs_evil")), k, link) for n, k, link in specs]
    tar = hostile(tmp_path / "evil.tar.gz", *specs)
    target = work / "target"
    with pytest.raises(ArchiveError, match=re.escape(needle)):
        safe_extract(tar, target)
    assert not target.exists()
    assert sorted(p.name for p in work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "outside", "work"]
    assert [p.name for p in outside.iterdir()] == ["secret"]
    empty = work / "empty"
    empty.mkdir()
    with pytest.raises(ArchiveError):
        safe_extract(tar, empty)
    assert list(empty.iterdir()) == []


def test_safe_extract_needs_an_empty_target(tree: Path, tmp_path: Path) -> None:
    tar = store_archive(tmp_path / "archives", pack_source(tree))
    busy = write(tmp_path / "busy" / "already.txt").parent
    with pytest.raises(ArchiveError, match="not an empty directory"):
        safe_extract(tar, busy)
    with pytest.raises(ArchiveError, match="cannot extract"):
        safe_extract(write(tmp_path / "junk.tar.gz", "not a tarball"), tmp_path / "t")


def test_ensure_extracted_refuses_hostile_archive_without_leftovers(tmp_path: Path) -> None:
    tar = hostile(tmp_path / "evil.tar.gz", ("../evil", tarfile.REGTYPE, ""))
    sha = sha256_file(tar)
    cache = tmp_path / "cache"
    with pytest.raises(ArchiveError, match=r"'\.\.'"):
        ensure_extracted(sha, tar, cache)
    assert sorted(p.name for p in cache.iterdir()) == [f"{sha}.lock"]
    assert not (tmp_path / "evil").exists()


CHILD = textwrap.dedent(
    """
    import logging, sys, time
    from pathlib import Path
    from tasklift.archive import ensure_extracted
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    sha, archive, cache, go = sys.argv[1:]
    while not Path(go).exists():
        time.sleep(0.005)
    out = ensure_extracted(sha, Path(archive), Path(cache))
    assert (out / "pkg" / "model.py").read_text() == "W = 1\\n"
    print(out)
    """
)


def test_ensure_extracted_many_processes_at_once(tree: Path, tmp_path: Path) -> None:
    for i in range(200):  # enough files that extraction takes a moment
        write(tree / "bulk" / f"f{i:03d}.py", f"X = {i}\n")
    packed = pack_source(tree)
    archive = store_archive(tmp_path / "archives", packed)
    cache, go = tmp_path / "cache", tmp_path / "go"
    args = [sys.executable, "-c", CHILD, packed.sha256, str(archive), str(cache), str(go)]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    time.sleep(0.5)  # let every child reach the start line
    go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    final = cache / packed.sha256
    assert {out.strip() for out, _ in outputs} == {str(final)}
    assert sum(err.count("extracted archive") for _, err in outputs) == 1
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [packed.sha256, f"{packed.sha256}.lock"]
    )
    assert len(list((final / "bulk").iterdir())) == 200
