"""The job runner's function loader: archives switch, cached functions keep their imports."""

from __future__ import annotations

from pathlib import Path

from tasklift.archive import pack_source, store_archive
from tasklift.records import WorkSpec
from tasklift.runner.loader import FunctionLoader


def _archive(tmp_path: Path, name: str, value: int) -> WorkSpec:
    src = tmp_path / name
    src.mkdir()
    (src / "jobs.py").write_text(
        "def compute():\n    from helpers import value  # lazy, as the README shows\n"
        "    return value()\n"
    )
    (src / "helpers.py").write_text(f"def value():\n    return {value}\n")
    packed = pack_source(src)
    path = store_archive(tmp_path / "store", packed)
    return WorkSpec(
        work_id=value, name=name, function="jobs:compute", script=None,
        archive_sha=packed.sha256, archive_file=str(path), cache_dir=str(tmp_path / "cache"),
    )


def test_a_cached_function_still_imports_from_its_own_archive_after_a_switch(
    tmp_path: Path,
) -> None:
    a, b = _archive(tmp_path, "a", 1), _archive(tmp_path, "b", 2)
    loader = FunctionLoader()
    try:
        assert loader.load(a)() == 1
        assert loader.load(b)() == 2
        assert loader.load(a)() == 1  # A, B, A: was ModuleNotFoundError: No module 'helpers'
        assert loader.load(b)() == 2
    finally:
        for root in {loader.current_root}:
            if root:
                loader._forget(root)


def test_a_private_loader_uses_only_archives_it_was_sent(tmp_path: Path) -> None:
    a = _archive(tmp_path, "a", 3)
    loader = FunctionLoader(tmp_path / "private")
    try:
        try:
            loader.load(a)
        except ImportError as exc:
            assert "was not sent to this worker" in str(exc)
        else:
            raise AssertionError("a private loader read the server's store")
        loader.receive_archive(a.archive_sha, Path(a.archive_file).read_bytes())
        assert loader.load(a)() == 3
        assert (tmp_path / "private" / "cache" / a.archive_sha / "helpers.py").is_file()
    finally:
        if loader.current_root:
            loader._forget(loader.current_root)
