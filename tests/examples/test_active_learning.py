"""examples/active_learning: test functions, GP acquisition, in-process and end-to-end runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "active_learning"
SIBLINGS = ("functions", "excursion")


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def al() -> dict[str, ModuleType]:
    """The example's modules, loaded under private names.

    main.py imports its siblings as top-level ``functions`` and ``excursion`` (as the job runner
    does); other examples may have modules with the same names, so they are put in
    ``sys.modules`` only while main.py is imported, and the previous entries restored after.
    """
    saved = {name: sys.modules.get(name) for name in SIBLINGS}
    modules = {name: _load(f"_al_{name}", EXAMPLE / f"{name}.py") for name in SIBLINGS}
    try:
        sys.modules.update(modules)
        modules["main"] = _load("_al_main", EXAMPLE / "main.py")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return modules


def _truth(fn, grid):
    physical = fn.from_unit(grid)
    return fn(physical[:, 0], physical[:, 1]) > fn.threshold


# --- test functions -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["significance", "bumps", "himmelblau"])
def test_known_points_are_inside_and_outside(al, name):
    fn = al["functions"].get_function(name)
    assert fn.inside and fn.outside
    for x, y in fn.inside:
        assert al["functions"].evaluate_point(name, x, y) > fn.threshold, (x, y)
    for x, y in fn.outside:
        assert al["functions"].evaluate_point(name, x, y) < fn.threshold, (x, y)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("significance", 0.25, 0.35), ("bumps", 0.15, 0.25), ("himmelblau", 0.06, 0.12)],
)
def test_excursion_sets_are_nontrivial(al, name, low, high):
    fn = al["functions"].get_function(name)
    fraction = _truth(fn, al["excursion"].unit_grid(100)).mean()
    assert low < fraction < high


def test_function_details(al):
    functions = al["functions"]
    # Himmelblau's four minima are exactly where -log(1 + H) peaks at 0
    for x, y in functions.HIMMELBLAU_MINIMA:
        assert functions.evaluate_point("himmelblau", x, y) == pytest.approx(0.0, abs=1e-9)
    # the Asimov significance is ~ s / sqrt(b) for s << b, and zero without signal
    assert functions.asimov_significance(np.array(1.0), np.array(1e4)) == pytest.approx(
        1e-2, rel=1e-3
    )
    assert functions.significance(np.array(1.5), np.array(0.0)) == 0.0
    # significance grows with the coupling at fixed mass
    z = functions.significance(np.full(5, 1.5), np.linspace(0.1, 1.0, 5))
    assert np.all(np.diff(z) > 0)
    fn = functions.get_function("significance")
    corners = np.array([[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(fn.to_unit(fn.from_unit(corners)), corners)
    np.testing.assert_allclose(fn.from_unit(corners), [[0.5, 0.0], [3.0, 1.0]])
    with pytest.raises(ValueError, match="choose from"):
        functions.get_function("rosenbrock")


# --- GP and acquisition ---------------------------------------------------------------------


def test_misclassification_and_straddle_scores(al):
    ex = al["excursion"]
    mu = np.array([0.0, 0.0, 1.0, 3.0])
    sigma = np.array([1.0, 0.1, 1.0, 1.0])
    p = ex.misclassification_probability(mu, sigma, 0.0)
    assert p[0] == pytest.approx(0.5)
    assert p[2] == pytest.approx(0.158655, abs=1e-5)
    assert p[0] > p[2] > p[3]
    s = ex.straddle(mu, sigma, 0.0)
    assert s[0] > s[1]  # on the boundary, more uncertainty scores higher
    assert s[0] > s[2] > s[3]


@pytest.fixture(scope="module")
def step_gp(al):
    """A GP of f(x, y) = x - 0.5 from a few points: the boundary is the line x = 0.5."""
    ex = al["excursion"]
    x = ex.initial_design(12, np.random.default_rng(3))
    return ex.fit_gp(x, x[:, 0] - 0.5, seed=0)


@pytest.mark.parametrize("acquisition", ["sur", "misclassification", "straddle"])
def test_acquisition_prefers_points_near_the_boundary(al, step_gp, acquisition):
    ex = al["excursion"]
    candidates = np.random.default_rng(0).random((400, 2))
    batch = ex.select_batch(step_gp, 0.0, 4, candidates, acquisition=acquisition)
    assert batch.shape == (4, 2)
    distance = np.abs(batch[:, 0] - 0.5)
    typical = np.median(np.abs(candidates[:, 0] - 0.5))  # ~0.25
    assert np.all(distance < typical / 2), batch
    assert len({tuple(p) for p in batch}) == 4


def test_batch_spreads_along_the_boundary(al, step_gp):
    """The kriging believer makes later picks avoid the earlier ones."""
    ex = al["excursion"]
    u = np.linspace(0.0, 1.0, 41)
    # candidates only on the boundary, every one equally uncertain about the side
    candidates = np.column_stack([np.full_like(u, 0.5), u])
    batch = ex.select_batch(step_gp, 0.0, 3, candidates, acquisition="misclassification")
    gaps = np.abs(batch[:, None, 1] - batch[None, :, 1])[np.triu_indices(3, 1)]
    assert gaps.min() > 0.1, batch


def test_select_batch_excludes_evaluated_points_and_checks_arguments(al, step_gp):
    ex = al["excursion"]
    candidates = np.array([[0.5, 0.5], [0.9, 0.9], [0.1, 0.2]])
    batch = ex.select_batch(step_gp, 0.0, 2, candidates, exclude=candidates[:1])
    assert [0.5, 0.5] not in batch.tolist()
    with pytest.raises(ValueError, match="unknown acquisition"):
        ex.select_batch(step_gp, 0.0, 1, candidates, acquisition="ei")
    with pytest.raises(ValueError, match="cannot pick"):
        ex.select_batch(step_gp, 0.0, 4, candidates)


def test_sur_score_is_a_reduction(al):
    ex = al["excursion"]

    def f(p):  # boundary near x = 0.5, wiggling with y
        return np.tanh(4 * (p[:, 0] - 0.5)) + 0.2 * np.sin(5 * p[:, 1])

    x = ex.initial_design(10, np.random.default_rng(3))
    gp = ex.fit_gp(x, f(x), seed=0)
    pool = np.vstack([np.random.default_rng(1).random((50, 2)), ex.unit_grid(10)])
    mu, cov = gp.predict(pool, return_cov=True)
    score = ex.expected_misclassification_reduction(
        mu, cov, np.arange(50), np.arange(50, len(pool)), 0.0
    )
    assert np.all(score > -1e-6)  # an expected reduction, up to quadrature error
    # evaluating next to the boundary helps much more than far from it
    distance = np.abs(f(pool[:50]))
    near = score[distance < 0.25]
    far = score[distance > 0.85]
    assert len(near) and len(far)
    assert near.mean() > 0.01
    assert far.max() < 1e-3


# --- whole runs, in-process -----------------------------------------------------------------


def _work_evaluator(al, name):
    """Evaluate a batch through the example's @work function, called outside a workflow."""
    main = al["main"]
    fn = al["functions"].get_function(name)

    def evaluate(unit_points):
        return main.evaluate(function=name, group_kwargs=main._jobs(name, unit_points, 0.0))

    return fn, evaluate


def test_active_learning_beats_random_in_process(al):
    ex = al["excursion"]
    fn, evaluate = _work_evaluator(al, "bumps")
    grid = ex.unit_grid(100)
    truth = _truth(fn, grid)
    hist = ex.active_learning(
        evaluate, fn.threshold, budget=24, batch=6, seed=0, grid=grid, truth=truth
    )
    assert len(hist.y) == 24
    assert hist.batch_sizes == [6, 6, 6, 6]
    assert len(hist.accuracies) == 4
    x = ex.random_points(24, seed=0)
    baseline = ex.fit_history(x, evaluate(x), seed=0)
    random_accuracy = ex.classification_accuracy(baseline.gp, grid, truth, fn.threshold)
    assert hist.accuracies[-1] > 0.98
    assert hist.accuracies[-1] > random_accuracy + 0.03


def test_active_learning_is_deterministic_and_spends_the_budget_exactly(al):
    ex = al["excursion"]
    fn, evaluate = _work_evaluator(al, "significance")
    runs = [ex.active_learning(evaluate, fn.threshold, budget=13, batch=5, seed=7) for _ in "ab"]
    assert runs[0].batch_sizes == [5, 5, 3]
    np.testing.assert_array_equal(runs[0].x, runs[1].x)
    np.testing.assert_array_equal(runs[0].y, runs[1].y)
    other = ex.active_learning(evaluate, fn.threshold, budget=13, batch=5, seed=8)
    assert not np.array_equal(runs[0].x, other.x)


def test_workflow_function_in_process(al):
    """The steering function itself runs as plain Python outside a workflow."""
    result = al["main"].excursion_campaign.func(
        function="significance", budget=12, batch=4, seed=0, grid_size=40
    )
    assert result["n_evaluations"] == 12
    assert result["random_n_evaluations"] == 12
    assert result["iterations"] == 3
    assert result["evaluations_per_iteration"] == [4, 8, 12]
    assert len(result["points"]) == 12
    assert 0.0 <= result["random_accuracy"] <= 1.0
    assert len(result["map"]) == 25
    text = al["main"].summary_text(result, 1.0)
    assert "active learning: accuracy" in text
    assert "random sampling: accuracy" in text


def test_cli_flags(al, capsys):
    with pytest.raises(SystemExit):
        al["main"].parse_args(["--help"])
    helptext = capsys.readouterr().out
    for flag in ("--function", "--budget", "--batch", "--seed", "--json", "--service", "--backend"):
        assert flag in helptext
    with pytest.raises(SystemExit):
        al["main"].parse_args(["--budget", "1"])
    with pytest.raises(SystemExit):
        al["main"].parse_args(["--function", "nope"])
    args = al["main"].parse_args([])
    assert (args.function, args.service, args.backend, args.json) == (
        "significance",
        "local",
        "local",
        False,
    )


# --- end to end through the engine ----------------------------------------------------------


@pytest.mark.slow
def test_main_json_end_to_end(al, tmp_path):
    env = {
        **os.environ,
        "TASKLIFT_HOME": str(tmp_path),
        "TASKLIFT_QUIET": "1",
        "TASKLIFT_WORKERS": "2",
    }
    cmd = [sys.executable, str(EXAMPLE / "main.py"), "--function", "bumps", "--budget", "24"]
    cmd += ["--batch", "6", "--seed", "0", "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON object on stdout
    for key in ("accuracy", "random_accuracy", "n_evaluations", "iterations"):
        assert key in result
    assert result["function"] == "bumps"
    assert result["threshold"] == 0.5
    assert result["n_evaluations"] == 24
    assert result["iterations"] == 4
    assert 0.0 <= result["accuracy"] <= 1.0
    assert 0.0 <= result["random_accuracy"] <= 1.0
    # on this seed active learning wins clearly (0.99 against 0.93)
    assert result["accuracy"] >= result["random_accuracy"] + 0.03
    # deterministic, and the jobs return exactly what a plain in-process run computes
    plain = al["main"].excursion_campaign.func(function="bumps", budget=24, batch=6, seed=0)
    np.testing.assert_array_equal(result["points"], plain["points"])
    np.testing.assert_array_equal(result["values"], plain["values"])
    assert result["accuracy"] == plain["accuracy"]
    assert result["random_accuracy"] == plain["random_accuracy"]
