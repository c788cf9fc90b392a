"""Statistics of the CLs toy example: test statistic, exact CLs, toy counting, the crossing.

Pure functions over NumPy (SciPy for the exact reference only, imported lazily so that job
workers stay light); nothing here knows about tasklift.

Model: one counting bin, n ~ Poisson(mu + b), b known, mu >= 0. Test statistic: the LHC
one-sided q~_mu = -2 ln L(mu) / L(mu_hat) with mu_hat = n - b clipped to [0, mu] (q~ = 0 when
mu_hat >= mu). CLs(mu) = P(q~_mu >= q_obs | mu + b) / P(q~_mu >= q_obs | b).

For one bin q~_mu is strictly decreasing in n for n < mu + b and zero above, so whenever
n_obs < mu + b (always true near an upper limit with CL > 0.5) the event {q~ >= q_obs} is
exactly {n <= n_obs} and CLs(mu) = P(n <= n_obs | mu + b) / P(n <= n_obs | b).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Crossing",
    "ScanPoint",
    "bracket_crossing",
    "cls_exact",
    "cls_exact_qtilde",
    "count_toys",
    "fit_crossing",
    "locate_crossing",
    "qtilde",
    "scan_point",
    "toys_for_sigma",
    "upper_limit_exact",
]


# --------------------------------------------------------------------------- test statistic


def qtilde(n: np.ndarray | float, mu: float, b: float) -> np.ndarray:
    """Return the one-sided LHC test statistic q~_mu for observed count(s) ``n``.

    -2 ln [Pois(n | mu + b) / Pois(n | mu_hat' + b)] with mu_hat' = clip(n - b, 0, mu),
    which is ``2 [(mu - mu_hat') + n ln((mu_hat' + b) / (mu + b))]``, and 0 when n - b >= mu.
    Computed without a single NumPy warning (also for b = 0 or n = 0).
    """
    if mu < 0 or b < 0:
        raise ValueError("mu and b must be non-negative")
    n_arr = np.asarray(n, dtype=float)
    flat = np.atleast_1d(n_arr)
    mu_hat = np.clip(flat - b, 0.0, mu)
    q = 2.0 * (mu - mu_hat)
    # Where n > 0 and n - b < mu, both mu_hat + b (= n or b) and mu + b (> n) are positive;
    # elsewhere the log term is absent (n == 0) or q~ is 0 by definition (n - b >= mu).
    use = (flat > 0) & (flat - b < mu)
    q[use] += 2.0 * flat[use] * np.log((mu_hat[use] + b) / (mu + b))
    q[flat - b >= mu] = 0.0
    return np.maximum(q, 0.0).reshape(n_arr.shape)


def _ge(q: np.ndarray, q_obs: float) -> np.ndarray:
    """``q >= q_obs`` with a relative tolerance, so that a toy equal to the data counts."""
    return q >= q_obs - 1e-9 * (1.0 + abs(q_obs))


# --------------------------------------------------------------------------- exact reference


def cls_exact(mu: float, n_obs: int, b: float) -> float:
    """Return the Poisson-sum CLs: P(n <= n_obs | mu + b) / P(n <= n_obs | b)."""
    from scipy.special import pdtr  # imported here: job workers need NumPy only

    return float(pdtr(n_obs, mu + b) / pdtr(n_obs, b))


def cls_exact_qtilde(mu: float, n_obs: int, b: float) -> float:
    """Return the exact CLs of the q~ test statistic (the toys' expectation).

    Equals :func:`cls_exact` when n_obs < mu + b; when n_obs >= mu + b, q_obs = 0 and every
    outcome passes, so CLs = 1.
    """
    if n_obs - b >= mu:
        return 1.0
    return cls_exact(mu, n_obs, b)


def upper_limit_exact(n_obs: int, b: float, cl: float = 0.95) -> float:
    """Return the exact CLs upper limit on mu: the root of cls_exact(mu) = 1 - cl (brentq)."""
    _check_cl(cl)
    alpha = 1.0 - cl
    hi = max(n_obs - b, 0.0) + 5.0
    while cls_exact(hi, n_obs, b) > alpha:
        hi *= 2.0
    from scipy.optimize import brentq

    return float(brentq(lambda m: cls_exact(m, n_obs, b) - alpha, 0.0, hi, xtol=1e-12))


def _check_cl(cl: float) -> None:
    if not 0.5 < cl < 1.0:
        raise ValueError(f"cl must be in (0.5, 1), got {cl}")


# --------------------------------------------------------------------------- toys


def count_toys(
    mu: float,
    n_obs: int,
    b: float,
    n_toys: int,
    rng_sb: np.random.Generator,
    rng_b: np.random.Generator,
) -> dict[str, int | float]:
    """Throw ``n_toys`` toys under s+b (mean mu + b) and under b, count those with q~ >= q_obs.

    Returns:
        ``{"k_sb", "n_sb", "k_b", "n_b", "q_obs"}``: passing counts and totals per hypothesis.
    """
    q_obs = float(qtilde(n_obs, mu, b))
    n_sb = rng_sb.poisson(mu + b, size=n_toys)
    n_b = rng_b.poisson(b, size=n_toys)
    k_sb = int(np.count_nonzero(_ge(qtilde(n_sb, mu, b), q_obs)))
    k_b = int(np.count_nonzero(_ge(qtilde(n_b, mu, b), q_obs)))
    return {"k_sb": k_sb, "n_sb": int(n_toys), "k_b": k_b, "n_b": int(n_toys), "q_obs": q_obs}


# --------------------------------------------------------------------------- scan and crossing


@dataclass(frozen=True)
class ScanPoint:
    """Toy counts at one mu and the CLs they give.

    ``cls`` is ``nan`` while no b-only toy passed. ``log_var`` is the variance of ln CLs from
    the binomial errors of both fractions (independent samples); ``cls_err = cls * sqrt(log_var)``.
    """

    mu: float
    k_sb: int
    n_sb: int
    k_b: int
    n_b: int
    cls: float
    cls_err: float
    log_var: float

    @property
    def var_per_toy(self) -> float:
        """``log_var`` times the toys per hypothesis: the constant ``v`` of var = v / N."""
        return self.log_var * min(self.n_sb, self.n_b)


def _frac_rel_var(k: int, n: int) -> float:
    """Relative variance (sigma_p / p)^2 of a binomial fraction k / n, regularised at k = 0."""
    p = (k + 0.5) / (n + 1.0)
    return (1.0 - p) / (p * n)


def scan_point(mu: float, k_sb: int, n_sb: int, k_b: int, n_b: int) -> ScanPoint:
    """Return the :class:`ScanPoint` of the given counts."""
    if n_sb <= 0 or n_b <= 0:
        raise ValueError("each hypothesis needs at least one toy")
    log_var = _frac_rel_var(k_sb, n_sb) + _frac_rel_var(k_b, n_b)
    if k_b == 0:
        return ScanPoint(mu, k_sb, n_sb, k_b, n_b, math.nan, math.nan, log_var)
    cls = (k_sb / n_sb) / (k_b / n_b)
    # at k_sb == 0 report the error of one passing toy rather than zero
    scale = cls if k_sb > 0 else (1.0 / n_sb) / (k_b / n_b)
    return ScanPoint(mu, k_sb, n_sb, k_b, n_b, cls, scale * math.sqrt(log_var), log_var)


@dataclass(frozen=True)
class Crossing:
    """An estimate of where the toy CLs crosses alpha = 1 - CL.

    ``method`` is ``"bracket"`` (interpolated between two adjacent scan points) or ``"fit"``
    (weighted straight-line fit of ln CLs over the scan points in ``window``). ``sigma`` is the
    statistical uncertainty of ``mu`` propagated from the binomial errors of the toy fractions.
    ``var_per_toy`` is N * var(ln CLs) near the crossing (N toys per hypothesis), used to plan
    how many toys a target uncertainty needs. ``below`` / ``above`` count the points used on
    each side of ``mu``.
    """

    mu: float
    sigma: float
    slope: float
    slope_err: float
    var_per_toy: float
    method: str
    window: tuple[float, float]
    below: int
    above: int

    @property
    def width(self) -> float:
        """The width in mu of the bracket or fit window actually covered by points."""
        return self.window[1] - self.window[0]


def _defined(points: list[ScanPoint]) -> list[ScanPoint]:
    return sorted((p for p in points if not math.isnan(p.cls)), key=lambda p: p.mu)


def bracket_crossing(points: list[ScanPoint], alpha: float) -> Crossing | None:
    """Interpolate the crossing between two adjacent scan points, or None if not bracketed.

    The bracket is the first point (by mu) whose CLs falls below alpha and the point before it;
    points with undefined CLs are skipped. Interpolation is linear in y = ln CLs (nearly exact
    for Poisson tails), and sigma^2 = (h / dy)^2 [(1 - t)^2 var(y_lo) + t^2 var(y_hi)], with h
    the bracket width and t the fraction of it below the crossing.
    """
    for lo, hi in itertools.pairwise(_defined(points)):
        if lo.cls >= alpha > hi.cls:
            break
    else:
        return None
    h = hi.mu - lo.mu
    if hi.cls > 0:
        y_lo, y_hi, target = math.log(lo.cls), math.log(hi.cls), math.log(alpha)
        var_lo, var_hi = lo.log_var, hi.log_var
    else:  # no s+b toy passed at the upper point: interpolate CLs itself
        y_lo, y_hi, target = lo.cls, hi.cls, alpha
        var_lo, var_hi = lo.cls_err**2, hi.cls_err**2
    dy = y_hi - y_lo
    t = (target - y_lo) / dy
    sigma = abs(h / dy) * math.sqrt((1.0 - t) ** 2 * var_lo + t**2 * var_hi)
    slope = (math.log(hi.cls) - math.log(lo.cls)) / h if hi.cls > 0 else -1.0 / h
    return Crossing(
        mu=lo.mu + t * h,
        sigma=sigma,
        slope=slope,
        slope_err=math.sqrt(lo.log_var + hi.log_var) / h,
        var_per_toy=0.5 * (lo.var_per_toy + hi.var_per_toy),
        method="bracket",
        window=(lo.mu, hi.mu),
        below=1,
        above=1,
    )


def fit_crossing(points: list[ScanPoint], alpha: float) -> Crossing | None:
    """Fit y = ln CLs = a + s (mu - m) by weighted least squares over the given points.

    Weights are 1 / var(y_i) from the binomial errors; m is the weighted mean of mu, so a and s
    are uncorrelated. The crossing mu* = m + (ln alpha - a) / s has, to first order,
    sigma^2 = [var(a) + (mu* - m)^2 var(s)] / s^2. Returns None with fewer than two points
    (of defined, non-zero CLs) or a slope that is not negative.
    """
    pts = [p for p in _defined(points) if p.cls > 0]
    if len(pts) < 2:
        return None
    x = np.array([p.mu for p in pts])
    y = np.log([p.cls for p in pts])
    w = 1.0 / np.array([p.log_var for p in pts])
    m = float(np.sum(w * x) / np.sum(w))
    sxx = float(np.sum(w * (x - m) ** 2))
    if sxx <= 0:
        return None
    a = float(np.sum(w * y) / np.sum(w))
    s = float(np.sum(w * (x - m) * y) / sxx)
    if s >= 0:
        return None
    var_a, var_s = 1.0 / float(np.sum(w)), 1.0 / sxx
    mu = m + (math.log(alpha) - a) / s
    sigma = math.sqrt(var_a + (mu - m) ** 2 * var_s) / abs(s)
    nearest = min(pts, key=lambda p: abs(p.mu - mu))
    return Crossing(
        mu=mu,
        sigma=sigma,
        slope=s,
        slope_err=math.sqrt(var_s),
        var_per_toy=nearest.var_per_toy,
        method="fit",
        window=(float(x.min()), float(x.max())),
        below=int(np.sum(x < mu)),
        above=int(np.sum(x > mu)),
    )


def locate_crossing(points: list[ScanPoint], alpha: float, half_width: float) -> Crossing | None:
    """Return the best crossing estimate: a local fit if the scan allows one, else the bracket.

    The fit uses the points within ``half_width`` of the bracket's estimate; while the fitted
    crossing brings further points within ``half_width`` of itself, they join and the fit is
    redone. The window only grows, so this ends, and no point is dropped back and forth.
    """
    crossing = bracket_crossing(points, alpha)
    if crossing is None:
        return None
    chosen: dict[float, ScanPoint] = {}
    center = crossing.mu
    while True:
        near = {p.mu: p for p in points if abs(p.mu - center) <= half_width}
        if near.keys() <= chosen.keys():
            break
        chosen.update(near)
        fit = fit_crossing(list(chosen.values()), alpha)
        if fit is None:
            break
        crossing, center = fit, fit.mu
    return crossing


def toys_for_sigma(slope: float, var_per_toy: float, target_sigma: float) -> int:
    """Toys per hypothesis at each of two points placed symmetrically about the crossing.

    With var(y) = v / N at both, the fitted crossing has sigma^2 = v / (2 N s^2), so
    N = v / (2 s^2 target^2).
    """
    if target_sigma <= 0:
        raise ValueError("target_sigma must be positive")
    if not math.isfinite(slope) or slope >= 0:
        raise ValueError("slope must be finite and negative")
    return max(1, math.ceil(var_per_toy / (2.0 * slope**2 * target_sigma**2)))
