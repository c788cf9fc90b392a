"""Convergence of a workflow: numeric results per job and the best so far per iteration.

An iteration is one work (one ``@work`` call). Results are numbers, or dicts with a numeric
field chosen by the user (``a`` or ``a.b``). Large workflows are sampled evenly per work.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any, Literal

import orjson
from sqlalchemy import ColumnElement, Connection, select

from tasklift.db import tables
from tasklift.service.web.plots import ConvergencePoint
from tasklift.service.web.present import options_of
from tasklift.states import JobState

__all__ = ["MAX_POINTS", "Convergence", "Iteration", "convergence", "numeric_fields"]

logger = logging.getLogger(__name__)

MAX_POINTS = 2000
"""At most about this many jobs are read for one plot; beyond it each work is sampled."""

FIELD_PROBES = 10
"""Results per work looked at to list the numeric fields on offer."""

Mode = Literal["max", "min"]


@dataclass
class Iteration:
    """One plotted work and the best values up to and including it."""

    number: int
    work: dict[str, Any]
    n_points: int
    best: float
    best_so_far: float
    improved: bool
    first_x: int
    last_x: int


@dataclass
class Convergence:
    """What the convergence page shows."""

    mode: Mode
    field: str | None
    fields: list[str] = default(default_factory=list)
    points: list[ConvergencePoint] = default(default_factory=list)
    iterations: list[Iteration] = default(default_factory=list)
    skipped: list[tuple[dict[str, Any], str]] = default(default_factory=list)
    sampled: bool = False


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def numeric_fields(value: Any, prefix: str = "", depth: int = 2) -> list[str]:
    """Paths (``a`` or ``a.b``) of the numeric fields of a dict result."""
    if not isinstance(value, dict) or depth == 0:
        return []
    out: list[str] = []
    for key, item in value.items():
        path = f"{prefix}{key}"
        if _number(item) is not None:
            out.append(path)
        elif isinstance(item, dict):
            out.extend(numeric_fields(item, path + ".", depth - 1))
    return out


def _pick(value: Any, path: str | None) -> float | None:
    if path is None or not isinstance(value, dict):
        return _number(value)
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return _number(value)


def _loads(blob: bytes) -> Any:
    try:
        return orjson.loads(blob)
    except orjson.JSONDecodeError:
        return None


def _eligible(work: dict[str, Any]) -> str | None:
    """Why a work cannot be plotted, or ``None`` when it can."""
    options = options_of(work)
    if options.kind == "workflow":
        return "runs the workflow function itself"
    if options.serializer != "json":
        return "results are not JSON"
    if not work["n_finished"]:
        return "no finished jobs yet"
    return None


def sample_indexes(n: int, share: int) -> tuple[int, ...]:
    """About ``share`` job indexes spread evenly over ``0 .. n-1`` (all of them if fewer)."""
    if n <= share:
        return tuple(range(n))
    step = n / share
    return tuple(sorted({int(i * step) for i in range(share)}))


def _results(
    conn: Connection, works: Sequence[dict[str, Any]], sampled: bool
) -> dict[int, list[tuple[int, bytes]]]:
    """Finished jobs' ``(idx, result)`` per work, in ``idx`` order; evenly sampled when asked.

    Works that share a sample (same size) are read by one query over the ``(work_id, idx)``
    index, so a 50-iteration campaign costs a query or two, not fifty.
    """
    jobs = tables.jobs
    total = sum(int(w["n_jobs"]) for w in works) or 1
    groups: dict[tuple[int, ...] | None, list[int]] = {}
    for w in works:
        key = None
        if sampled:
            share = max(5, MAX_POINTS * int(w["n_jobs"]) // total)
            key = sample_indexes(int(w["n_jobs"]), share)
        groups.setdefault(key, []).append(int(w["id"]))
    out: dict[int, list[tuple[int, bytes]]] = {int(w["id"]): [] for w in works}
    for key, work_ids in groups.items():
        where: list[ColumnElement[bool]] = [
            jobs.c.work_id.in_(work_ids),
            jobs.c.state == JobState.FINISHED.value,
        ]
        if key is not None:
            where.append(jobs.c.idx.in_(key))
        rows = conn.execute(
            select(jobs.c.work_id, jobs.c.idx, jobs.c.result)
            .where(*where)
            .order_by(jobs.c.work_id, jobs.c.idx)
            .limit(len(work_ids) * len(key) if key is not None else MAX_POINTS)
        )
        for work_id, idx, result in rows:
            if result is not None:
                out[int(work_id)].append((int(idx), result))
    return out


def convergence(
    conn: Connection, works: Sequence[dict[str, Any]], *, field: str | None, mode: Mode
) -> Convergence:
    """Values per job and the best so far per iteration, over ``works`` in submission order.

    Args:
        conn: an open connection.
        works: the workflow's works (rows with ``options`` and counters), in order.
        field: the numeric field of dict results; ``None``: the first one found.
        mode: ``max`` or ``min``: which values are better.

    Returns:
        The points, the iterations and the works left out (with the reason).
    """
    out = Convergence(mode=mode, field=field)
    usable = []
    for w in works:
        reason = _eligible(w)
        if reason:
            out.skipped.append((w, reason))
        else:
            usable.append(w)
    out.sampled = sum(int(w["n_finished"]) for w in usable) > MAX_POINTS
    found = _results(conn, usable, out.sampled)
    for w in usable:  # the fields on offer, from the first results of each work
        for _idx, blob in found[int(w["id"])][:FIELD_PROBES]:
            for path in numeric_fields(_loads(blob)):
                if path not in out.fields:
                    out.fields.append(path)
    if out.field is None and out.fields:
        out.field = out.fields[0]
    better = max if mode == "max" else min
    best_so_far: float | None = None
    x = 0
    for w in usable:
        first_x = x + 1
        best_here: float | None = None
        for idx, blob in found[int(w["id"])]:
            value = _loads(blob)
            number = _pick(value, out.field) if isinstance(value, dict) else _number(value)
            if number is None:
                continue
            x += 1
            best_here = number if best_here is None else better(best_here, number)
            label = f"work {w['name']} #{w['seq']}, job {idx}"
            out.points.append(ConvergencePoint(x, number, len(out.iterations), label))
        if best_here is None:
            out.skipped.append(
                (w, "no numeric results" + (f" in {out.field!r}" if out.field else ""))
            )
            continue
        previous = best_so_far
        best_so_far = best_here if previous is None else better(previous, best_here)
        out.iterations.append(
            Iteration(
                number=len(out.iterations) + 1,
                work=w,
                n_points=x - first_x + 1,
                best=best_here,
                best_so_far=best_so_far,
                improved=previous is None or best_so_far != previous,
                first_x=first_x,
                last_x=x,
            )
        )
    out.skipped.sort(key=lambda item: int(item[0]["seq"]))
    return out
