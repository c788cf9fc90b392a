"""Multi-objective optimisation of a toy detector design with Optuna, each trial a tasklift job.

    python examples/mobo/main.py                          # toy detector, TPE, 200 trials
    python examples/mobo/main.py --problem zdt1 --json    # known front: hypervolume ratio

Each iteration asks ``--batch`` trials of an Optuna multi-objective sampler, evaluates them as ONE
tasklift work (one job per trial), and tells the results back. A random-search baseline with the
same budget runs in the same workflow, as one more work submitted up front without blocking,
so its jobs fill the workers while the optimiser steers. See README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from problems import DEFAULT_N_VAR, PROBLEM_NAMES, get_problem
from steering import (
    SAMPLERS,
    ask_batch,
    ask_tell,
    completed,
    format_summary,
    make_study,
    summarize,
    tell_batch,
)

from tasklift import Workflow, work, workflow


@work(map_results=False)
def evaluate_design(
    problem: str,
    params: dict[str, float],
    n_var: int | None = None,
    trial: int = 0,
    study: str = "",
) -> list[float]:
    """One job: the objective vector of one design.

    ``trial`` and ``study`` are not used by the calculation; they make every job's kwargs (and
    so its key) distinct, so two trials that happen to propose the same point are two jobs.
    """
    return get_problem(problem, n_var).evaluate(params)


@workflow
def mobo(
    problem: str, n_var: int | None, budget: int, batch: int, seed: int, sampler: str
) -> dict[str, Any]:
    """Optimise ``problem`` with ``sampler`` and, for comparison, random search; same budget."""
    prob = get_problem(problem, n_var)

    def jobs(params: list[dict[str, float]], numbers: list[int], tag: str) -> list[dict[str, Any]]:
        return [
            {"params": p, "trial": n, "study": tag} for p, n in zip(params, numbers, strict=True)
        ]

    # Random search needs no feedback: ask all its trials now and submit them as one work that
    # runs while the optimiser below steers (return_work=True: a handle, no blocking).
    baseline = make_study(prob, "random", seed, batch)
    baseline_trials = ask_batch(baseline, prob, budget)
    baseline_work = evaluate_design(
        problem=problem,
        n_var=n_var,
        group_kwargs=jobs(
            [t.params for t in baseline_trials], [t.number for t in baseline_trials], "random"
        ),
        return_work=True,
    )

    # The optimiser: ask a batch, evaluate it as one work (blocks until all its jobs are done),
    # tell, repeat.
    study = make_study(prob, sampler, seed, batch)

    def evaluate_batch(params: list[dict[str, float]], numbers: list[int]) -> list[list[float]]:
        return evaluate_design(
            problem=problem, n_var=n_var, group_kwargs=jobs(params, numbers, sampler)
        )

    iterations = ask_tell(study, prob, budget, batch, evaluate_batch)

    tell_batch(baseline, baseline_trials, baseline_work.results())
    result = summarize(prob, sampler, completed(study), completed(baseline))
    result.update(budget=budget, batch=batch, seed=seed, iterations=iterations, n_var=n_var)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        description="Multi-objective optimisation (Optuna, ask-and-tell in batches) of a toy "
        "detector design or a test problem with a known Pareto front; every trial is a "
        "tasklift job, every batch one work.",
    )
    parser.add_argument(
        "--problem",
        choices=PROBLEM_NAMES,
        default="detector",
        help="detector: 5 design parameters, 3 objectives; zdt1 (2 objectives) and dtlz2 "
        "(3 objectives) have known fronts (default: %(default)s)",
    )
    parser.add_argument(
        "--n-var",
        type=int,
        default=None,
        help="number of variables of zdt1/dtlz2 (default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_N_VAR.items())
        + "; the textbook sizes are 30 and 12)",
    )
    parser.add_argument(
        "--budget", type=int, default=200, help="trials per sampler (default: %(default)s)"
    )
    parser.add_argument(
        "--batch", type=int, default=20, help="trials per work (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default: %(default)s)")
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="tpe",
        help="tpe: multivariate MOTPE (Bayesian); nsga2: NSGA-II, one generation per batch; "
        "gp: Gaussian process + log-EHVI (needs torch); random (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print exactly one JSON object on stdout"
    )
    parser.add_argument(
        "--service", default="local", help="tasklift service URL or 'local' (default)"
    )
    parser.add_argument(
        "--backend", default="local", help="where jobs run: local (default), dask, slurm, ..."
    )
    args = parser.parse_args(argv)
    if args.budget < 1:
        parser.error("--budget must be >= 1")
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    try:
        get_problem(args.problem, args.n_var)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the workflow and report."""
    args = parse_args(argv)
    start = time.perf_counter()
    result = Workflow(
        func=mobo, service=args.service, backend=args.backend, name=f"mobo-{args.problem}"
    ).run(
        problem=args.problem,
        n_var=args.n_var,
        budget=args.budget,
        batch=args.batch,
        seed=args.seed,
        sampler=args.sampler,
    )
    elapsed = time.perf_counter() - start
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        print(format_summary(result, args.batch, result["iterations"]))
        print(f"wall time {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
