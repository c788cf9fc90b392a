"""Test functions with known excursion sets for the active-learning example.

Every function here is cheap and vectorised; the example pretends each call is an expensive
simulation and runs it as one tasklift job.  Each `TestFunction` carries its domain, the
threshold that defines the excursion set ``{x : f(x) > threshold}`` and a few points known to be
inside and outside that set (used by the tests and as a sanity check of the truth grid).

* ``significance`` -- physics-like: expected discovery significance (Asimov formula) of a
  resonance search as a function of the resonance mass (TeV) and its coupling.  The signal falls
  with mass and vanishes at low mass where the trigger turns off, the background falls faster
  with mass.  Threshold 5 (sigma): the excursion set is the discovery reach, a dome-shaped region
  at intermediate mass and large coupling.
* ``bumps`` -- two Gaussian bumps of different height and width on the unit square, threshold
  0.5: two disjoint islands (a multi-modal excursion set).
* ``himmelblau`` -- ``-log(1 + Himmelblau(x, y))`` on ``[-5, 5]^2``, threshold ``-log(21)``:
  the region where Himmelblau's function is below 20, four islands around its four minima.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class TestFunction:
    """A 2-D function, its domain and the threshold that defines its excursion set."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    func: Callable[[Array, Array], Array]
    bounds: tuple[tuple[float, float], tuple[float, float]]
    threshold: float
    labels: tuple[str, str]
    description: str
    inside: tuple[tuple[float, float], ...]
    outside: tuple[tuple[float, float], ...]

    def __call__(self, x: Array | float, y: Array | float) -> Array:
        """Evaluate the function (vectorised over ``x`` and ``y``)."""
        return self.func(np.asarray(x, dtype=float), np.asarray(y, dtype=float))

    @property
    def lower(self) -> Array:
        """Lower corner of the domain."""
        return np.array([b[0] for b in self.bounds])

    @property
    def upper(self) -> Array:
        """Upper corner of the domain."""
        return np.array([b[1] for b in self.bounds])

    def to_unit(self, points: Array) -> Array:
        """Map points of the domain to the unit square."""
        return (np.asarray(points, dtype=float) - self.lower) / (self.upper - self.lower)

    def from_unit(self, points: Array) -> Array:
        """Map points of the unit square to the domain."""
        return self.lower + np.asarray(points, dtype=float) * (self.upper - self.lower)


def asimov_significance(s: Array, b: Array) -> Array:
    """Median discovery significance of a counting experiment, Z_A = sqrt(2((s+b)ln(1+s/b)-s))."""
    return np.sqrt(2.0 * ((s + b) * np.log1p(s / b) - s))


def significance(mass: Array, coupling: Array) -> Array:
    """Expected significance of a resonance of ``mass`` (TeV) and ``coupling`` (0..1)."""
    trigger_eff = 1.0 / (1.0 + np.exp(-(mass - 0.9) / 0.12))
    signal = 400.0 * coupling**2 * trigger_eff * np.exp(-(mass - 1.0) / 0.5)
    background = 200.0 * np.exp(-(mass - 1.0) / 0.25) + 4.0
    return asimov_significance(signal, background)


BUMP_CENTERS = ((0.3, 0.65), (0.7, 0.3))


def bumps(x: Array, y: Array) -> Array:
    """Two Gaussian bumps: height 1, width 0.12 at (0.3, 0.65); 0.8, width 0.2 at (0.7, 0.3)."""
    (x1, y1), (x2, y2) = BUMP_CENTERS
    a = np.exp(-((x - x1) ** 2 + (y - y1) ** 2) / (2 * 0.12**2))
    b = 0.8 * np.exp(-((x - x2) ** 2 + (y - y2) ** 2) / (2 * 0.2**2))
    return a + b


HIMMELBLAU_MINIMA = (
    (3.0, 2.0),
    (-2.805118, 3.131312),
    (-3.779310, -3.283186),
    (3.584428, -1.848126),
)


def neg_log_himmelblau(x: Array, y: Array) -> Array:
    """``-log(1 + H(x, y))`` with Himmelblau's H = (x^2 + y - 11)^2 + (x + y^2 - 7)^2."""
    h = (x**2 + y - 11.0) ** 2 + (x + y**2 - 7.0) ** 2
    return -np.log1p(h)


FUNCTIONS: dict[str, TestFunction] = {
    "significance": TestFunction(
        name="significance",
        func=significance,
        bounds=((0.5, 3.0), (0.0, 1.0)),
        threshold=5.0,
        labels=("mass [TeV]", "coupling"),
        description="expected discovery significance of a resonance search; Z > 5 region",
        inside=((1.2, 1.0), (1.5, 0.8), (2.0, 0.9)),
        outside=((0.5, 1.0), (3.0, 1.0), (1.2, 0.3), (2.0, 0.0)),
    ),
    "bumps": TestFunction(
        name="bumps",
        func=bumps,
        bounds=((0.0, 1.0), (0.0, 1.0)),
        threshold=0.5,
        labels=("x", "y"),
        description="two Gaussian bumps; two disjoint islands above 0.5",
        inside=BUMP_CENTERS,
        outside=((0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.5, 0.5)),
    ),
    "himmelblau": TestFunction(
        name="himmelblau",
        func=neg_log_himmelblau,
        bounds=((-5.0, 5.0), (-5.0, 5.0)),
        threshold=-float(np.log(21.0)),
        labels=("x", "y"),
        description="-log(1 + Himmelblau); four islands where Himmelblau < 20",
        inside=HIMMELBLAU_MINIMA,
        outside=((0.0, 0.0), (-0.270845, -0.923039), (5.0, 5.0), (-5.0, -5.0), (0.0, 4.0)),
    ),
}


def get_function(name: str) -> TestFunction:
    """Look a test function up by name (``ValueError`` listing the choices if unknown)."""
    try:
        return FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown function {name!r}; choose from {sorted(FUNCTIONS)}") from None


def evaluate_point(name: str, x: float, y: float) -> float:
    """Evaluate test function ``name`` at one point of its domain, as a plain float."""
    return float(get_function(name)(x, y))
