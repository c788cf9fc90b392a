"""The job runners' command line: ``python -m tasklift.runner worker | job ... | flush-spool``."""

from __future__ import annotations

import argparse
import logging
import sys

USAGE = "usage: python -m tasklift.runner worker | job --batch-dir DIR [--index I] | flush-spool"


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv`` (default: the process's arguments); return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"]:
        from tasklift.runner import worker  # the local worker imports only what it needs

        worker.main()
        return 0
    if args[:1] in (["job"], ["flush-spool"]):
        return _remote_main(args)
    print(USAGE, file=sys.stderr)
    return 2


def _remote_main(args: list[str]) -> int:
    """The remote job runner's commands (see :mod:`tasklift.runner.remote`)."""
    from tasklift.runner import remote

    logging.basicConfig(level=logging.INFO, format="%(asctime)s tasklift %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m tasklift.runner")
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="run one job of a batch directory (a Slurm array element)")
    job.add_argument("--batch-dir", required=True)
    job.add_argument("--index", type=int, default=None, help="default: $SLURM_ARRAY_TASK_ID")
    sub.add_parser("flush-spool", help="deliver outcomes spooled while the service was away")
    ns = parser.parse_args(args)
    if ns.command == "flush-spool":
        print(f"{remote.flush_spool(deadline_seconds=30.0)} spooled outcomes delivered")
        return 0
    return remote.batch_main(ns.batch_dir, ns.index)


if __name__ == "__main__":
    sys.exit(main())
