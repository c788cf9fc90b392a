"""The optimisation problems: the toy detector and two standard test problems with known fronts.

Pure functions, no tasklift and no optuna. A problem is looked up by name (and, for the test
problems, the number of variables) both in the steering workflow and inside each job, so only
small JSON values travel between them.

* ``detector``: see ``detector.py`` (5 parameters, 3 objectives, true front unknown).
* ``zdt1``: Zitzler, Deb & Thiele (2000), 2 objectives, f2 = 1 - sqrt(f1) on the front
  (x_1..x_{n-1} = 0). True hypervolume against (r1, r2), r1, r2 >= 1: r1 r2 - 1/3, since the
  area under the front is the integral of 1 - sqrt(f) over [0, 1] = 1/3.
* ``dtlz2``: Deb, Thiele, Laumanns & Zitzler (2002), 3 objectives, the front is the unit sphere's
  positive octant (x_2..x_{n-1} = 0.5). True hypervolume against (r, r, r), r >= 1: r^3 - pi/6.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import detector
import numpy as np


@dataclass(frozen=True)
class Problem:
    """A multi-objective minimisation problem over a box of float parameters."""

    name: str
    parameters: dict[str, tuple[float, float, bool]]  # name -> (low, high, log scale)
    objectives: tuple[str, ...]
    reference_point: tuple[float, ...]
    true_hypervolume: float | None
    function: Callable[[Mapping[str, float]], list[float]]
    description: str

    def evaluate(self, params: Mapping[str, float]) -> list[float]:
        """Objective vector of one parameter point, as plain floats."""
        return [float(v) for v in self.function(params)]


# --- ZDT1 ---------------------------------------------------------------------------------------


def _vector(params: Mapping[str, float], n_var: int) -> np.ndarray:
    return np.array([params[f"x{i}"] for i in range(n_var)], dtype=float)


def zdt1(x: np.ndarray) -> list[float]:
    """ZDT1 on x in [0, 1]^n, n >= 2."""
    f1 = float(x[0])
    g = 1.0 + 9.0 * float(np.sum(x[1:])) / (len(x) - 1)
    return [f1, g * (1.0 - math.sqrt(f1 / g))]


def zdt1_front(n_points: int) -> np.ndarray:
    """``n_points`` points of the true ZDT1 front, evenly spaced in f1."""
    f1 = np.linspace(0.0, 1.0, n_points)
    return np.column_stack([f1, 1.0 - np.sqrt(f1)])


def zdt1_true_hypervolume(reference_point: tuple[float, float]) -> float:
    """Exact hypervolume of the ZDT1 front; needs both reference coordinates >= 1."""
    r1, r2 = reference_point
    if r1 < 1.0 or r2 < 1.0:
        raise ValueError("the closed form needs a reference point >= (1, 1)")
    return r1 * r2 - 1.0 / 3.0


# --- DTLZ2 --------------------------------------------------------------------------------------


def dtlz2(x: np.ndarray, n_obj: int = 3) -> list[float]:
    """DTLZ2 on x in [0, 1]^n, n >= n_obj."""
    g = float(np.sum((x[n_obj - 1 :] - 0.5) ** 2))
    angles = np.asarray(x[: n_obj - 1], dtype=float) * math.pi / 2.0
    f = []
    for m in range(n_obj):
        value = 1.0 + g
        value *= float(np.prod(np.cos(angles[: n_obj - 1 - m])))
        if m > 0:
            value *= math.sin(angles[n_obj - 1 - m])
        f.append(value)
    return f


def dtlz2_front(n_per_axis: int) -> np.ndarray:
    """Points of the true 3-objective DTLZ2 front (unit-sphere octant) on an angle grid."""
    t = np.linspace(0.0, math.pi / 2.0, n_per_axis)
    theta, phi = np.meshgrid(t, t, indexing="ij")
    pts = np.column_stack(
        [
            (np.cos(theta) * np.cos(phi)).ravel(),
            (np.cos(theta) * np.sin(phi)).ravel(),
            np.sin(theta).ravel(),
        ]
    )
    return np.unique(np.round(pts, 15), axis=0)


def dtlz2_true_hypervolume(reference_point: tuple[float, float, float]) -> float:
    """Exact hypervolume of the 3-objective DTLZ2 front; needs every reference coordinate >= 1."""
    if min(reference_point) < 1.0:
        raise ValueError("the closed form needs a reference point >= (1, 1, 1)")
    return math.prod(reference_point) - math.pi / 6.0


# --- registry -----------------------------------------------------------------------------------

PROBLEM_NAMES: tuple[str, ...] = ("detector", "zdt1", "dtlz2")
DEFAULT_N_VAR: dict[str, int] = {"zdt1": 4, "dtlz2": 7}
ZDT1_REFERENCE = (1.1, 1.1)
DTLZ2_REFERENCE = (1.1, 1.1, 1.1)


def get_problem(name: str, n_var: int | None = None) -> Problem:
    """Look a problem up by name; ``n_var`` only applies to the test problems."""
    if name == "detector":
        if n_var not in (None, len(detector.PARAMETERS)):
            raise ValueError(f"the detector problem has {len(detector.PARAMETERS)} parameters")
        return Problem(
            name="detector",
            parameters=dict(detector.PARAMETERS),
            objectives=detector.OBJECTIVES,
            reference_point=detector.REFERENCE_POINT,
            true_hypervolume=None,
            function=detector.objectives,
            description="toy barrel detector: tracker + solenoid + sampling calorimeter",
        )
    if name == "zdt1":
        n = DEFAULT_N_VAR["zdt1"] if n_var is None else int(n_var)
        if n < 2:
            raise ValueError("zdt1 needs n_var >= 2")
        return Problem(
            name="zdt1",
            parameters={f"x{i}": (0.0, 1.0, False) for i in range(n)},
            objectives=("f1", "f2"),
            reference_point=ZDT1_REFERENCE,
            true_hypervolume=zdt1_true_hypervolume(ZDT1_REFERENCE),
            function=lambda p: zdt1(_vector(p, n)),
            description=f"ZDT1 with {n} variables (front f2 = 1 - sqrt(f1))",
        )
    if name == "dtlz2":
        n = DEFAULT_N_VAR["dtlz2"] if n_var is None else int(n_var)
        if n < 3:
            raise ValueError("dtlz2 needs n_var >= 3")
        return Problem(
            name="dtlz2",
            parameters={f"x{i}": (0.0, 1.0, False) for i in range(n)},
            objectives=("f1", "f2", "f3"),
            reference_point=DTLZ2_REFERENCE,
            true_hypervolume=dtlz2_true_hypervolume(DTLZ2_REFERENCE),
            function=lambda p: dtlz2(_vector(p, n)),
            description=f"DTLZ2 with 3 objectives and {n} variables (front: unit-sphere octant)",
        )
    raise ValueError(f"unknown problem {name!r}; choose from {', '.join(PROBLEM_NAMES)}")
