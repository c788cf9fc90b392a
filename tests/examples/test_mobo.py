"""examples/mobo: hypervolume, test problems with known fronts, the toy detector, and one run."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mobo"
sys.path.insert(0, str(EXAMPLE))

import detector  # noqa: E402
import hypervolume as hvmod  # noqa: E402
import problems  # noqa: E402
import steering  # noqa: E402

for _module in (detector, hvmod, problems, steering):
    # another example's module of the same name must not shadow ours
    assert Path(_module.__file__).resolve().parent == EXAMPLE, _module.__file__


def weakly_dominates_or_equal(a, b):
    return all(x <= y for x, y in zip(a, b, strict=True))


def strictly_dominates(a, b):
    """Independent of the code under test: plain Python."""
    return weakly_dominates_or_equal(a, b) and any(x < y for x, y in zip(a, b, strict=True))


def mutually_non_dominated(points):
    return not any(strictly_dominates(p, q) for p, q in itertools.permutations(points, 2) if p != q)


def brute_force_hv_integer(points, ref):
    """Count the unit cells [c, c+1)^d below ``ref`` that some point dominates (integer data)."""
    ranges = [range(int(r)) for r in ref]
    return sum(
        1
        for cell in itertools.product(*ranges)
        if any(weakly_dominates_or_equal(p, cell) for p in points)
    )


# --- hypervolume --------------------------------------------------------------------------------


def test_hypervolume_single_point_is_a_box():
    assert hvmod.hypervolume([[1.0, 1.0]], [3.0, 2.0]) == pytest.approx(2.0)
    assert hvmod.hypervolume([[1.0, 0.0, 2.0]], [2.0, 2.0, 5.0]) == pytest.approx(6.0)


def test_hypervolume_staircase_by_hand():
    # (1,3), (2,2), (3,1) against (4,4): strips of width 1 and heights 1, 2, 3.
    front = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
    assert hvmod.hypervolume(front, [4.0, 4.0]) == pytest.approx(6.0)
    # order does not matter; a dominated point and a duplicate change nothing
    shuffled = [[3.0, 1.0], [2.5, 2.5], [1.0, 3.0], [2.0, 2.0], [2.0, 2.0]]
    assert hvmod.hypervolume(shuffled, [4.0, 4.0]) == pytest.approx(6.0)


def test_hypervolume_two_overlapping_boxes_3d():
    # inclusion-exclusion: 2*2*1 + 1*2*2 - 1*2*1
    assert hvmod.hypervolume([[0, 0, 1], [1, 0, 0]], [2, 2, 2]) == pytest.approx(6.0)


def test_hypervolume_ignores_points_not_better_than_reference():
    assert hvmod.hypervolume([], [1.0, 1.0]) == 0.0
    assert hvmod.hypervolume([[2.0, 0.0]], [1.0, 1.0]) == 0.0
    assert hvmod.hypervolume([[1.0, 0.0]], [1.0, 1.0]) == 0.0  # on the boundary: zero width
    assert hvmod.hypervolume([[0.5, 0.5], [5.0, -1.0]], [1.0, 1.0]) == pytest.approx(0.25)


def test_hypervolume_rejects_bad_input():
    with pytest.raises(ValueError):
        hvmod.hypervolume([[1.0, 2.0, 3.0]], [4.0, 4.0])
    with pytest.raises(ValueError):
        hvmod.hypervolume([[1.0, float("nan")]], [4.0, 4.0])


@pytest.mark.parametrize("dim", [2, 3])
def test_hypervolume_matches_cell_counting_on_integer_points(dim):
    rng = np.random.default_rng(dim)
    ref = [6] * dim
    for n in (1, 3, 8, 20):
        pts = rng.integers(0, 7, size=(n, dim)).tolist()
        assert hvmod.hypervolume(pts, ref) == pytest.approx(brute_force_hv_integer(pts, ref))


def test_hypervolume_agrees_with_optunas_private_routine():
    if importlib.util.find_spec("optuna") is None:
        pytest.skip("optuna not installed")
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError:
        pytest.skip("optuna._hypervolume.compute_hypervolume is gone (it is private)")
    rng = np.random.default_rng(7)
    for dim in (2, 3):
        for n in (1, 10, 60):
            pts = rng.random((n, dim))
            ref = np.full(dim, 1.1)
            nd = pts[hvmod.non_dominated_mask(pts)]
            assert hvmod.hypervolume(pts, ref) == pytest.approx(compute_hypervolume(nd, ref))


def test_non_dominated_mask_and_front():
    pts = [[1, 3], [2, 2], [3, 1], [2, 3], [2, 2], [4, 4]]
    assert hvmod.non_dominated_mask(pts).tolist() == [True, True, True, False, True, False]
    assert hvmod.pareto_front(pts).tolist() == [[1, 3], [2, 2], [3, 1]]
    assert hvmod.dominates([1, 2], [1, 3])
    assert not hvmod.dominates([1, 2], [1, 2])
    assert not hvmod.dominates([1, 3], [2, 2])


# --- test problems with known fronts ------------------------------------------------------------


def test_zdt1_front_is_non_dominated_and_gives_the_analytic_hypervolume():
    ref = problems.ZDT1_REFERENCE
    true_hv = problems.zdt1_true_hypervolume(ref)
    assert true_hv == pytest.approx(1.1 * 1.1 - 1.0 / 3.0)
    coarse, dense = problems.zdt1_front(50), problems.zdt1_front(20001)
    assert mutually_non_dominated(coarse.tolist())
    assert hvmod.non_dominated_mask(problems.zdt1_front(1001)).all()
    hv_coarse, hv_dense = hvmod.hypervolume(coarse, ref), hvmod.hypervolume(dense, ref)
    # a finite sample of the front dominates a little less than the front itself
    assert hv_coarse < hv_dense < true_hv
    assert hv_dense == pytest.approx(true_hv, rel=1e-4)
    assert true_hv - hv_dense < (true_hv - hv_coarse) / 100  # converges as the sample grows


def test_zdt1_evaluation_lies_on_or_above_the_front():
    prob = problems.get_problem("zdt1", 5)
    on_front = prob.evaluate({"x0": 0.25, "x1": 0, "x2": 0, "x3": 0, "x4": 0})
    assert on_front == pytest.approx([0.25, 0.5])
    rng = np.random.default_rng(1)
    for _ in range(50):
        f1, f2 = prob.evaluate({f"x{i}": float(v) for i, v in enumerate(rng.random(5))})
        assert f2 >= 1.0 - math.sqrt(f1) - 1e-12


def test_dtlz2_front_is_non_dominated_and_gives_the_analytic_hypervolume():
    ref = problems.DTLZ2_REFERENCE
    true_hv = problems.dtlz2_true_hypervolume(ref)
    assert true_hv == pytest.approx(1.1**3 - math.pi / 6.0)
    coarse, medium, dense = (problems.dtlz2_front(n) for n in (12, 40, 60))
    assert np.allclose(np.sum(dense**2, axis=1), 1.0)
    assert mutually_non_dominated([tuple(p) for p in coarse.tolist()])
    assert hvmod.non_dominated_mask(medium).all()
    hvs = [hvmod.hypervolume(f, ref) for f in (coarse, medium, dense)]
    # a finite sample dominates less than the sphere itself, and approaches it as it grows
    assert hvs[0] < hvs[1] < hvs[2] < true_hv
    assert hvs[2] == pytest.approx(true_hv, rel=0.015)


def test_dtlz2_evaluation_lies_on_or_outside_the_unit_sphere():
    prob = problems.get_problem("dtlz2", 6)
    on_front = prob.evaluate({"x0": 0.3, "x1": 0.8, "x2": 0.5, "x3": 0.5, "x4": 0.5, "x5": 0.5})
    assert sum(v * v for v in on_front) == pytest.approx(1.0)
    assert on_front[2] == pytest.approx(math.sin(0.3 * math.pi / 2))
    rng = np.random.default_rng(2)
    for _ in range(50):
        f = prob.evaluate({f"x{i}": float(v) for i, v in enumerate(rng.random(6))})
        assert sum(v * v for v in f) >= 1.0 - 1e-12
        assert min(f) >= 0.0


def test_problem_registry():
    for name in problems.PROBLEM_NAMES:
        prob = problems.get_problem(name)
        mid = {
            k: (lo * hi) ** 0.5 if log else (lo + hi) / 2
            for k, (lo, hi, log) in prob.parameters.items()
        }
        values = prob.evaluate(mid)
        assert len(values) == len(prob.objectives) == len(prob.reference_point)
        assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert problems.get_problem("detector").true_hypervolume is None
    with pytest.raises(ValueError):
        problems.get_problem("zdt7")
    with pytest.raises(ValueError):
        problems.get_problem("zdt1", 1)


# --- the toy detector ---------------------------------------------------------------------------

NOMINAL = {
    "depth_x0": 22.0,
    "sampling_fraction": 0.1,
    "cell_size_cm": 2.0,
    "inner_radius_m": 1.5,
    "field_t": 2.0,
}

# parameter -> expected direction of (energy resolution, momentum resolution, cost):
# -1 falls, +1 rises, 0 does not change, when the parameter grows
DIRECTIONS = {
    "depth_x0": (-1, 0, +1),  # less rear leakage; more material
    "sampling_fraction": (-1, 0, +1),  # smaller sampling and noise terms; thicker, more active
    "cell_size_cm": (+1, 0, -1),  # more noise per cluster; fewer channels
    "inner_radius_m": (+1, -1, +1),  # thicker coil; longer lever arm; everything bigger
    "field_t": (+1, -1, +1),  # thicker coil; more bending; stored energy
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_detector_objectives_are_monotone_in_the_expected_directions(name):
    low, high, log = detector.PARAMETERS[name]
    grid = np.geomspace(low, high, 25) if log else np.linspace(low, high, 25)
    rows = np.array([detector.objectives({**NOMINAL, name: float(v)}) for v in grid])
    for k, direction in enumerate(DIRECTIONS[name]):
        steps = np.diff(rows[:, k])
        label = f"{detector.OBJECTIVES[k]} vs {name}"
        if direction == 0:
            assert np.allclose(steps, 0.0), label
        else:
            assert np.all(direction * steps > 0), label


def test_detector_physics_pieces():
    # rear leakage falls with depth and grows with energy (the shower maximum moves back)
    assert detector.leakage_fraction(20.0, 25.0) < detector.leakage_fraction(20.0, 15.0)
    assert detector.leakage_fraction(100.0, 20.0) > detector.leakage_fraction(5.0, 20.0)
    assert (
        0.0 < detector.leakage_fraction(100.0, 35.0) < 0.01 < detector.leakage_fraction(100.0, 10.0)
    )
    # the stack's radiation length lies between lead's and scintillator's
    for f in (0.02, 0.1, 0.5):
        assert detector.PB_X0_CM < detector.effective_x0_cm(f) < detector.SCINT_X0_CM
    # resolution improves with energy; the stochastic term dominates at low energy
    assert detector.relative_energy_resolution(5.0, NOMINAL) > detector.relative_energy_resolution(
        100.0, NOMINAL
    )
    assert all(v > 0 for v in detector.cost_breakdown_mchf(NOMINAL).values())
    # the nominal design is inside the reference box, so the reference point is a useful one
    assert all(
        v < r for v, r in zip(detector.objectives(NOMINAL), detector.REFERENCE_POINT, strict=True)
    )


def test_detector_rejects_designs_outside_the_box():
    with pytest.raises(ValueError):
        detector.objectives({**NOMINAL, "field_t": 10.0})
    with pytest.raises(KeyError):
        detector.objectives({k: v for k, v in NOMINAL.items() if k != "field_t"})


# --- the Optuna steering, in process (no tasklift) ----------------------------------------------


def run_in_process(problem, sampler, budget, batch, seed, n_var=None):
    prob = problems.get_problem(problem, n_var)
    sizes = []

    def evaluate_batch(params, numbers):
        sizes.append(len(params))
        return [prob.evaluate(p) for p in params]

    study = steering.make_study(prob, sampler, seed, batch)
    iterations = steering.ask_tell(study, prob, budget, batch, evaluate_batch)
    baseline = steering.make_study(prob, "random", seed, batch)
    steering.ask_tell(baseline, prob, budget, budget, evaluate_batch)
    result = steering.summarize(
        prob, sampler, steering.completed(study), steering.completed(baseline)
    )
    return result, iterations, sizes


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_ask_tell_in_batches_is_deterministic(sampler):
    first, iterations, sizes = run_in_process("detector", sampler, 25, 10, seed=3)
    again, _, _ = run_in_process("detector", sampler, 25, 10, seed=3)
    other, _, _ = run_in_process("detector", sampler, 25, 10, seed=4)
    assert first == again
    assert first["pareto_front"] != other["pareto_front"]
    assert iterations == 3 and sizes == [10, 10, 5, 25]
    assert first["n_trials"] == first["random_n_trials"] == 25
    assert mutually_non_dominated([tuple(p) for p in first["pareto_front"]])
    assert first["hypervolume"] == pytest.approx(
        hvmod.hypervolume(first["pareto_front"], detector.REFERENCE_POINT)
    )
    json.dumps(first)  # JSON-friendly as it is


def test_summary_ratios_on_a_known_front():
    result, _, _ = run_in_process("zdt1", "nsga2", 40, 10, seed=0, n_var=2)
    assert result["true_hypervolume"] == pytest.approx(1.1 * 1.1 - 1.0 / 3.0)
    assert 0.0 < result["hypervolume_ratio"] <= 1.0
    assert result["hypervolume_ratio"] == pytest.approx(
        result["hypervolume"] / result["true_hypervolume"]
    )
    text = steering.format_summary(result, 10, 4)
    assert "true front" in text and "knee" in text


def test_gp_sampler_explains_missing_torch():
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed")
    with pytest.raises(RuntimeError, match="torch"):
        steering.make_sampler("gp", 0, 10)


# --- end to end, through tasklift ---------------------------------------------------------------

MAIN = EXAMPLE / "main.py"


def test_cli_help(python, script_env):
    out = subprocess.run(
        [python, str(MAIN), "--help"], env=script_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for flag in (
        "--problem",
        "--budget",
        "--batch",
        "--seed",
        "--sampler",
        "--json",
        "--service",
        "--backend",
    ):
        assert flag in out.stdout


@pytest.mark.slow
def test_end_to_end_zdt1_json(python, script_env):
    budget = 40
    cmd = [
        python,
        str(MAIN),
        "--problem", "zdt1",
        "--n-var", "2",
        "--budget", str(budget),
        "--batch", "10",
        "--seed", "0",
        "--sampler", "tpe",
        "--json",
    ]  # fmt: skip
    out = subprocess.run(cmd, env=script_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)  # exactly one JSON object, nothing else on stdout
    for key in (
        "hypervolume",
        "random_hypervolume",
        "true_hypervolume",
        "pareto_front",
        "n_trials",
        "problem",
        "sampler",
        "reference_point",
    ):
        assert key in result
    assert result["problem"] == "zdt1" and result["sampler"] == "tpe"
    assert result["n_trials"] == budget
    assert result["iterations"] == 4
    front = [tuple(p) for p in result["pareto_front"]]
    assert front and all(len(p) == 2 for p in front)
    assert mutually_non_dominated(front)
    assert result["hypervolume"] > 0
    assert result["hypervolume"] == pytest.approx(
        hvmod.hypervolume(front, result["reference_point"])
    )
    assert 0.0 < result["hypervolume"] / result["true_hypervolume"] <= 1.0
    assert result["random_hypervolume"] >= 0.0
