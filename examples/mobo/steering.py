"""Optuna side of the example: samplers, the batched ask-and-tell loop, and the summary.

No tasklift here: the loop takes an ``evaluate_batch`` callable, which ``main.py`` backs with one
tasklift work per batch and the tests back with a plain in-process function.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypervolume import hypervolume, non_dominated_mask
from problems import Problem

SAMPLERS: tuple[str, ...] = ("tpe", "nsga2", "gp", "random")

# evaluate_batch(list of parameter dicts, list of trial numbers) -> list of objective vectors
EvaluateBatch = Callable[[list[dict[str, float]], list[int]], Sequence[Sequence[float]]]


def _optuna() -> Any:
    """Import optuna lazily (jobs never need it) and keep its INFO chatter off stderr."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_sampler(name: str, seed: int, batch: int) -> Any:
    """An Optuna multi-objective sampler, seeded.

    * ``nsga2``: NSGA-II with one generation per batch (population size = batch, at least 4).
    * ``tpe``: multivariate MOTPE; the first batch (or 10 trials) is random start-up, and the
      constant liar keeps trials asked in the same batch apart. In Optuna >= 4 neither option is
      experimental any more.
    * ``gp``: Gaussian-process sampler with log-EHVI (Optuna >= 4.2; needs PyTorch).
    * ``random``: the baseline.
    """
    optuna = _optuna()
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(4, batch), seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            multivariate=True, constant_liar=True, n_startup_trials=max(10, batch), seed=seed
        )
    if name == "gp":
        if importlib.util.find_spec("torch") is None:
            raise RuntimeError("--sampler gp needs PyTorch (pip install torch); try tpe or nsga2")
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=max(10, batch))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


def make_study(problem: Problem, sampler: str, seed: int, batch: int) -> Any:
    """An in-memory study minimising every objective of ``problem``."""
    optuna = _optuna()
    return optuna.create_study(
        directions=["minimize"] * len(problem.objectives),
        sampler=make_sampler(sampler, seed, batch),
        study_name=f"{problem.name}-{sampler}",
    )


def distributions(problem: Problem) -> dict[str, Any]:
    """Optuna distributions for the problem's parameter box."""
    optuna = _optuna()
    return {
        name: optuna.distributions.FloatDistribution(low, high, log=log)
        for name, (low, high, log) in problem.parameters.items()
    }


def ask_batch(study: Any, problem: Problem, n: int) -> list[Any]:
    """Ask ``n`` trials at once (define-and-run style: the search space is fixed)."""
    space = distributions(problem)
    return [study.ask(space) for _ in range(n)]


def tell_batch(study: Any, trials: Sequence[Any], values: Sequence[Sequence[float]]) -> None:
    """Tell the study the objective vectors of ``trials`` (same order)."""
    if len(values) != len(trials):
        raise ValueError(f"{len(trials)} trials but {len(values)} results")
    for trial, value in zip(trials, values, strict=True):
        study.tell(trial, [float(v) for v in value])


def ask_tell(
    study: Any, problem: Problem, budget: int, batch: int, evaluate_batch: EvaluateBatch
) -> int:
    """Run ``budget`` trials in batches of ``batch``: ask a batch, evaluate it, tell it.

    Returns the number of batches (iterations).
    """
    if budget < 1 or batch < 1:
        raise ValueError("budget and batch must be >= 1")
    iterations = 0
    while len(study.trials) < budget:
        trials = ask_batch(study, problem, min(batch, budget - len(study.trials)))
        values = evaluate_batch([t.params for t in trials], [t.number for t in trials])
        tell_batch(study, trials, values)
        iterations += 1
    return iterations


def completed(study: Any) -> tuple[list[dict[str, float]], list[list[float]]]:
    """Parameters and objective vectors of the study's completed trials, in trial order."""
    optuna = _optuna()
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return [dict(t.params) for t in done], [list(t.values) for t in done]


def front_of(
    params: Sequence[dict[str, float]], values: Sequence[Sequence[float]]
) -> tuple[list[list[float]], list[dict[str, float]]]:
    """The distinct Pareto-optimal objective vectors (sorted) and one design for each."""
    if not values:
        return [], []
    arr = np.asarray(values, dtype=float)
    seen: dict[tuple[float, ...], dict[str, float]] = {}
    for i in np.flatnonzero(non_dominated_mask(arr)):
        seen.setdefault(tuple(float(v) for v in arr[i]), dict(params[i]))
    keys = sorted(seen)
    return [list(k) for k in keys], [seen[k] for k in keys]


def summarize(
    problem: Problem,
    sampler: str,
    main: tuple[list[dict[str, float]], list[list[float]]],
    baseline: tuple[list[dict[str, float]], list[list[float]]],
) -> dict[str, Any]:
    """The JSON-friendly result of one run: fronts, hypervolumes, and ratios to the true front."""
    ref = list(problem.reference_point)
    front, designs = front_of(*main)
    random_front, _ = front_of(*baseline)
    hv = hypervolume(front, ref) if front else 0.0
    random_hv = hypervolume(random_front, ref) if random_front else 0.0
    true_hv = problem.true_hypervolume
    return {
        "problem": problem.name,
        "sampler": sampler,
        "objectives": list(problem.objectives),
        "reference_point": ref,
        "n_trials": len(main[1]),
        "hypervolume": hv,
        "random_hypervolume": random_hv,
        "true_hypervolume": true_hv,
        "hypervolume_ratio": None if true_hv is None else hv / true_hv,
        "random_hypervolume_ratio": None if true_hv is None else random_hv / true_hv,
        "pareto_front": front,
        "pareto_params": designs,
        "random_n_trials": len(baseline[1]),
        "random_pareto_size": len(random_front),
    }


def representative(
    front: Sequence[Sequence[float]], reference_point: Sequence[float]
) -> list[tuple[str, int]]:
    """Indices of a few front points worth printing: the best in each objective, and the knee.

    Only points inside the reference box (the ones that count for the hypervolume) are
    considered, unless there are none. The knee is the point closest to the ideal point once
    each objective is scaled to [0, 1] over those points.
    """
    if not front:
        return []
    arr = np.asarray(front, dtype=float)
    candidates = np.flatnonzero(np.all(arr < np.asarray(reference_point, dtype=float), axis=1))
    if len(candidates) == 0:
        candidates = np.arange(len(arr))
    sub = arr[candidates]
    picks = [(f"best {m + 1}", int(candidates[np.argmin(sub[:, m])])) for m in range(arr.shape[1])]
    span = sub.max(axis=0) - sub.min(axis=0)
    span[span == 0] = 1.0
    distance = np.sqrt(np.sum(((sub - sub.min(axis=0)) / span) ** 2, axis=1))
    picks.append(("knee", int(candidates[np.argmin(distance)])))
    return picks


def format_summary(result: dict[str, Any], batch: int, iterations: int) -> str:
    """Human-readable report of ``summarize``'s result."""
    objs = result["objectives"]
    ref = result["reference_point"]
    front = result["pareto_front"]
    inside = sum(all(v < r for v, r in zip(p, ref, strict=True)) for p in front)
    hv, rhv = result["hypervolume"], result["random_hypervolume"]
    gain = f" ({hv / rhv:.3f}x)" if rhv > 0 else ""
    lines = [
        f"problem {result['problem']}: {len(objs)} objectives, all minimised; sampler "
        f"{result['sampler']}, {result['n_trials']} trials in {iterations} batches of <= {batch} "
        "(one tasklift work each)",
        "reference point: " + ", ".join(f"{o} {r:g}" for o, r in zip(objs, ref, strict=True)),
        f"hypervolume: {result['sampler']} {hv:.6g}, random search (same budget) {rhv:.6g}{gain}",
    ]
    if result["true_hypervolume"] is not None:
        lines.append(
            f"true front's hypervolume {result['true_hypervolume']:.6g}: "
            f"{result['sampler']} reaches {result['hypervolume_ratio']:.4f} of it, "
            f"random search {result['random_hypervolume_ratio']:.4f}"
        )
    lines.append(
        f"Pareto front: {len(front)} points, {inside} inside the reference box "
        f"(random search's front: {result['random_pareto_size']} points)"
    )
    picks = representative(front, ref)
    if picks:
        lines.append("representative designs (best k: best in objective k, inside the box):")
        params = list(result["pareto_params"][0])
        rows = [(o, [front[i][m] for _, i in picks]) for m, o in enumerate(objs)]
        if len(params) <= 10:
            rows += [(p, [result["pareto_params"][i][p] for _, i in picks]) for p in params]
        width = max(len(name) for name, _ in rows)
        lines.append("  " + " " * width + "".join(f"{label:>11}" for label, _ in picks))
        for name, values in rows:
            lines.append(f"  {name:<{width}}" + "".join(f"{v:>11.4g}" for v in values))
    return "\n".join(lines)
