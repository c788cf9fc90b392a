"""The archive limits (size, member count) and how errors about them read.

The defaults match ``Settings.archive_max_mb`` and ``Settings.archive_max_files``; packing and
extraction allow the same amounts.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasklift.errors import ArchiveError

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Largest total size of an archive's files, packed or extracted (``Settings.archive_max_mb``)."""
DEFAULT_MAX_FILES = 20_000
"""Most members (files, directories, links) of an archive (``Settings.archive_max_files``)."""
OUTPUT_DIR = "tasklift_out"
"""A folder name never packed (at any depth): where jobs and workflows can write outputs."""


def human(n: int) -> str:
    """A byte count as people read it: ``12 B``, ``3.4 KB``, ``5.0 MB``."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    return f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} B"


@dataclass(frozen=True)
class Limits:
    """The limits one archive is read under, and the errors that name them."""

    name: str  # how errors name the archive
    max_bytes: int
    max_files: int

    def too_large(self, reached: str) -> ArchiveError:
        """The error for an archive past ``max_bytes``; ``reached`` says how it was seen."""
        return ArchiveError(
            f"archive {self.name} expands past {human(self.max_bytes)} (the extraction limit, "
            f"TASKLIFT_ARCHIVE_MAX_MB): {reached}; refused"
        )

    def too_many(self) -> ArchiveError:
        """The error for an archive of more than ``max_files`` members."""
        return ArchiveError(
            f"archive {self.name} holds more than {self.max_files} members (the extraction "
            "limit, TASKLIFT_ARCHIVE_MAX_FILES); refused"
        )
