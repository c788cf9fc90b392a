"""Convergence of a workflow: numeric results per job and the best so far per iteration.

An iteration is one work (one ``@work`` call). Results are numbers, or dicts with a numeric
field chosen by the user (``a`` or ``a.b``). Large workflows are sampled evenly per work.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from sqlalchemy import ColumnElement, Connection, or_, select

from tasklift.db import queries as q
from tasklift.service.web.plots import ConvergencePoint
from tasklift.service.web.queries import windows
from tasklift.states import JobState

__all__ = ["MAX_POINTS", "Convergence", "Iteration", "convergence", "numeric_fields"]

logger = logging.getLogger(__name__)

MAX_POINTS = 5000
"""At most this many jobs are read for one plot; beyond it each work is sampled."""

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
    fields: list[str] = field(default_factory=list)
    points: list[ConvergencePoint] = field(default_factory=list)
    iterations: list[Iteration] = field(default_factory=list)
    skipped: list[tuple[dict[str, Any], str]] = field(default_factory=list)
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


def _eligible(work: dict[str, Any]) -> str | None:
    """Why a work cannot be plotted, or ``None`` when it can."""
    options = json.loads(work.get("options") or "{}")
    if options.get("kind") == "workflow":
        return "runs the workflow function itself"
    if options.get("serializer", "json") != "json":
        return "results are not JSON"
    if not work["n_finished"]:
        return "no finished jobs yet"
    return None


def _results(conn: Connection, work: dict[str, Any], share: int | None) -> list[tuple[int, bytes]]:
    """A work's finished jobs as ``(idx, result)`` in ``idx`` order; about ``share`` of them."""
    jobs = q.jobs
    where: list[ColumnElement[bool]] = [
        jobs.c.work_id == work["id"],
        jobs.c.state == JobState.FINISHED.value,
    ]
    if share is not None:
        spans = windows(int(work["n_jobs"]), share)
        where.append(or_(*(jobs.c.idx.between(a, b) for a, b in spans)))
    rows = conn.execute(select(jobs.c.idx, jobs.c.result).where(*where).order_by(jobs.c.idx))
    return [(int(i), r) for i, r in rows if r is not None]


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
    total = sum(int(w["n_jobs"]) for w in usable) or 1
    decoded: list[tuple[dict[str, Any], list[tuple[int, Any]]]] = []
    for w in usable:
        share = max(40, MAX_POINTS * int(w["n_jobs"]) // total) if out.sampled else None
        values = []
        for idx, blob in _results(conn, w, share):
            try:
                values.append((idx, orjson.loads(blob)))
            except orjson.JSONDecodeError:
                continue
        for _idx, value in values[:50]:
            for path in numeric_fields(value):
                if path not in out.fields:
                    out.fields.append(path)
        decoded.append((w, values))
    if out.field is None and out.fields:
        out.field = out.fields[0]
    better = max if mode == "max" else min
    best_so_far: float | None = None
    x = 0
    for w, values in decoded:
        first_x = x + 1
        best_here: float | None = None
        for idx, value in values:
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
