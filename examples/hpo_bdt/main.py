"""Bayesian optimization of a BDT's hyperparameters, one tasklift work per iteration.

The use case of the PanDA/iDDS Function-as-a-Task paper (ACAT 2024): the steering loop runs
here, ``bayes_opt`` proposes a batch of xgboost hyperparameter points per iteration, and each
point is trained and scored (validation ROC AUC) as one job of a single tasklift work.

    python examples/hpo_bdt/main.py                               # quick default
    python examples/hpo_bdt/main.py --iterations 10 --points 20   # the paper's set-up
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from typing import Any

import numpy as np
import xgboost as xgb
from bayes_opt import BayesianOptimization, TargetSpace
from bayes_opt.acquisition import UpperConfidenceBound
from bayes_opt.exception import NotUniqueError
from dataset import load_dataset
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import Matern, WhiteKernel
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from tasklift import Workflow, work, workflow

# Search space. Bounds have at most 4 decimals, so rounding suggestions to 4 decimals keeps
# them inside. ``max_depth`` (2..10) is searched as a float and rounded to the nearest int
# before a job runs (see INT_PARAMS); the bounds reach half a unit beyond 2 and 10 so that
# every depth gets the same share of the space. bayes_opt's typed integer parameters would
# warn that they are "experimental" and switch its acquisition maximizer to differential
# evolution, which is much slower.
PBOUNDS: dict[str, tuple[float, float]] = {
    "eta": (0.01, 0.5),
    "max_depth": (1.5, 10.5),
    "subsample": (0.5, 1.0),
    "colsample_bytree": (0.3, 1.0),
    "min_child_weight": (0.1, 20.0),
    "gamma": (0.0, 5.0),
    "alpha": (0.0, 5.0),
}
KAPPA = 2.576  # UCB exploration weight (bayes_opt's default)
INT_PARAMS = frozenset({"max_depth"})
NUM_BOOST_ROUND = 100

DEFAULT_ITERATIONS = 5
DEFAULT_POINTS = 8
DEFAULT_EVENTS = 40_000


@functools.lru_cache(maxsize=2)
def _dmatrices(n_events: int, seed: int) -> tuple[xgb.DMatrix, xgb.DMatrix, np.ndarray]:
    """Train and validation DMatrix for a dataset; cached, workers are persistent."""
    data = load_dataset(n_events, seed)
    dtrain = xgb.DMatrix(data.x_train, label=data.y_train, nthread=1)
    dval = xgb.DMatrix(data.x_val, nthread=1)
    return dtrain, dval, data.y_val


# min_success: a crashed training (e.g. out of memory on a worker) must not end the campaign;
# the optimizer simply learns nothing from that point. Half the batch must succeed.
@work(map_results=True, min_success=0.5)
def train_bdt(
    eta: float = 0.3,
    max_depth: int = 6,
    subsample: float = 1.0,
    colsample_bytree: float = 1.0,
    min_child_weight: float = 1.0,
    gamma: float = 0.0,
    alpha: float = 0.0,
    n_events: int = DEFAULT_EVENTS,
    seed: int = 0,
    num_boost_round: int = NUM_BOOST_ROUND,
) -> float:
    """Train one BDT with one hyperparameter point; return its validation ROC AUC.

    The defaults are xgboost's own, so ``train_bdt()`` scores an untuned BDT. The dataset is
    generated in the job (from ``seed``) and cached, so a worker generates it only once.
    """
    dtrain, dval, y_val = _dmatrices(int(n_events), int(seed))
    params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "nthread": 1,  # two worker processes share two cores
        "seed": int(seed),
        "verbosity": 0,
        "eta": float(eta),
        "max_depth": int(max_depth),
        "subsample": float(subsample),
        "colsample_bytree": float(colsample_bytree),
        "min_child_weight": float(min_child_weight),
        "gamma": float(gamma),
        "alpha": float(alpha),
    }
    booster = xgb.train(params, dtrain, num_boost_round=int(num_boost_round))
    return float(roc_auc_score(y_val, booster.predict(dval)))


def _job_params(params: dict[str, Any]) -> dict[str, Any]:
    """Plain-Python, JSON-friendly kwargs for a job: integers rounded to int, floats to 4 dp.

    The rounded point is what the job evaluates, so it is also what gets registered: the GP
    learns from the exact inputs that produced each target.
    """
    return {
        name: round(float(params[name])) if name in INT_PARAMS else round(float(params[name]), 4)
        for name in PBOUNDS
    }


def make_optimizer(seed: int) -> BayesianOptimization:
    """The campaign's optimizer: holds the real observations (``register``, ``max``, ``res``).

    Its own ``suggest()`` proposes one point at a time; batches come from ``suggest_batch``.
    """
    return BayesianOptimization(
        f=None,
        pbounds=PBOUNDS,
        acquisition_function=UpperConfidenceBound(kappa=KAPPA),
        random_state=seed,
        verbose=0,
    )


def _make_gp(seed: int) -> GaussianProcessRegressor:
    """bayes_opt's surrogate (Matern 5/2, normalized targets) with two changes.

    One length scale per hyperparameter instead of a shared one: the ranges differ by 40x
    (eta spans 0.49, min_child_weight 19.9), so a single isotropic length scale would make
    the GP blind to eta, the most important one. And a fitted white-noise term: the AUCs of
    neighbouring points scatter (finite validation set, row and column subsampling), and
    interpolating that scatter exactly would make the model chase noise.
    """
    widths = np.array([high - low for low, high in PBOUNDS.values()])
    kernel = Matern(nu=2.5, length_scale=widths, length_scale_bounds=(1e-3, 1e3))
    kernel += WhiteKernel(noise_level=1e-2, noise_level_bounds=(1e-6, 1.0))
    return GaussianProcessRegressor(
        kernel=kernel, alpha=1e-6, normalize_y=True, n_restarts_optimizer=5, random_state=seed
    )


def suggest_batch(optimizer: BayesianOptimization, n: int, seed: int) -> list[dict[str, Any]]:
    """Propose ``n`` distinct points to evaluate in parallel, by "constant liar".

    bayes_opt's ``suggest()`` returns one point: the argmax of the acquisition, which does not
    move until a result is registered, so calling it ``n`` times gives ``n`` copies. The
    constant liar heuristic (Ginsbourger et al., 2010) fills the batch sequentially: after
    each suggestion, a pessimistic fake result (the worst AUC seen so far) is registered at
    that point, so the GP's mean drops and its uncertainty collapses there and the next argmax
    of UCB moves elsewhere. The batch spreads out while still following the model, and each
    pending point repels the next ones. We prefer it to varying kappa/xi across the batch,
    which does not guarantee distinct points (low-kappa members pile onto the same optimum).

    The lies go into a scratch ``TargetSpace``; ``optimizer`` keeps only real results. The
    GP's kernel hyperparameters are fitted once per batch on the real data and then frozen
    (refitting them to lies is meaningless and costly), and the acquisition maximizer polishes
    the best of 10,000 random candidates with one L-BFGS-B run instead of bayes_opt's ten:
    on this flat, noisy surface each run takes ~200 GP predictions, and steering time is
    time the workers sit idle.

    With no observations yet, the batch is a random sample of the space (initial design).
    A suggestion that collides with a known point after rounding is replaced by a random one.
    """
    if len(optimizer.space) == 0:
        batch: list[dict[str, Any]] = []
        while len(batch) < n:
            p = _job_params(optimizer.random_sample(1)[0])
            if p not in batch:
                batch.append(p)
        return batch

    # The GP's matrices are at most a few hundred rows: multi-threaded BLAS gains nothing
    # there, and next to busy workers its spinning threads made each batch ~4x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        return _constant_liar(optimizer, n, seed)


def _constant_liar(optimizer: BayesianOptimization, n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.RandomState(seed)
    space = TargetSpace(None, PBOUNDS, random_state=rng)
    for observation in optimizer.res:
        space.register(observation["params"], observation["target"])
    lie = float(np.min(space.target))
    gp = _make_gp(seed)
    acquisition = UpperConfidenceBound(kappa=KAPPA)
    batch: list[dict[str, Any]] = []
    while len(batch) < n:
        x = acquisition.suggest(
            gp=gp, target_space=space, n_random=10_000, n_smart=1, fit_gp=True, random_state=rng
        )
        if not batch:  # freeze the hyperparameters fitted on the real observations
            gp.set_params(kernel=gp.kernel_, optimizer=None)
        p = _job_params(space.array_to_params(x))
        try:
            space.register(p, lie)
        except NotUniqueError:
            p = _job_params(space.array_to_params(space.random_sample(random_state=rng)))
            try:
                space.register(p, lie)
            except NotUniqueError:
                continue
        batch.append(p)
    return batch


@workflow
def optimize(
    iterations: int = DEFAULT_ITERATIONS,
    points: int = DEFAULT_POINTS,
    n_events: int = DEFAULT_EVENTS,
    seed: int = 0,
    report: bool = False,
) -> dict[str, Any]:
    """The steering loop: suggest a batch, evaluate it as one work, register, repeat."""
    optimizer = make_optimizer(seed)
    history: list[dict[str, Any]] = []
    n_jobs = n_failed = 0
    for it in range(1, iterations + 1):
        batch = suggest_batch(optimizer, points, seed=seed * 1_000 + it)
        results = train_bdt(n_events=n_events, seed=seed, group_kwargs=batch)
        targets = []
        for p in batch:
            try:
                target = float(results.get_result(args=p))
            except KeyError:  # the job failed: it is in results.failures
                continue
            targets.append(target)
            optimizer.register(params=p, target=target)
        for failure in results.failures:
            print(f"job failed, point skipped: {failure}", file=sys.stderr)
        n_jobs += len(batch)
        n_failed += len(results.failures)
        best = optimizer.max
        assert best is not None
        entry = {
            "iteration": it,
            "batch_best": max(targets),
            "best_so_far": float(best["target"]),
        }
        history.append(entry)
        if report:
            print(
                f"iteration {it:>2}/{iterations}: {len(batch)} jobs, "
                f"best in batch {entry['batch_best']:.5f}, best so far {entry['best_so_far']:.5f}",
                flush=True,
            )
    best = optimizer.max
    assert best is not None
    return {
        "best_target": float(best["target"]),
        "best_params": _job_params(best["params"]),
        "n_jobs": n_jobs,
        "n_failed": n_failed,
        "iterations": iterations,
        "points": points,
        "n_events": n_events,
        "seed": seed,
        "history": history,
    }


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Bayesian optimization (bayes_opt) of an xgboost BDT's hyperparameters on a "
            "generated signal-vs-background dataset; each iteration evaluates a batch of "
            "points as one tasklift work."
        )
    )
    parser.add_argument(
        "--iterations", type=int, default=DEFAULT_ITERATIONS,
        help=f"optimization iterations, one work each (default {DEFAULT_ITERATIONS})",
    )  # fmt: skip
    parser.add_argument(
        "--points", type=int, default=DEFAULT_POINTS,
        help=f"points (jobs) per iteration (default {DEFAULT_POINTS})",
    )  # fmt: skip
    parser.add_argument(
        "--n-events", type=int, default=DEFAULT_EVENTS,
        help=f"events generated, 70%% train / 30%% validation (default {DEFAULT_EVENTS})",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of the dataset, the BDTs and the optimizer (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout, nothing else"
    )
    parser.add_argument(
        "--service", default="local", help="tasklift service: 'local' (default) or a URL"
    )
    parser.add_argument(
        "--backend", default=None,
        help="tasklift backend: local, dask, slurm or a configured name (default: "
        "TASKLIFT_BACKEND, else 'local')",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for flag in ("iterations", "points", "n_events"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.n_events < 100:
        parser.error("--n-events must be at least 100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not args.json:
        print(
            f"HPO of an xgboost BDT: {args.iterations} iterations x {args.points} points, "
            f"{args.n_events} events, seed {args.seed}",
            flush=True,
        )
    start = time.perf_counter()
    result = Workflow(func=optimize, service=args.service, backend=args.backend).run(
        iterations=args.iterations,
        points=args.points,
        n_events=args.n_events,
        seed=args.seed,
        report=not args.json,
    )
    result["wall_s"] = round(time.perf_counter() - start, 2)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"best validation AUC {result['best_target']:.5f} "
        f"({result['n_jobs']} jobs in {result['wall_s']:.1f} s)"
    )
    print("best hyperparameters:")
    for name, value in result["best_params"].items():
        print(f"  {name:<17} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
