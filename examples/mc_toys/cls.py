"""Statistics of the CLs toy example: test statistic, exact CLs, toy counting, the crossing.

Pure functions over NumPy/SciPy; nothing here knows about tasklift.

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
from scipy import optimize, stats

__all__ = [
    "Crossing",
    "ScanPoint",
    "cls_exact",
    "cls_exact_qtilde",
    "count_toys",
    "find_crossing",
    "qtilde",
    "scan_point",
    "toys_needed",
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
    return float(stats.poisson.cdf(n_obs, mu + b) / stats.poisson.cdf(n_obs, b))


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
    return float(optimize.brentq(lambda m: cls_exact(m, n_obs, b) - alpha, 0.0, hi, xtol=1e-12))


def _check_cl(cl: float) -> None:
    if not 0.5 < cl < 1.0:
        raise ValueError(f"cl must be in (0.5, 1), got {cl}")


# --------------------------------------------------------------------------- toys


def count_toys(
    mu: float, n_obs: int, b: float, n_toys: int, rng_sb: np.random.Generator,
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
    """Where the toy CLs crosses alpha = 1 - CL, interpolated between two adjacent scan points.

    Interpolation is linear in ln CLs (nearly exact for Poisson tails); ``sigma`` propagates the
    binomial errors of the two bracketing points through it:
    sigma^2 = (h / dy)^2 [(1 - t)^2 var(y_lo) + t^2 var(y_hi)], y = ln CLs, t the fraction of
    the bracket below the crossing.
    """

    mu: float
    sigma: float
    lo: ScanPoint
    hi: ScanPoint
    t: float

    @property
    def width(self) -> float:
        """The bracket's width in mu."""
        return self.hi.mu - self.lo.mu

    @property
    def slope(self) -> float:
        """d ln CLs / d mu across the bracket (negative)."""
        return (_log(self.hi.cls) - _log(self.lo.cls)) / self.width


def _log(c: float) -> float:
    return math.log(c) if c > 0 else -math.inf


def find_crossing(points: list[ScanPoint], alpha: float) -> Crossing | None:
    """Return the crossing of CLs = alpha, or None when the scan does not bracket it.

    The bracket is the first scan point (by mu) whose CLs falls below alpha and the point
    before it. A point with undefined CLs (no b-only toy passed) is skipped.
    """
    pts = sorted((p for p in points if not math.isnan(p.cls)), key=lambda p: p.mu)
    for lo, hi in itertools.pairwise(pts):
        if lo.cls >= alpha > hi.cls:
            return _interpolate(lo, hi, alpha)
    return None


def _interpolate(lo: ScanPoint, hi: ScanPoint, alpha: float) -> Crossing:
    h = hi.mu - lo.mu
    if hi.cls > 0:
        y_lo, y_hi, target = math.log(lo.cls), math.log(hi.cls), math.log(alpha)
        var_lo, var_hi = lo.log_var, hi.log_var
    else:  # no s+b toy passed at the upper point: interpolate CLs itself
        y_lo, y_hi, target = lo.cls, hi.cls, alpha
        var_lo, var_hi = lo.cls_err**2, hi.cls_err**2
    dy = y_hi - y_lo
    t = (target - y_lo) / dy
    mu = lo.mu + t * h
    sigma = abs(h / dy) * math.sqrt((1.0 - t) ** 2 * var_lo + t**2 * var_hi)
    return Crossing(mu=mu, sigma=sigma, lo=lo, hi=hi, t=t)


def toys_needed(crossing: Crossing, target_sigma: float) -> tuple[int, int]:
    """Return the toys per hypothesis the two bracket points need for sigma <= target_sigma.

    Minimises N_lo + N_hi subject to the propagated variance, given var(y_i) = v_i / N_i and
    the current t and slope: N_i proportional to w_i sqrt(v_i), w = (1 - t, t).
    """
    if target_sigma <= 0:
        raise ValueError("target_sigma must be positive")
    slope = crossing.slope
    if not math.isfinite(slope) or slope >= 0:
        return crossing.lo.n_sb, crossing.hi.n_sb
    t = min(max(crossing.t, 0.0), 1.0)
    w = (1.0 - t, t)
    v = (crossing.lo.var_per_toy, crossing.hi.var_per_toy)
    root = [wi * math.sqrt(vi) for wi, vi in zip(w, v, strict=True)]
    total = sum(root)
    scale = total / (slope**2 * target_sigma**2)
    return tuple(max(1, math.ceil(scale * r)) for r in root)  # type: ignore[return-value]
