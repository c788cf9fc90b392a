"""Pareto dominance and exact hypervolume for minimisation problems (pure NumPy).

Optuna has a hypervolume routine, but only in the private ``optuna._hypervolume`` package, so the
example carries its own (the tests cross-check it against Optuna's where that is importable).

The hypervolume of a point set P against a reference point r is the Lebesgue measure of the region
dominated by P and bounded by r: the union of the boxes [p, r] for p in P. Points not strictly
better than r in every objective contribute nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_points(
    points: Sequence[Sequence[float]] | np.ndarray, n_obj: int | None = None
) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.size == 0:
        return np.zeros((0, n_obj or 0))
    if arr.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n_points, n_objectives), got {arr.shape}")
    if n_obj is not None and arr.shape[1] != n_obj:
        raise ValueError(f"points have {arr.shape[1]} objectives, reference point has {n_obj}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("points must be finite")
    return arr


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when ``a`` Pareto-dominates ``b`` (minimising): never worse, better somewhere."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(np.all(a_arr <= b_arr) and np.any(a_arr < b_arr))


def non_dominated_mask(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point dominates (duplicates are all kept)."""
    arr = _as_points(points)
    if len(arr) == 0:
        return np.zeros(0, dtype=bool)
    le = np.all(arr[:, None, :] <= arr[None, :, :], axis=2)  # le[j, i]: j <= i everywhere
    lt = np.any(arr[:, None, :] < arr[None, :, :], axis=2)  # lt[j, i]: j < i somewhere
    return ~np.any(le & lt, axis=0)


def pareto_front(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """The distinct non-dominated points, sorted lexicographically (first objective first)."""
    arr = _as_points(points)
    if len(arr) == 0:
        return arr
    front = np.unique(arr[non_dominated_mask(arr)], axis=0)  # np.unique sorts rows
    return front


def hypervolume(
    points: Sequence[Sequence[float]] | np.ndarray, reference_point: Sequence[float]
) -> float:
    """Exact hypervolume dominated by ``points`` (minimisation) and bounded by ``reference_point``.

    2 objectives: one sweep, O(n log n). More objectives: slice along the last objective (HSO),
    O(n^(d-1) log n); fine for the 2-3 objectives and the few thousand points used here.
    """
    ref = np.asarray(reference_point, dtype=float)
    if ref.ndim != 1 or ref.size == 0:
        raise ValueError("reference_point must be a non-empty 1-D sequence")
    arr = _as_points(points, ref.size)
    arr = arr[np.all(arr < ref, axis=1)]
    if len(arr) == 0:
        return 0.0
    return float(_hv(arr, ref))


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    d = pts.shape[1]
    if d == 1:
        return float(ref[0] - pts[:, 0].min())
    if d == 2:
        order = np.lexsort((pts[:, 1], pts[:, 0]))
        x = pts[order, 0]
        y = np.minimum.accumulate(pts[order, 1])
        widths = np.diff(np.append(x, ref[0]))
        return float(np.sum(widths * (ref[1] - y)))
    order = np.argsort(pts[:, -1], kind="stable")
    pts = pts[order]
    z = pts[:, -1]
    upper = np.append(z[1:], ref[-1])
    total = 0.0
    for i in range(len(pts)):
        thickness = upper[i] - z[i]
        if thickness > 0:
            # Between z[i] and the next level, the points with z <= z[i] dominate the slice.
            front = pts[: i + 1, :-1]
            if d > 3:
                front = front[non_dominated_mask(front)]
            total += thickness * _hv(front, ref[:-1])
    return total
