"""A toy signal-vs-background dataset with physics-like features, generated offline.

The "analysis": a resonance of mass ~125 GeV decaying to two b-jets (signal) over a
falling QCD-like di-jet background that also contains genuine b-jets. Nothing is
downloaded; every event comes from a NumPy generator seeded with ``seed``, so the same
``(n_events, seed)`` always gives the same arrays, on any machine.

Features (in ``FEATURES`` order):

- ``m_jj``: invariant mass. Signal: Gaussian peak (detector resolution) plus a low-side tail
  (FSR, neutrinos in semileptonic b decays); background: falling exponential.
- ``pt_jj``: transverse momentum of the pair; signal slightly harder.
- ``pt_j1``, ``pt_j2``: jet transverse momenta, correlated with ``m_jj``, ``pt_jj`` and the
  decay angle.
- ``cos_theta_star``: decay angle in the pair rest frame; isotropic for the (scalar) signal,
  forward-peaked (t-channel) for the background.
- ``deta_jj``: rapidity difference, a function of ``cos_theta_star`` (so correlated with it).
- ``dphi_jj``: azimuthal separation, near pi and broadened by ``pt_jj``.
- ``y_jj``: rapidity of the pair; background is more forward.
- ``btag_j1``, ``btag_j2``: b-tagging scores; the background is a mix of light and b jets.
- ``met``: missing transverse momentum; weakly discriminating.
- ``n_extra_jets``: additional jet multiplicity; weakly discriminating.
- ``iso_j1``: an isolation-like variable; very weakly discriminating.
- ``n_pv``, ``rho``: pile-up (number of vertices and energy density): not discriminating.

The classes are imbalanced (``signal_fraction``, 25 % by default).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

FEATURES: tuple[str, ...] = (
    "m_jj",
    "pt_jj",
    "pt_j1",
    "pt_j2",
    "cos_theta_star",
    "deta_jj",
    "dphi_jj",
    "y_jj",
    "btag_j1",
    "btag_j2",
    "met",
    "n_extra_jets",
    "iso_j1",
    "n_pv",
    "rho",
)


class Dataset(NamedTuple):
    """A train/validation split. Arrays are read-only (the split is cached and shared)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def _cos_theta_background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sample cos(theta*) from a t-channel-like density ~ 1 / (1.2 - |c|) on [-1, 1]."""
    # Inverse CDF of f(u) ~ 1 / (a - u) on u = |c| in [0, 1]: u = a - a**(1-r) * (a-1)**r.
    a = 1.2
    r = rng.random(n)
    u = a - a ** (1.0 - r) * (a - 1.0) ** r
    return np.where(rng.random(n) < 0.5, -u, u)


def _sample(rng: np.random.Generator, n: int, signal: bool) -> np.ndarray:
    """Generate ``n`` events of one class; returns an array of shape (n, len(FEATURES))."""
    if signal:
        pt_jj = rng.gamma(2.0, 28.0, n)
        # Resolution peak that sharpens with the pair's pT (harder jets are better measured),
        # plus a low-side tail for 20 % of the events (FSR, neutrinos from b decays).
        sigma = 20.0 - 10.0 * np.minimum(pt_jj / 150.0, 1.0)
        tail = rng.random(n) < 0.20
        m = np.where(tail, rng.normal(105.0, 20.0, n), rng.normal(125.0, sigma, n))
        cos_t = rng.uniform(-1.0, 1.0, n)
        y_jj = rng.normal(0.0, 0.9, n)
        btag = rng.beta(2.6, 1.8, (n, 2))
        met = rng.exponential(22.0, n)
        n_extra = rng.poisson(1.6, n)
        iso = rng.exponential(0.060, n)
    else:
        pt_jj = rng.gamma(2.0, 22.0, n)
        # Three components: light-flavour pairs, one real b-jet, and b-pairs from gluon
        # splitting. The last is irreducible in b-tagging but sits at low mass with a
        # collinear topology, so only the combination of tagging and kinematics rejects it.
        # The mass spectrum falls above a threshold that rises with pT (trigger sculpting).
        u = rng.random(n)
        g_to_bb = u < 0.25
        one_b = (u >= 0.25) & (u < 0.50)
        m = np.where(
            g_to_bb,
            20.0 + rng.gamma(2.0, 25.0, n),
            40.0 + 0.6 * pt_jj + rng.exponential(55.0, n),
        )
        cos_t = _cos_theta_background(rng, n)
        cos_t = np.where(g_to_bb, np.sign(cos_t) * np.sqrt(np.abs(cos_t)), cos_t)
        y_jj = rng.normal(0.0, 1.3, n)
        light = rng.beta(1.3, 2.5, (n, 2))
        real_b = rng.beta(2.6, 1.8, (n, 2))
        btag = np.where(g_to_bb[:, None], real_b, light)
        btag[:, 0] = np.where(one_b, real_b[:, 0], btag[:, 0])
        met = rng.exponential(18.0, n)
        n_extra = rng.poisson(1.2, n)
        iso = rng.exponential(0.070, n)
    m = np.clip(m, 20.0, None)

    # Two-body kinematics: each jet carries m/2 in the pair rest frame; the pair's boost
    # (pt_jj) makes one jet harder than the other. Jet energy resolution smears both.
    sin_t = np.sqrt(1.0 - cos_t**2)
    pt_rest = 0.5 * m * sin_t
    share = 0.5 * pt_jj * rng.uniform(0.6, 1.0, n)
    pt_a = (pt_rest + share) * rng.normal(1.0, 0.08, n)
    pt_b = np.abs(pt_rest - share) * rng.normal(1.0, 0.08, n) + 5.0
    pt_j1 = np.maximum(pt_a, pt_b)
    pt_j2 = np.minimum(pt_a, pt_b)
    cos_c = np.clip(cos_t, -0.999, 0.999)
    deta = np.abs(2.0 * np.arctanh(cos_c)) + np.abs(rng.normal(0.0, 0.05, n))
    dphi = np.pi - np.abs(rng.normal(0.0, 0.15 + 0.8 * pt_jj / (pt_jj + m), n))
    dphi = np.clip(dphi, 0.0, np.pi)
    btag = np.sort(btag, axis=1)[:, ::-1]  # leading score first

    # Pile-up: identical for both classes; rho tracks the number of vertices.
    n_pv = rng.poisson(35.0, n)
    rho = 0.45 * n_pv + rng.normal(0.0, 3.0, n)

    return np.column_stack(
        [m, pt_jj, pt_j1, pt_j2, cos_t, deta, dphi, y_jj, btag[:, 0], btag[:, 1],
         met, n_extra, iso, n_pv, rho]
    ).astype(np.float32)  # fmt: skip


def make_events(
    n_events: int, seed: int = 0, signal_fraction: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n_events`` shuffled events.

    Args:
        n_events: total number of events (signal plus background).
        seed: seed of the NumPy generator; the same seed gives the same events.
        signal_fraction: expected fraction of signal events (class imbalance).

    Returns:
        ``(x, y)``: features of shape (n_events, len(FEATURES)) as float32, labels (1 = signal)
        as int8.
    """
    if n_events < 2:
        raise ValueError(f"n_events must be at least 2, got {n_events}")
    if not 0.0 < signal_fraction < 1.0:
        raise ValueError(f"signal_fraction must be in (0, 1), got {signal_fraction}")
    rng = np.random.default_rng(seed)
    n_sig = int(rng.binomial(n_events, signal_fraction))
    n_sig = min(max(n_sig, 1), n_events - 1)  # both classes present, always
    x = np.concatenate([_sample(rng, n_sig, True), _sample(rng, n_events - n_sig, False)])
    y = np.concatenate([np.ones(n_sig, np.int8), np.zeros(n_events - n_sig, np.int8)])
    order = rng.permutation(n_events)
    return x[order], y[order]


@functools.lru_cache(maxsize=4)
def load_dataset(n_events: int, seed: int = 0, validation_fraction: float = 0.3) -> Dataset:
    """Generate events and split them into train and validation sets.

    Cached per process: tasklift workers are persistent, so only the first job of a worker
    pays for the generation. The arrays are made read-only because every caller shares them.
    """
    x, y = make_events(n_events, seed)
    n_val = max(1, round(n_events * validation_fraction))
    parts = Dataset(x[n_val:], y[n_val:], x[:n_val], y[:n_val])
    for array in parts:
        array.setflags(write=False)
    return parts
