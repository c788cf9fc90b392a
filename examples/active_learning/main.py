"""Active learning of an excursion set with tasklift: where does an expensive 2-D function
exceed a threshold?

Each evaluation of the function is one tasklift job (``evaluate``); each active-learning
iteration is one work: a batch of points chosen by a Gaussian process and an acquisition that
targets the uncertain part of the boundary (see ``excursion.py``).  A random-sampling baseline with
the same evaluation budget runs in the same workflow, its points evaluated as jobs too.

    python examples/active_learning/main.py --function significance --budget 40 --batch 8

``--json`` prints one JSON object (``accuracy``, ``random_accuracy``, ``n_evaluations``,
``iterations``, ``function``, ``threshold``, ...) instead of the human summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from excursion import (
    ACQUISITIONS,
    active_learning,
    classification_accuracy,
    fit_history,
    predict_mean,
    random_points,
    unit_grid,
)
from functions import FUNCTIONS, evaluate_point, get_function

from tasklift import work, workflow


@work(map_results=False)
def evaluate(function: str, x: float, y: float, eval_seconds: float = 0.0) -> float:
    """One expensive evaluation (a job): the test function ``function`` at ``(x, y)``.

    ``eval_seconds`` makes the job sleep that long first, to mimic a costly simulation.
    """
    if eval_seconds > 0:
        time.sleep(eval_seconds)
    return evaluate_point(function, x, y)


def _jobs(function: str, unit_points: np.ndarray, eval_seconds: float) -> list[dict[str, Any]]:
    """The jobs' kwargs for points of the unit square (mapped to the function's domain)."""
    fn = get_function(function)
    points = fn.from_unit(unit_points)
    jobs: list[dict[str, Any]] = [{"x": float(px), "y": float(py)} for px, py in points]
    if eval_seconds > 0:
        for job in jobs:
            job["eval_seconds"] = eval_seconds
    return jobs


@workflow
def excursion_campaign(
    function: str = "significance",
    budget: int = 40,
    batch: int = 8,
    seed: int = 0,
    acquisition: str = "sur",
    grid_size: int = 100,
    eval_seconds: float = 0.0,
) -> dict[str, Any]:
    """Learn ``{f > threshold}`` with ``budget`` jobs, and with ``budget`` random jobs to compare.

    Returns a JSON-friendly summary (see the module docstring and README).
    """
    fn = get_function(function)
    start = time.perf_counter()
    # the baseline's points do not depend on anything, so submit them first without waiting:
    # they run while the active learner fits its GP and waits on its own batches
    baseline = evaluate(
        function=function,
        group_kwargs=_jobs(function, random_points(budget, seed), eval_seconds),
        return_work=True,
    )

    # the truth on a fine grid is for scoring only (cheap here; unknown in a real search)
    grid = unit_grid(grid_size)
    physical = fn.from_unit(grid)
    truth = fn(physical[:, 0], physical[:, 1]) > fn.threshold

    def evaluate_batch(unit_points: np.ndarray) -> list[float]:
        # one work per iteration, one job per point, blocks until the batch is back
        return evaluate(function=function, group_kwargs=_jobs(function, unit_points, eval_seconds))

    history = active_learning(
        evaluate_batch,
        fn.threshold,
        budget=budget,
        batch=batch,
        seed=seed,
        acquisition=acquisition,
        grid=grid,
        truth=truth,
    )
    # outside a running workflow (a plain call, e.g. in a test) the call above already returned
    # the list of values instead of a Work handle
    random_values = baseline.results() if hasattr(baseline, "results") else baseline
    random_history = fit_history(random_points(budget, seed), random_values, seed)
    random_accuracy = classification_accuracy(random_history.gp, grid, truth, fn.threshold)
    estimate = predict_mean(history.gp, grid) > fn.threshold
    return {
        "function": function,
        "threshold": fn.threshold,
        "accuracy": history.accuracies[-1],
        "random_accuracy": random_accuracy,
        "n_evaluations": len(history.y),
        "iterations": history.iterations,
        "random_n_evaluations": len(random_values),
        "evaluations_per_iteration": np.cumsum(history.batch_sizes).tolist(),
        "accuracy_per_iteration": history.accuracies,
        "true_fraction_inside": float(truth.mean()),
        "estimated_fraction_inside": float(estimate.mean()),
        "budget": budget,
        "batch": batch,
        "seed": seed,
        "acquisition": acquisition,
        "grid_size": grid_size,
        "workflow_seconds": time.perf_counter() - start,
        "points": fn.from_unit(history.x).tolist(),
        "values": history.y.tolist(),
        "map": ascii_map(truth, estimate, grid_size, history.x),
    }


def ascii_map(
    truth: np.ndarray, estimate: np.ndarray, grid_size: int, points: np.ndarray, width: int = 50
) -> list[str]:
    """Rows of a text picture, top row = largest y: ``#`` inside (correct), ``.`` outside
    (correct), ``x`` misclassified, ``o`` an evaluated point.
    """
    height = max(1, width // 2)
    cols = np.linspace(0, grid_size - 1, width).round().astype(int)
    rows = np.linspace(0, grid_size - 1, height).round().astype(int)
    t = truth.reshape(grid_size, grid_size)
    e = estimate.reshape(grid_size, grid_size)
    canvas = [
        ["x" if t[r, c] != e[r, c] else ("#" if t[r, c] else ".") for c in cols] for r in rows
    ]
    for px, py in points:
        canvas[round(py * (height - 1))][round(px * (width - 1))] = "o"
    return ["".join(row) for row in reversed(canvas)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists it)."""
    parser = argparse.ArgumentParser(
        description="Active learning of an excursion set {f > threshold} with a Gaussian "
        "process, each evaluation a tasklift job; compared with random sampling.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--function", default="significance", choices=sorted(FUNCTIONS), help="test function"
    )
    parser.add_argument("--budget", type=int, default=40, help="evaluations (jobs) per method")
    parser.add_argument(
        "--batch", type=int, default=8, help="points per iteration (the first is the design)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of designs and candidates")
    parser.add_argument(
        "--acquisition", default="sur", choices=ACQUISITIONS, help="how batches are chosen"
    )
    parser.add_argument(
        "--grid", type=int, default=100, help="accuracy is scored on a GRID x GRID grid"
    )
    parser.add_argument(
        "--eval-seconds",
        type=float,
        default=0.0,
        help="sleep this long in each job, to mimic an expensive simulation",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--service", default="local", help="tasklift service ('local' or URL)")
    parser.add_argument("--backend", default="local", help="tasklift backend for the jobs")
    args = parser.parse_args(argv)
    if args.budget < 2:
        parser.error("--budget must be at least 2")
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.grid < 2:
        parser.error("--grid must be at least 2")
    if args.eval_seconds < 0:
        parser.error("--eval-seconds must be >= 0")
    return args


def summary_text(result: dict[str, Any], wall: float) -> str:
    """The human-readable report."""
    fn = get_function(result["function"])
    n_grid = result["grid_size"] ** 2
    lines = [
        f"excursion set of {fn.name!r}: {fn.description}",
        f"  {fn.labels[0]} in {list(fn.bounds[0])}, {fn.labels[1]} in {list(fn.bounds[1])}, "
        f"threshold {result['threshold']:.4g}",
        f"  true set covers {result['true_fraction_inside']:.1%} of the domain, "
        f"estimate {result['estimated_fraction_inside']:.1%}",
        "",
        f"  {'evaluations':>11}  {'accuracy':>8}  (active learning, {result['acquisition']}, "
        f"batch {result['batch']})",
    ]
    for n, acc in zip(
        result["evaluations_per_iteration"], result["accuracy_per_iteration"], strict=True
    ):
        lines.append(f"  {n:>11}  {acc:>8.4f}")
    acc, racc = result["accuracy"], result["random_accuracy"]
    lines += [
        "",
        f"  active learning: accuracy {acc:.4f} ({round((1 - acc) * n_grid)} of {n_grid} grid "
        f"points wrong) with {result['n_evaluations']} jobs in {result['iterations']} iterations",
        f"  random sampling: accuracy {racc:.4f} ({round((1 - racc) * n_grid)} wrong) with "
        f"{result['random_n_evaluations']} jobs",
        "",
        "  map (# inside, . outside, x misclassified, o evaluated point; "
        f"{fn.labels[0]} across, {fn.labels[1]} up):",
        *("    " + row for row in result["map"]),
        "",
        f"  wall time {wall:.1f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the campaign and print the summary (or JSON)."""
    from tasklift import Workflow

    args = parse_args(argv)
    start = time.perf_counter()
    result = Workflow(
        func=excursion_campaign,
        service=args.service,
        backend=args.backend,
        name=f"active-learning-{args.function}",
    ).run(
        function=args.function,
        budget=args.budget,
        batch=args.batch,
        seed=args.seed,
        acquisition=args.acquisition,
        grid_size=args.grid,
        eval_seconds=args.eval_seconds,
    )
    wall = time.perf_counter() - start
    if args.json:
        out = {k: v for k, v in result.items() if k != "map"}
        out["wall_seconds"] = wall
        print(json.dumps(out))
    else:
        print(summary_text(result, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
