"""Gaussian-process active learning of an excursion set ``{x : f(x) > t}`` on the unit square.

Pure numerics (NumPy, SciPy, scikit-learn), no tasklift: the workflow in ``main.py`` drives it
with a callback that evaluates a batch of points as tasklift jobs, the tests drive it in-process.

The method follows "Active Learning for Excursion Set Estimation" (Cranmer, Heinrich, Stark et
al., ACAT 2019, and the ``excursion`` package):

* a Gaussian process (constant x Matern-5/2 with one length scale per axis, plus a white-noise
  term; ``normalize_y``) models ``f`` from the points evaluated so far;
* an acquisition function scores candidate points by how much evaluating them would help to
  decide, everywhere, on which side of the threshold ``f`` lies:

  - ``sur`` (default): stepwise uncertainty reduction -- the expected decrease, over a reference
    grid, of the integrated misclassification probability ``sum_g Phi(-|mu_g - t| / sigma_g)``
    if the candidate were evaluated (one-step look-ahead, the expectation over the unknown
    outcome done by Gauss-Hermite quadrature);
  - ``misclassification``: the pointwise probability ``Phi(-|mu - t| / sigma)`` that the GP puts
    the point on the wrong side of the threshold;
  - ``straddle``: ``1.96 sigma - |mu - t|`` (Bryan et al. 2005);

* a batch is built greedily with the kriging believer: after each pick the GP is conditioned on
  a pseudo-observation equal to its own mean there.  The mean does not move, the posterior
  covariance shrinks exactly as it would after the real evaluation (a rank-one update), so the
  next pick goes where uncertainty about the boundary remains instead of next to the first.

Accuracy is the fraction of a fine grid where ``mu > t`` agrees with the truth ``f > t``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy.special import ndtr
from scipy.stats import qmc
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from threadpoolctl import threadpool_limits

Array = np.ndarray
#: evaluates ``f`` at an ``(n, 2)`` array of unit-square points, returns ``n`` values
BatchEvaluator = Callable[[Array], Sequence[float]]

ACQUISITIONS = ("sur", "misclassification", "straddle")
_TINY = 1e-12
SUR_SHORTLIST = 200


def single_threaded_blas() -> threadpool_limits:
    """Run BLAS single-threaded: the matrices here are small (tens to ~2000 rows), and a
    multi-threaded BLAS on a busy machine is then an order of magnitude slower, not faster.
    """
    return threadpool_limits(limits=1, user_api="blas")


def make_gp(seed: int = 0, n_restarts: int = 2) -> GaussianProcessRegressor:
    """A GP for a smooth, noise-free function on the unit square.

    The white-noise term keeps the fit numerically stable (the simulator is deterministic, so its
    level usually ends at the lower bound); length scales are bounded to what a budget of tens of
    points on the unit square can resolve.
    """
    kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(
        length_scale=(0.3, 0.3), length_scale_bounds=(0.03, 3.0), nu=2.5
    ) + WhiteKernel(noise_level=1e-6, noise_level_bounds=(1e-8, 1e-1))
    return GaussianProcessRegressor(
        kernel=kernel,
        normalize_y=True,
        n_restarts_optimizer=n_restarts,
        random_state=seed,
    )


def fit_gp(x: Array, y: Array, seed: int = 0) -> GaussianProcessRegressor:
    """Fit a fresh GP (hyperparameters by maximum likelihood) to ``x`` (unit square) and ``y``.

    A hyperparameter at its bound (the noise level of a deterministic function, a length scale of
    a nearly flat direction) is expected here and not a failed fit, so scikit-learn's
    ``ConvergenceWarning`` is silenced for this call only.
    """
    gp = make_gp(seed)
    with single_threaded_blas(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return gp


def unit_grid(n: int) -> Array:
    """An ``n x n`` regular grid over the closed unit square, as an ``(n*n, 2)`` array."""
    u = np.linspace(0.0, 1.0, n)
    gx, gy = np.meshgrid(u, u)
    return np.column_stack([gx.ravel(), gy.ravel()])


def misclassification_probability(mu: Array, sigma: Array, threshold: float) -> Array:
    """``Phi(-|mu - t| / sigma)``: probability that the sign of ``mu - t`` is wrong."""
    return ndtr(-np.abs(mu - threshold) / np.maximum(sigma, _TINY))


def straddle(mu: Array, sigma: Array, threshold: float, kappa: float = 1.96) -> Array:
    """Straddle score ``kappa * sigma - |mu - t|`` (large near the threshold and where unsure)."""
    return kappa * sigma - np.abs(mu - threshold)


def expected_misclassification_reduction(
    mu: Array,
    cov: Array,
    candidates: Array,
    reference: Array,
    threshold: float,
    n_quad: int = 8,
) -> Array:
    """One-step look-ahead (SUR) score of each candidate.

    For candidate ``c`` and reference point ``g`` the GP after observing ``y_c`` has mean
    ``mu_g + s_gc z`` (``z ~ N(0, 1)``, ``s_gc = C_gc / sqrt(C_cc)``) and variance
    ``C_gg - s_gc^2``.  The score is ``sum_g p_g - E_z[p'_g]``, the expected drop of the summed
    misclassification probability over the reference points.

    Args:
        mu: posterior mean over the pool of points.
        cov: posterior covariance over the pool (observation noise on the diagonal).
        candidates: pool indices of the candidates.
        reference: pool indices of the reference (integration) points.
        threshold: the excursion threshold.
        n_quad: number of Gauss-Hermite nodes for the expectation over ``z``.

    Returns:
        One score per candidate (larger is better).
    """
    nodes, weights = hermegauss(n_quad)
    weights = weights / weights.sum()
    var_ref = np.clip(np.diag(cov)[reference], _TINY, None)
    mu_ref = mu[reference]
    now = misclassification_probability(mu_ref, np.sqrt(var_ref), threshold).sum()
    c_cc = np.clip(np.diag(cov)[candidates], _TINY, None)
    s = cov[np.ix_(candidates, reference)] / np.sqrt(c_cc)[:, None]  # (n_cand, n_ref)
    sigma_new = np.sqrt(np.clip(var_ref[None, :] - s**2, _TINY, None))
    dist = mu_ref[None, :] - threshold
    expected = np.zeros(len(candidates))
    for z, w in zip(nodes, weights, strict=True):
        expected += w * ndtr(-np.abs(dist + s * z) / sigma_new).sum(axis=1)
    return now - expected


def condition_on_pick(cov: Array, index: int) -> Array:
    """Posterior covariance after observing pool point ``index`` (kriging believer, rank one)."""
    col = cov[:, index]
    return cov - np.outer(col, col) / max(float(cov[index, index]), _TINY)


def select_batch(
    gp: GaussianProcessRegressor,
    threshold: float,
    n: int,
    candidates: Array,
    reference: Array | None = None,
    acquisition: str = "sur",
    exclude: Array | None = None,
) -> Array:
    """Choose ``n`` of ``candidates`` (unit square) greedily with the kriging believer.

    Args:
        gp: a fitted GP.
        threshold: the excursion threshold (in the units of ``y``).
        n: batch size.
        candidates: ``(m, 2)`` candidate points, ``m >= n``.
        reference: ``(k, 2)`` integration points for ``sur`` (default: a 25 x 25 grid).
        acquisition: one of ``ACQUISITIONS``.
        exclude: points already evaluated; candidates closer than 1e-6 to one are never chosen.

    Returns:
        The chosen ``(n, 2)`` points, in the order they were picked.
    """
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"unknown acquisition {acquisition!r}; choose from {ACQUISITIONS}")
    candidates = np.asarray(candidates, dtype=float)
    m = len(candidates)
    if n > m:
        raise ValueError(f"cannot pick {n} points from {m} candidates")
    if acquisition == "sur":
        reference = unit_grid(25) if reference is None else np.asarray(reference, dtype=float)
        pool = np.vstack([candidates, reference])
        ref_idx = np.arange(m, len(pool))
    else:
        pool = candidates
        ref_idx = np.arange(0)
    cand_idx = np.arange(m)
    allowed = np.ones(m, dtype=bool)
    if exclude is not None and len(exclude):
        d = np.linalg.norm(candidates[:, None, :] - np.asarray(exclude)[None, :, :], axis=2)
        allowed &= d.min(axis=1) > 1e-6
    chosen: list[int] = []
    with single_threaded_blas():
        mu, cov = gp.predict(pool, return_cov=True)
        for _ in range(n):
            best = _pick(mu, cov, cand_idx, ref_idx, allowed, threshold, acquisition)
            chosen.append(best)
            allowed[best] = False
            cov = condition_on_pick(cov, best)
    return candidates[chosen]


def _pick(
    mu: Array,
    cov: Array,
    cand_idx: Array,
    ref_idx: Array,
    allowed: Array,
    threshold: float,
    acquisition: str,
) -> int:
    """Index of the best allowed candidate under ``acquisition``.

    ``sur`` scores only the ``SUR_SHORTLIST`` allowed candidates with the best straddle score (a
    candidate far from the boundary or already well known cannot reduce the misclassification
    much), which keeps the look-ahead cheap.
    """
    sigma = np.sqrt(np.clip(np.diag(cov)[cand_idx], 0.0, None))
    if acquisition == "misclassification":
        score = misclassification_probability(mu[cand_idx], sigma, threshold)
    else:
        score = straddle(mu[cand_idx], sigma, threshold)
    score = np.where(allowed, score, -np.inf)
    if acquisition != "sur":
        return int(np.argmax(score))
    shortlist = np.argsort(-score, kind="stable")[:SUR_SHORTLIST]
    shortlist = shortlist[np.isfinite(score[shortlist])]
    sur = expected_misclassification_reduction(mu, cov, cand_idx[shortlist], ref_idx, threshold)
    return int(shortlist[np.argmax(sur)])


def predict_mean(gp: GaussianProcessRegressor, points: Array) -> Array:
    """The GP's posterior mean at ``points``."""
    with single_threaded_blas():
        return gp.predict(np.asarray(points, dtype=float))


def classification_accuracy(
    gp: GaussianProcessRegressor, grid: Array, truth: Array, threshold: float
) -> float:
    """Fraction of ``grid`` points where ``mu > threshold`` agrees with the boolean ``truth``."""
    estimate = predict_mean(gp, grid) > threshold
    return float(np.mean(estimate == np.asarray(truth, dtype=bool)))


@dataclass
class History:
    """What a run evaluated and how well its final GP classifies."""

    x: Array = field(default_factory=lambda: np.zeros((0, 2)))
    y: Array = field(default_factory=lambda: np.zeros(0))
    batch_sizes: list[int] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)  # after each batch, if a grid is given
    gp: GaussianProcessRegressor | None = None

    @property
    def iterations(self) -> int:
        """Number of batches evaluated."""
        return len(self.batch_sizes)

    def add(self, x: Array, y: Sequence[float]) -> None:
        """Append one evaluated batch."""
        x = np.asarray(x, dtype=float).reshape(-1, 2)
        y = np.asarray(y, dtype=float).reshape(-1)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} points but {len(y)} values")
        self.x = np.vstack([self.x, x])
        self.y = np.concatenate([self.y, y])
        self.batch_sizes.append(len(y))


def initial_design(n: int, rng: np.random.Generator) -> Array:
    """``n`` space-filling points (scrambled Latin hypercube) on the unit square."""
    return qmc.LatinHypercube(d=2, rng=rng).random(n)


def active_learning(
    evaluate: BatchEvaluator,
    threshold: float,
    budget: int,
    batch: int,
    seed: int = 0,
    acquisition: str = "sur",
    n_initial: int | None = None,
    n_candidates: int = 1000,
    grid: Array | None = None,
    truth: Array | None = None,
) -> History:
    """Spend ``budget`` evaluations learning ``{f > threshold}``, ``batch`` points at a time.

    The first batch (``n_initial`` points, default ``batch``) is a Latin hypercube; every later
    batch is chosen by ``acquisition`` among ``n_candidates`` fresh uniform random candidates.
    The last batch is shortened so that exactly ``budget`` points are evaluated.  Deterministic
    for a given ``seed`` (and deterministic ``evaluate``).

    Args:
        evaluate: evaluates a batch of unit-square points (e.g. as tasklift jobs).
        threshold: the excursion threshold.
        budget: total number of evaluations.
        batch: points per batch after the initial design.
        seed: seeds the design, the candidates and the GP optimizer restarts.
        acquisition: one of ``ACQUISITIONS``.
        n_initial: size of the initial design (default ``batch``, at least 2).
        n_candidates: candidates scored per batch.
        grid: optional ``(k, 2)`` unit-square grid to track accuracy after each batch.
        truth: booleans ``f > threshold`` on ``grid``.

    Returns:
        The evaluated points, values, number of batches, accuracies and the final GP.
    """
    if budget < 2 or batch < 1:
        raise ValueError("need budget >= 2 and batch >= 1")
    rng = np.random.default_rng([seed, 0])
    n_initial = min(budget, max(2, batch if n_initial is None else n_initial))
    hist = History()
    points = initial_design(n_initial, rng)
    hist.add(points, evaluate(points))
    while True:
        hist.gp = fit_gp(hist.x, hist.y, seed)
        if grid is not None and truth is not None:
            hist.accuracies.append(classification_accuracy(hist.gp, grid, truth, threshold))
        remaining = budget - len(hist.y)
        if remaining <= 0:
            return hist
        candidates = rng.random((max(n_candidates, batch), 2))
        points = select_batch(
            hist.gp,
            threshold,
            min(batch, remaining),
            candidates,
            acquisition=acquisition,
            exclude=hist.x,
        )
        hist.add(points, evaluate(points))


def random_points(budget: int, seed: int = 0) -> Array:
    """The random-sampling baseline's ``budget`` uniform points (own stream of ``seed``)."""
    return np.random.default_rng([seed, 1]).random((budget, 2))


def fit_history(x: Array, y: Sequence[float], seed: int = 0) -> History:
    """A one-batch ``History`` with its GP fitted (the random baseline's result)."""
    hist = History()
    hist.add(x, y)
    hist.gp = fit_gp(hist.x, hist.y, seed)
    return hist
