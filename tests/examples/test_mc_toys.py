"""examples/mc_toys: test statistic, exact CLs, toy counting, the crossing, and end-to-end runs."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mc_toys"
MAIN = EXAMPLE / "main.py"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mc() -> dict[str, ModuleType]:
    """cls.py and main.py under private names.

    main.py imports its sibling as top-level ``cls`` (as the job runner does); it is put in
    ``sys.modules`` only while main.py is imported, and the previous entry restored after.
    """
    saved = sys.modules.get("cls")
    modules = {"cls": _load("_mc_toys_cls", EXAMPLE / "cls.py")}
    try:
        sys.modules["cls"] = modules["cls"]
        modules["main"] = _load("_mc_toys_main", MAIN)
    finally:
        if saved is None:
            sys.modules.pop("cls", None)
        else:
            sys.modules["cls"] = saved
    return modules


@pytest.fixture(scope="module")
def cls(mc):
    return mc["cls"]


def poisson_cdf(k: int, lam: float) -> float:
    """P(n <= k | lam) by the plain sum: independent of SciPy and of the code under test."""
    return sum(math.exp(-lam) * lam**i / math.factorial(i) for i in range(k + 1))


def _toy_point(cls, mu, n_obs, b, n_toys, seed):
    seq_sb, seq_b = np.random.SeedSequence(seed).spawn(2)
    c = cls.count_toys(
        mu, n_obs, b, n_toys, np.random.default_rng(seq_sb), np.random.default_rng(seq_b)
    )
    return cls.scan_point(mu, c["k_sb"], c["n_sb"], c["k_b"], c["n_b"])


# --- exact reference ----------------------------------------------------------------------------


def test_exact_limit_no_events_no_background_is_minus_ln_alpha(cls):
    assert cls.upper_limit_exact(0, 0.0, 0.95) == pytest.approx(-math.log(0.05), abs=1e-9)
    assert cls.upper_limit_exact(0, 0.0, 0.95) == pytest.approx(2.9957, abs=1e-4)
    assert cls.upper_limit_exact(0, 0.0, 0.90) == pytest.approx(-math.log(0.10), abs=1e-9)


def test_exact_limit_with_no_events_does_not_depend_on_background(cls):
    # CLs(mu) = exp(-(mu + b)) / exp(-b) = exp(-mu): the CLs protection against b
    for b in (0.5, 1.0, 4.0):
        assert cls.upper_limit_exact(0, b) == pytest.approx(-math.log(0.05), abs=1e-9)


@pytest.mark.parametrize(("n_obs", "b"), [(1, 0.0), (3, 2.0), (5, 3.0), (10, 4.0)])
def test_exact_limit_solves_the_poisson_sum(cls, n_obs, b):
    mu_up = cls.upper_limit_exact(n_obs, b)
    assert poisson_cdf(n_obs, mu_up + b) / poisson_cdf(n_obs, b) == pytest.approx(0.05, rel=1e-9)
    assert cls.cls_exact(mu_up, n_obs, b) == pytest.approx(0.05, rel=1e-12)


def test_exact_limit_refuses_a_confidence_level_at_or_below_one_half(cls):
    with pytest.raises(ValueError, match="cl"):
        cls.upper_limit_exact(3, 1.0, 0.5)


# --- the test statistic -------------------------------------------------------------------------


def test_qtilde_by_hand(cls):
    # mu = 3, b = 2: n = 0 -> 2 mu; n = 1 (< b) -> 2 [mu + n ln(b / (mu + b))]
    q = cls.qtilde(np.arange(7), 3.0, 2.0)
    assert q[0] == pytest.approx(6.0)
    assert q[1] == pytest.approx(2.0 * (3.0 + math.log(2.0 / 5.0)))
    assert q[3] == pytest.approx(2.0 * ((3.0 - 1.0) + 3 * math.log(3.0 / 5.0)))
    assert q[5] == 0.0 and q[6] == 0.0  # mu_hat = n - b >= mu
    # scalars in, 0-d out; no warning for b = 0, n = 0 or mu = 0 (warnings are errors here)
    assert float(cls.qtilde(0, 0.0, 0.0)) == 0.0
    assert float(cls.qtilde(0, 1.5, 0.0)) == pytest.approx(3.0)
    assert np.all(cls.qtilde(np.arange(5), 0.0, 1.0) == 0.0)


@pytest.mark.parametrize("b", [0.0, 0.7, 2.0, 6.5])
@pytest.mark.parametrize("mu", [0.3, 1.0, 4.2, 9.0])
def test_qtilde_orders_outcomes_like_n(cls, mu, b):
    """q~ strictly decreases in n below mu + b and is 0 above, so {q~ >= q_obs} = {n <= n_obs}."""
    n = np.arange(0, 60)
    q = cls.qtilde(n, mu, b)
    below = n < mu + b
    assert np.all(np.diff(q[below]) < 0)
    assert np.all(q[~below] == 0.0)
    assert np.all(q >= 0.0)
    # the claim the exact check rests on, by enumeration over the Poisson pmf
    for n_obs in range(0, 15):
        q_obs = float(cls.qtilde(n_obs, mu, b))
        passing = q >= q_obs - 1e-12
        for lam in (mu + b, b):
            if lam == 0:
                continue
            p_q = sum(math.exp(-lam) * lam ** int(i) / math.factorial(int(i)) for i in n[passing])
            if n_obs < mu + b:
                assert p_q == pytest.approx(poisson_cdf(n_obs, lam), rel=1e-9)
            else:
                assert p_q == pytest.approx(1.0, rel=1e-9)  # q_obs = 0: every outcome passes
        expected = 1.0 if n_obs >= mu + b else cls.cls_exact(mu, n_obs, b)
        assert cls.cls_exact_qtilde(mu, n_obs, b) == pytest.approx(expected)


# --- toys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_obs", "b", "mu"), [(3, 2.0, 6.0), (0, 1.0, 3.0), (5, 3.0, 7.5)])
def test_toy_cls_agrees_with_exact_within_its_error(cls, n_obs, b, mu):
    point = _toy_point(cls, mu, n_obs, b, 200_000, seed=1)
    exact = cls.cls_exact(mu, n_obs, b)
    assert abs(point.cls - exact) <= 3.0 * point.cls_err
    assert point.cls_err == pytest.approx(point.cls * math.sqrt(point.log_var))
    assert 0.0 < point.cls_err < 0.05 * exact


def test_toy_cls_errors_are_the_right_size(cls):
    """Over 100 independent batches the pulls against the exact CLs have mean 0 and width 1."""
    exact = cls.cls_exact(6.0, 3, 2.0)
    pulls = [
        (p.cls - exact) / p.cls_err
        for p in (_toy_point(cls, 6.0, 3, 2.0, 20_000, seed=s) for s in range(100))
    ]
    assert abs(np.mean(pulls)) < 0.35
    assert 0.75 < np.std(pulls) < 1.3


def test_count_toys_returns_small_json(cls):
    seq_sb, seq_b = np.random.SeedSequence(7).spawn(2)
    c = cls.count_toys(
        2.0, 1, 0.5, 1000, np.random.default_rng(seq_sb), np.random.default_rng(seq_b)
    )
    assert set(c) == {"k_sb", "n_sb", "k_b", "n_b", "q_obs"}
    assert c["n_sb"] == c["n_b"] == 1000 and 0 <= c["k_sb"] <= c["k_b"] <= 1000
    assert json.loads(json.dumps(c)) == c


def test_undefined_cls_when_no_background_toy_passes(cls):
    p = cls.scan_point(1.0, 0, 100, 0, 100)
    assert math.isnan(p.cls) and math.isnan(p.cls_err)
    zero = cls.scan_point(9.0, 0, 1000, 500, 1000)
    assert zero.cls == 0.0 and zero.cls_err > 0.0


# --- the crossing -------------------------------------------------------------------------------


def _exact_points(cls, mus, n_obs, b, n=10**9):
    """Scan points whose fractions are the exact probabilities (to 1e-9)."""
    out = []
    for mu in mus:
        p_sb, p_b = poisson_cdf(n_obs, mu + b), poisson_cdf(n_obs, b)
        out.append(cls.scan_point(mu, round(p_sb * n), n, round(p_b * n), n))
    return out


def test_bracket_and_fit_find_the_exact_limit_on_exact_cls(cls):
    exact = cls.upper_limit_exact(3, 2.0)
    coarse = _exact_points(cls, [1.0, 2.5, 4.0, 5.5, 7.0, 8.5], 3, 2.0)
    bracket = cls.bracket_crossing(coarse, 0.05)
    assert bracket.method == "bracket" and bracket.window == (5.5, 7.0)
    assert bracket.mu == pytest.approx(exact, abs=0.02)  # ln CLs is nearly straight
    fine = _exact_points(cls, [5.76, 6.0, 6.24], 3, 2.0)
    located = cls.locate_crossing(coarse + fine, 0.05, half_width=0.4)
    assert located.method == "fit" and located.below >= 1 and located.above >= 1
    assert located.mu == pytest.approx(exact, abs=2e-3)
    assert located.sigma < 1e-3
    assert cls.bracket_crossing(coarse[:3], 0.05) is None  # not bracketed yet


def test_crossing_uncertainty_covers_the_exact_limit(cls):
    """Toys at four fixed points around the limit, 120 seeds: pulls have mean 0 and width 1."""
    exact = cls.upper_limit_exact(3, 2.0)
    pulls = []
    for s in range(120):
        pts = [
            _toy_point(cls, mu, 3, 2.0, 10_000, seed=1000 * s + i)
            for i, mu in enumerate([5.4, 5.8, 6.2, 6.6])
        ]
        c = cls.locate_crossing(pts, 0.05, half_width=0.8)
        assert c.method == "fit"
        pulls.append((c.mu - exact) / c.sigma)
    assert abs(np.mean(pulls)) < 0.25
    assert 0.85 < np.std(pulls) < 1.2
    assert np.mean(np.abs(pulls) > 3.0) < 0.02


def test_toys_for_sigma(cls):
    # sigma^2 = v / (2 N s^2): v = 20, s = -0.5, target 0.01 -> N = 20 / (2 * 0.25 * 1e-4)
    assert cls.toys_for_sigma(-0.5, 20.0, 0.01) == 400_000
    with pytest.raises(ValueError):
        cls.toys_for_sigma(0.1, 20.0, 0.01)


# --- the job and the planning in main.py (in-process) -------------------------------------------


def test_job_seed_is_deterministic_and_distinct_per_batch(mc):
    main = mc["main"]
    a = main.throw_toys(mu=6.0, batch=0, n_obs=3, background=2.0, toys=5000, seed=0)
    again = main.throw_toys(mu=6.0, batch=0, n_obs=3, background=2.0, toys=5000, seed=0)
    other = main.throw_toys(mu=6.0, batch=1, n_obs=3, background=2.0, toys=5000, seed=0)
    assert a == again
    assert a != other
    assert a["mu"] == 6.0 and a["batch"] == 0 and a["n_sb"] == 5000
    s1 = main.toy_seed(0, 3, 2.0, 6.0, 0).generate_state(4)
    s2 = main.toy_seed(0, 3, 2.0, 6.0000001, 0).generate_state(4)
    assert not np.array_equal(s1, s2)


def test_plan_extends_the_grid_until_the_crossing_is_bracketed(mc):
    main, cls = mc["main"], mc["cls"]
    above = _exact_points(cls, [0.5, 1.0, 1.5], 3, 2.0)  # all CLs > 0.05
    plan = main.next_plan(
        above,
        None,
        dict.fromkeys((0.5, 1.0, 1.5), 1),
        alpha=0.05,
        precision=0.03,
        toys=1000,
        grid_points=8,
    )
    assert min(plan) > 1.5 and max(plan) == pytest.approx(3.0) and set(plan.values()) == {1}
    below = _exact_points(cls, [8.0, 9.0], 3, 2.0)  # all CLs < 0.05
    plan = main.next_plan(
        below, None, {8.0: 1, 9.0: 1}, alpha=0.05, precision=0.03, toys=1000, grid_points=8
    )
    assert plan and all(0.0 < mu < 8.0 for mu in plan)


def test_plan_refines_around_the_crossing(mc):
    main, cls = mc["main"], mc["cls"]
    pts = _exact_points(cls, [2.5, 5.0, 7.5], 3, 2.0, n=20_000)
    crossing = cls.locate_crossing(pts, 0.05, main.fit_half_width(0.03))
    plan = main.next_plan(
        pts,
        crossing,
        {2.5: 1, 5.0: 1, 7.5: 1},
        alpha=0.05,
        precision=0.03,
        toys=20_000,
        grid_points=8,
    )
    d = main.design_offset(0.03)
    assert sorted(plan) == pytest.approx([crossing.mu - d, crossing.mu + d], abs=0.01)
    assert all(nb >= 1 for nb in plan.values())


def test_in_process_scan_converges_on_the_exact_limit(mc):
    """The workflow function itself, run as plain Python (jobs in-process)."""
    main = mc["main"]
    r = main.cls_limit.func(3, 2.0, toys_per_job=20_000, precision=0.03, seed=3)
    assert r["converged"] and r["method"] == "fit"
    assert r["uncertainty"] <= 0.03
    assert abs(r["upper_limit"] - r["exact_upper_limit"]) <= max(3 * r["uncertainty"], 0.02)


# --- end to end, through the engine -------------------------------------------------------------


def _run(tmp_path, *flags, timeout=120):
    env = {
        **os.environ,
        "TASKLIFT_HOME": str(tmp_path / "home"),
        "TASKLIFT_QUIET": "1",
        "TASKLIFT_WORKERS": "2",
    }
    cmd = [sys.executable, str(MAIN), *flags]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_help_lists_the_flags(tmp_path):
    out = _run(tmp_path, "--help", timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in (
        "--n-obs",
        "--background",
        "--cl",
        "--toys-per-job",
        "--precision",
        "--json",
        "--service",
        "--backend",
        "--seed",
        "--max-iterations",
    ):
        assert flag in out.stdout


def test_cli_refuses_a_bad_confidence_level(tmp_path):
    out = _run(tmp_path, "--cl", "1.2", timeout=60)
    assert out.returncode == 2 and "--cl" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("n_obs", "b"), [(3, 2.0), (0, 1.0)])
def test_end_to_end_toy_limit_matches_the_exact_one(tmp_path, n_obs, b):
    out = _run(
        tmp_path,
        "--n-obs",
        str(n_obs),
        "--background",
        str(b),
        "--toys-per-job",
        "20000",
        "--precision",
        "0.03",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)  # exactly one JSON object on stdout
    for key in (
        "upper_limit",
        "uncertainty",
        "n_toys",
        "n_jobs",
        "iterations",
        "scan",
        "exact_upper_limit",
    ):
        assert key in r
    exact = r["exact_upper_limit"]
    assert exact == pytest.approx(-math.log(0.05) if n_obs == 0 else 5.983455509, abs=1e-6)
    assert r["converged"] is True
    assert 0.0 < r["uncertainty"] <= 0.03
    assert abs(r["upper_limit"] - exact) <= max(3.0 * r["uncertainty"], 0.02)
    assert r["iterations"] >= 2  # a coarse grid, then at least one refinement
    assert r["n_jobs"] >= 10 and r["n_toys"] == 2 * 20_000 * r["n_jobs"]
    mus = [p["mu"] for p in r["scan"]]
    assert mus == sorted(mus) and len(set(mus)) == len(mus)
    for p in r["scan"]:
        assert set(p) >= {"mu", "cls", "cls_err"}
    # the scan brackets the limit, and CLs falls with mu
    assert min(mus) < r["upper_limit"] < max(mus)
    assert r["scan"][0]["cls"] > 0.05 > r["scan"][-1]["cls"]
