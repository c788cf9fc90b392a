"""Run one system once in this (fresh) interpreter and write its metrics as JSON.

Used by ``bench/run.py``, one subprocess per system and repeat::

    python -m bench.child --system ray --workloads w1,w2,w3,w4 --out /tmp/ray-1.json

Exit codes: 0 ok, 1 the system failed (error in the JSON), 3 the system is not available
(e.g. tasklift does not import yet; reason in the JSON).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import sys
import traceback
from pathlib import Path

from bench.systems import SYSTEMS
from bench.systems.base import Unavailable


def load(name: str):
    """Import the system class registered under ``name``."""
    module, _, cls = SYSTEMS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def versions(packages) -> dict[str, str]:
    """Installed versions of ``packages`` (``"missing"`` for absent ones)."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    ap.add_argument("--workloads", default="w1,w2,w3,w4")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    record: dict = {"system": args.system, "status": "ok"}
    code = 0
    try:
        try:
            cls = load(args.system)
        except ImportError as exc:
            raise Unavailable(f"{args.system} does not import: {exc!r}") from exc
        record["label"] = cls.label
        record["versions"] = versions(cls.packages)
        system = cls()
        record["metrics"] = system.run([w for w in args.workloads.split(",") if w])
    except Unavailable as exc:
        record.update(status="skipped", reason=str(exc))
        code = 3
    except BaseException as exc:  # noqa: BLE001 - report every failure, then exit non-zero
        record.update(status="error", reason=repr(exc), traceback=traceback.format_exc())
        code = 1
    args.out.write_text(json.dumps(record, indent=1))
    if code == 1:
        print(record["traceback"], file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
