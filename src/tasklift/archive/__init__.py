"""Source archives: deterministic packing, the content store, hashing, and safe extraction.

An archive is a reproducible ``.tar.gz`` of a workflow's source tree, named by its sha256.

- :mod:`~tasklift.archive.limits`: the size and member-count limits, shared by both ends.
- :mod:`~tasklift.archive.pack`: packing a source tree (what is packed, what is skipped).
- :mod:`~tasklift.archive.store`: the content store (naming, atomic writes, hashing, listing).
- :mod:`~tasklift.archive.check`: reading untrusted headers under limits, refusing escapes.
- :mod:`~tasklift.archive.extract`: safe extraction and the extraction cache.
"""

from tasklift.archive.check import check_archive
from tasklift.archive.extract import COMPLETE_MARKER, ensure_extracted, safe_extract
from tasklift.archive.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, OUTPUT_DIR
from tasklift.archive.pack import PackedArchive, pack_source, state_paths
from tasklift.archive.store import (
    archive_path,
    list_members,
    sha256_file,
    store_archive,
    verify_archive,
)

__all__ = [
    "COMPLETE_MARKER",
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
