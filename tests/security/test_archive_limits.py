"""Archive limits (issue 17 item 4): bombs and floods are refused while read, never stored.

A small archive that expands to gigabytes, one with 100,000 members, and headers that lie about
sizes are refused by extraction (nothing left in the cache) and by a real server's upload route
(422 naming the limit, nothing stored). Small limits keep the bombs small and the tests fast.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tasklift.archive import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILES,
    check_archive,
    ensure_extracted,
    extract,
    pack_source,
    safe_extract,
    sha256_file,
)
from tasklift.errors import ArchiveError
from tasklift.settings import Settings

MB = 1024 * 1024
LIMIT_MB = 4
LIMIT_FILES = 50
REPO = Path(__file__).resolve().parents[2]


class _Zeros(io.RawIOBase):
    """``n`` zero bytes, produced as they are read (a bomb never sits in memory)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        k = min(len(buffer), self.left)
        buffer[:k] = bytes(k)
        self.left -= k
        return k


def _tar_gz(path: Path, build: Callable[[tarfile.TarFile], object]) -> Path:
    with gzip.open(path, "wb", compresslevel=9) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        build(tar)
    return path


def _add(tar: tarfile.TarFile, name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    tar.addfile(info, io.BufferedReader(_Zeros(size)))


def zero_bomb(path: Path, mb: int = 40) -> Path:
    """A gzip bomb: one member of ``mb`` MB of zeros, about 1000 times smaller gzipped."""
    return _tar_gz(path, lambda tar: _add(tar, "zeros.bin", mb * MB))


def split_bomb(path: Path) -> Path:
    """Members each under the byte limit that add up past it."""
    return _tar_gz(path, lambda tar: [_add(tar, f"part{i}.bin", MB) for i in range(10)])


def flood(path: Path, n: int) -> Path:
    """``n`` empty files."""

    def build(tar: tarfile.TarFile) -> None:
        for i in range(n):
            tar.addfile(tarfile.TarInfo(f"f/{i}"))

    return _tar_gz(path, build)


def lying_pax_size(path: Path) -> Path:
    """The ustar header says 10 bytes; a pax ``size`` record (which wins) says 10 MB."""

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("liar.bin")
        info.size = 10
        info.pax_headers = {"size": str(10 * MB)}
        tar.addfile(info, io.BytesIO(bytes(10)))
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


def huge_pax_header(path: Path) -> Path:
    """A pax header of 12 MB (tarfile reads it into memory): refused by the stream cap."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x.txt")
        info.pax_headers = {"comment": "a" * (12 * MB)}
        tar.addfile(info)
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


# ---------------------------------------------------------------- extraction


def test_gzip_bomb_is_refused_before_writing(tmp_path: Path) -> None:
    bomb = zero_bomb(tmp_path / "bomb.tar.gz")
    assert bomb.stat().st_size < MB  # 40 MB of zeros in a few dozen KB
    target = tmp_path / "out"
    with pytest.raises(ArchiveError) as caught:
        safe_extract(bomb, target, max_bytes=LIMIT_MB * MB)
    message = str(caught.value)
    assert "expands past 4.0 MB" in message
    assert "TASKLIFT_ARCHIVE_MAX_MB" in message and "40.0 MB" in message and "zeros.bin" in message
    assert not target.exists()


def test_bomb_split_in_small_members_stops_at_the_member_over_the_limit(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=r"declare 5\.0 MB at 'part4\.bin'"):
        safe_extract(split_bomb(tmp_path / "b.tar.gz"), tmp_path / "out", max_bytes=LIMIT_MB * MB)
    assert not (tmp_path / "out").exists()


def test_huge_pax_header_is_refused_by_the_stream_cap(tmp_path: Path) -> None:
    bomb = huge_pax_header(tmp_path / "pax.tar.gz")
    with pytest.raises(ArchiveError, match="tar stream reaches"):
        check_archive(bomb, max_bytes=MB, max_files=LIMIT_FILES)
    with pytest.raises(ArchiveError, match="TASKLIFT_ARCHIVE_MAX_MB"):
        safe_extract(bomb, tmp_path / "out", max_bytes=MB, max_files=LIMIT_FILES)
    assert not (tmp_path / "out").exists()


def test_ensure_extracted_leaves_no_partial_directory(tmp_path: Path) -> None:
    bomb = zero_bomb(tmp_path / "bomb.tar.gz")
    sha = sha256_file(bomb)
    cache = tmp_path / "cache"
    with pytest.raises(ArchiveError, match="extraction limit"):
        ensure_extracted(sha, bomb, cache, max_bytes=LIMIT_MB * MB)
    assert sorted(p.name for p in cache.iterdir()) == [f"{sha}.lock"]


def test_many_members_refused_with_a_small_limit(tmp_path: Path) -> None:
    many = flood(tmp_path / "many.tar.gz", LIMIT_FILES + 1)
    with pytest.raises(ArchiveError) as caught:
        safe_extract(many, tmp_path / "out", max_files=LIMIT_FILES)
    message = str(caught.value)
    assert "more than 50 members" in message and "TASKLIFT_ARCHIVE_MAX_FILES" in message
    assert not (tmp_path / "out").exists()
    exactly = flood(tmp_path / "ok.tar.gz", LIMIT_FILES)
    safe_extract(exactly, tmp_path / "fits", max_files=LIMIT_FILES)
    assert len(list((tmp_path / "fits" / "f").iterdir())) == LIMIT_FILES


def test_directories_and_links_count_as_members(tmp_path: Path) -> None:
    def build(tar: tarfile.TarFile) -> None:
        for i in range(3):
            tar.addfile(tarfile.TarInfo(f"f{i}"))
            d = tarfile.TarInfo(f"d{i}")
            d.type = tarfile.DIRTYPE
            tar.addfile(d)
            link = tarfile.TarInfo(f"l{i}")
            link.type, link.linkname = tarfile.SYMTYPE, f"f{i}"
            tar.addfile(link)

    mixed = _tar_gz(tmp_path / "mixed.tar.gz", build)
    assert check_archive(mixed, max_files=9) == 9
    with pytest.raises(ArchiveError, match="more than 8 members"):
        check_archive(mixed, max_files=8)


def test_100000_members_refused_at_the_default_limit(tmp_path: Path) -> None:
    many = flood(tmp_path / "many.tar.gz", 100_000)
    assert DEFAULT_MAX_FILES < 100_000
    cache = tmp_path / "cache"
    sha = sha256_file(many)
    with pytest.raises(ArchiveError, match=f"more than {DEFAULT_MAX_FILES} members"):
        ensure_extracted(sha, many, cache)
    assert sorted(p.name for p in cache.iterdir()) == [f"{sha}.lock"]


def test_lying_pax_size_is_what_counts(tmp_path: Path) -> None:
    liar = lying_pax_size(tmp_path / "liar.tar.gz")
    with pytest.raises(ArchiveError, match=r"declare 10\.0 MB at 'liar\.bin'"):
        safe_extract(liar, tmp_path / "out", max_bytes=LIMIT_MB * MB)
    assert not (tmp_path / "out").exists()


def test_header_promising_more_data_than_there_is_fails_cleanly(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("short.bin")
        info.size = 3 * MB
        tar.addfile(info, io.BytesIO(bytes(3 * MB)))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(gzip.compress(raw.getvalue()[: 512 + MB]))  # the header and 1 MB of data
    with pytest.raises(ArchiveError, match="cannot extract"):
        safe_extract(cut, tmp_path / "out", max_bytes=LIMIT_MB * MB)
    assert not (tmp_path / "out").exists()


def test_written_bytes_are_counted_even_if_headers_got_past(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Second guard: with the header check bypassed, the bytes really written stop extraction."""
    monkeypatch.setattr(extract, "scan", lambda tar, limits: list(tar))
    bomb = split_bomb(tmp_path / "b.tar.gz")
    with pytest.raises(ArchiveError, match=r"5\.0 MB written at 'part4\.bin'"):
        safe_extract(bomb, tmp_path / "out", max_bytes=LIMIT_MB * MB)
    assert not (tmp_path / "out").exists()


def test_defaults_follow_settings_and_extraction_allows_what_packing_allows(
    tmp_path: Path,
) -> None:
    defaults = Settings(home=tmp_path / "home")
    assert defaults.archive_max_bytes == DEFAULT_MAX_BYTES
    assert defaults.archive_max_files == DEFAULT_MAX_FILES
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(bytes(3 * MB))
    for i in range(LIMIT_FILES - 1):
        (src / f"m{i}.py").write_text(f"X = {i}\n")
    total = sum(p.stat().st_size for p in src.iterdir())
    packed = pack_source(src, max_bytes=total, max_files=LIMIT_FILES)  # exactly at both limits
    tar = tmp_path / "a.tar.gz"
    tar.write_bytes(packed.data)
    out = ensure_extracted(packed.sha256, tar, tmp_path / "cache", max_bytes=total,
                           max_files=LIMIT_FILES)  # fmt: skip
    assert (out / "big.bin").stat().st_size == 3 * MB


# ---------------------------------------------------------------- server upload


def _service_fixtures() -> ModuleType:
    """tests/service/conftest.py as a plain module (for start_server)."""
    name = "tasklift_security_service_fixtures"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "service" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``tasklift server`` with small archive limits."""
    root = tmp_path_factory.mktemp("srv")
    srv = _service_fixtures().start_server(
        f"sqlite:///{root / 'server.db'}",
        root / "server-home",
        extra_env={
            "TASKLIFT_ARCHIVE_MAX_MB": str(LIMIT_MB),
            "TASKLIFT_ARCHIVE_MAX_FILES": str(LIMIT_FILES),
            "TASKLIFT_ISOLATE_RUNNERS": "false",  # runs no job; tests may run as root
        },
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[httpx.Client]:
    with server.client(server.token("mallory")) as c:
        yield c


@pytest.fixture(scope="module")
def good(server: Any, client: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An archive stored before the bad uploads: none of them may touch it."""
    src = tmp_path_factory.mktemp("good")
    (src / "main.py").write_text("print('hi')\n")
    packed = pack_source(src)
    assert client.put(f"/api/v1/archives/{packed.sha256}", content=packed.data).status_code == 201
    return packed.sha256


BAD = {
    "zero_bomb": (zero_bomb, "expands past 4.0 MB"),
    "split_bomb": (split_bomb, "expands past 4.0 MB"),
    "flood": (lambda p: flood(p, 2_000), "more than 50 members"),
    "lying_pax_size": (lying_pax_size, "expands past 4.0 MB"),
    "huge_pax_header": (huge_pax_header, "expands past 4.0 MB"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_upload_refused_naming_the_limit_and_nothing_stored(
    case: str, server: Any, client: httpx.Client, good: str, tmp_path: Path
) -> None:
    build, needle = BAD[case]
    data = build(tmp_path / f"{case}.tar.gz").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    resp = client.put(f"/api/v1/archives/{sha}", content=data)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert needle in detail and "nothing stored" in detail
    assert "TASKLIFT_ARCHIVE_MAX_" in detail
    assert client.head(f"/api/v1/archives/{sha}").status_code == 404
    store = Path(server.home) / "archives"
    assert sorted(p.name for p in store.iterdir()) == [f"{good}.tar.gz"]  # no temp files either
    assert hashlib.sha256(client.get(f"/api/v1/archives/{good}").content).hexdigest() == good
