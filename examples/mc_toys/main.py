"""CLs upper limit of a counting experiment from Monte-Carlo toys, by iterative grid scans.

Each job throws one batch of toys at one signal strength mu; the workflow scans a coarse grid,
then refines around the CLs = 1 - CL crossing, each iteration's grid chosen from the previous
result, until the limit's statistical uncertainty is below ``--precision``.

    python examples/mc_toys/main.py --n-obs 5 --background 3.0 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from typing import Any

import cls as stats
import numpy as np

from tasklift import Workflow, work, workflow

# Refinement places two points at mu* -+ DESIGN_OFFSET * precision (at most MAX_OFFSET) and
# fits ln CLs over a window of FIT_WINDOW times that offset: wide enough that the slope is well
# measured, narrow enough that the curvature of ln CLs costs far less than the precision.
DESIGN_OFFSET = 8.0
MAX_OFFSET = 0.4
FIT_WINDOW = 1.6
# Aim below the requested precision so that one more iteration usually suffices.
SIGMA_SAFETY = 0.8
MAX_BATCHES_PER_POINT = 64


# --------------------------------------------------------------------------- the job


def toy_seed(
    seed: int, n_obs: int, background: float, mu: float, batch: int
) -> np.random.SeedSequence:
    """Return the SeedSequence of one batch: sha256 of the canonical JSON of its inputs."""
    text = json.dumps(
        {"background": background, "batch": batch, "mu": mu, "n_obs": n_obs, "seed": seed},
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(text.encode()).digest()
    return np.random.SeedSequence(int.from_bytes(digest[:16], "big"))


@work
def throw_toys(
    mu: float, batch: int, n_obs: int, background: float, toys: int, seed: int = 0
) -> dict[str, Any]:
    """Throw one batch of toys at signal strength ``mu``; return the passing counts (small JSON).

    The random stream depends only on (seed, n_obs, background, mu, batch): the same job gives
    the same counts on any machine, and batch indices 0, 1, 2, ... give independent streams.
    """
    seq_sb, seq_b = toy_seed(seed, n_obs, background, mu, batch).spawn(2)
    counts = stats.count_toys(
        mu, n_obs, background, toys, np.random.default_rng(seq_sb), np.random.default_rng(seq_b)
    )
    return {"mu": mu, "batch": batch, **counts}


# --------------------------------------------------------------------------- planning (pure)


def snap(mu: float, quantum: float) -> float:
    """Round ``mu`` to a multiple of ``quantum`` with a short canonical repr."""
    return float(round(round(mu / quantum) * quantum, 12))


def quantum_for(precision: float) -> float:
    """Grid resolution: a power of ten at most a quarter of the precision."""
    return 10.0 ** math.floor(math.log10(precision / 4.0))


def initial_grid(n_obs: int, background: float, points: int, quantum: float) -> list[float]:
    """A coarse grid on (0, mu_hi], mu_hi a generous guess above the limit (extended if short)."""
    mu_hi = max(n_obs - background, 0.0) + 3.0 + 3.0 * math.sqrt(n_obs + 1.0)
    return sorted({snap(x, quantum) for x in np.linspace(mu_hi / points, mu_hi, points)})


def design_offset(precision: float) -> float:
    """Distance of the two refinement points from the current crossing estimate."""
    return min(DESIGN_OFFSET * precision, MAX_OFFSET)


def fit_half_width(precision: float) -> float:
    """Half-width of the window of the local ln CLs fit."""
    return FIT_WINDOW * design_offset(precision)


def converged(crossing: stats.Crossing | None, precision: float) -> bool:
    """A fitted crossing, points on both sides, a well-measured slope, sigma <= precision."""
    return (
        crossing is not None
        and crossing.method == "fit"
        and crossing.below >= 1
        and crossing.above >= 1
        and abs(crossing.slope) >= 5.0 * crossing.slope_err
        and crossing.sigma <= precision
    )


def _batches_for(n_target: int, have: int, toys: int, have_batches: int) -> int:
    need = max(0, math.ceil((n_target - have) / toys))
    return min(need, max(4, 4 * have_batches), MAX_BATCHES_PER_POINT)


def next_plan(
    points: list[stats.ScanPoint],
    crossing: stats.Crossing | None,
    batches: dict[float, int],
    *,
    alpha: float,
    precision: float,
    toys: int,
    grid_points: int,
) -> dict[float, int]:
    """Return the next iteration's grid: {mu: number of new batches}.

    No crossing yet: extend the grid up (every CLs above alpha) or down towards 0 (all below).
    Otherwise: two points at mu* -+ offset (reusing scan points close to those), each brought to
    the toys that the target uncertainty needs (growth capped per iteration); if they already
    have them, scale their toys by (sigma / target)^2.
    """
    quantum = quantum_for(precision)
    plan: dict[float, int] = {}
    for p in points:  # CLs undefined (no b-only toy passed): double its toys
        if math.isnan(p.cls):
            plan[p.mu] = min(max(1, batches[p.mu]), MAX_BATCHES_PER_POINT)
    defined = sorted((p for p in points if not math.isnan(p.cls)), key=lambda p: p.mu)
    if crossing is None:
        if not defined:
            return plan
        k = max(2, grid_points // 2)
        if all(p.cls >= alpha for p in defined):
            top = defined[-1].mu
            new = np.linspace(top, 2.0 * top, k + 1)[1:]
        else:  # CLs(0) = 1 exactly, so the crossing lies below the lowest point
            new = np.linspace(0.0, defined[0].mu, k + 1)[1:-1]
        for mu in new:
            m = snap(float(mu), quantum)
            if m > 0 and m not in batches:
                plan[m] = 1
        return plan

    d = design_offset(precision)
    target = SIGMA_SAFETY * precision
    n_req = stats.toys_for_sigma(crossing.slope, crossing.var_per_toy, target)
    toys_at = {p.mu: p.n_sb for p in points}
    design: list[float] = []
    for want in (crossing.mu - d, crossing.mu + d):
        if want <= 0:
            want = crossing.mu / 2.0
        near = [m for m in batches if abs(m - want) <= d / 3.0]
        mu = min(near, key=lambda m: abs(m - want)) if near else snap(want, quantum)
        if mu <= 0 or mu in design:
            continue
        design.append(mu)
        have_b = batches.get(mu, 0)
        nb = _batches_for(n_req, toys_at.get(mu, 0), toys, have_b)
        plan[mu] = max(nb, 1 if have_b == 0 else 0)
    if not any(plan.get(mu, 0) for mu in design):
        # the design points have the planned toys, yet sigma is too large: scale them up
        factor = max((crossing.sigma / target) ** 2 - 1.0, 0.0)
        for mu in design:
            nb = math.ceil(toys_at.get(mu, 0) * factor / toys)
            plan[mu] = min(max(nb, 1), max(4, 4 * batches.get(mu, 0)), MAX_BATCHES_PER_POINT)
    return {m: nb for m, nb in plan.items() if nb > 0}


# --------------------------------------------------------------------------- the workflow


@workflow
def cls_limit(
    n_obs: int,
    background: float,
    cl: float = 0.95,
    toys_per_job: int = 50_000,
    precision: float = 0.01,
    seed: int = 0,
    max_iterations: int = 12,
    grid_points: int = 8,
    verbose: bool = False,
) -> dict[str, Any]:
    """Scan mu until the toy CLs limit is known to ``precision``; return the summary dict."""
    alpha = 1.0 - cl
    quantum = quantum_for(precision)
    counts: dict[float, dict[str, int]] = {}
    plan = {mu: 1 for mu in initial_grid(n_obs, background, grid_points, quantum)}
    crossing: stats.Crossing | None = None
    done = False
    n_jobs = 0
    iteration = 0
    for iteration in range(1, max_iterations + 1):
        jobs = []
        for mu, nb in sorted(plan.items()):
            start = counts.get(mu, {}).get("batches", 0)
            jobs.extend({"mu": mu, "batch": start + i} for i in range(nb))
        results = throw_toys(
            n_obs=n_obs, background=background, toys=toys_per_job, seed=seed, group_kwargs=jobs
        )
        n_jobs += len(jobs)
        for r in results:
            c = counts.setdefault(r["mu"], {"k_sb": 0, "n_sb": 0, "k_b": 0, "n_b": 0, "batches": 0})
            for key in ("k_sb", "n_sb", "k_b", "n_b"):
                c[key] += r[key]
            c["batches"] += 1
        points = [
            stats.scan_point(mu, c["k_sb"], c["n_sb"], c["k_b"], c["n_b"])
            for mu, c in sorted(counts.items())
        ]
        crossing = stats.locate_crossing(points, alpha, fit_half_width(precision))
        if verbose:
            _report_iteration(iteration, len(jobs), crossing)
        if converged(crossing, precision):
            done = True
            break
        plan = next_plan(
            points,
            crossing,
            {mu: c["batches"] for mu, c in counts.items()},
            alpha=alpha,
            precision=precision,
            toys=toys_per_job,
            grid_points=grid_points,
        )
        if not plan:
            break

    scan = [
        {
            "mu": p.mu,
            "cls": _finite(p.cls),
            "cls_err": _finite(p.cls_err),
            "n_toys": p.n_sb + p.n_b,
        }
        for p in points
    ]
    return {
        "upper_limit": None if crossing is None else crossing.mu,
        "uncertainty": None if crossing is None else crossing.sigma,
        "exact_upper_limit": stats.upper_limit_exact(n_obs, background, cl),
        "converged": done,
        "n_toys": sum(c["n_sb"] + c["n_b"] for c in counts.values()),
        "n_jobs": n_jobs,
        "iterations": iteration,
        "method": None if crossing is None else crossing.method,
        "window": None if crossing is None else list(crossing.window),
        "scan": scan,
        "n_obs": n_obs,
        "background": background,
        "cl": cl,
        "precision": precision,
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _report_iteration(iteration: int, n_jobs: int, crossing: stats.Crossing | None) -> None:
    if crossing is None:
        msg = "no crossing yet"
    else:
        msg = (
            f"limit {crossing.mu:.4f} +- {crossing.sigma:.4f} "
            f"({crossing.method} over mu {crossing.window[0]:g}..{crossing.window[1]:g})"
        )
    print(f"iteration {iteration:2d}: {n_jobs:3d} jobs, {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="CLs upper limit on a signal strength from Monte-Carlo toys "
        "(one counting bin, n ~ Poisson(mu + b)), by iterative grid scans run as tasklift jobs.",
    )
    p.add_argument("--n-obs", type=int, default=5, help="observed events (default: 5)")
    p.add_argument(
        "--background", type=float, default=3.0, help="expected background b (default: 3.0)"
    )
    p.add_argument("--cl", type=float, default=0.95, help="confidence level (default: 0.95)")
    p.add_argument(
        "--toys-per-job",
        type=int,
        default=50_000,
        help="toys per hypothesis thrown by one job (default: 50000)",
    )
    p.add_argument(
        "--precision",
        type=float,
        default=0.01,
        help="stop when the limit's statistical uncertainty is below this (default: 0.01)",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed of every batch (default: 0)")
    p.add_argument("--max-iterations", type=int, default=12, help="iteration guard (default: 12)")
    p.add_argument(
        "--grid-points", type=int, default=8, help="points of the first, coarse grid (default: 8)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "--service",
        default=None,
        help="'local' (embedded engine) or the URL of a tasklift server (default: local)",
    )
    p.add_argument("--backend", default=None, help="where jobs run, e.g. local, dask, slurm")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the scan from the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.n_obs < 0:
        parser.error("--n-obs must be >= 0")
    if args.background < 0:
        parser.error("--background must be >= 0")
    if not 0.5 < args.cl < 1.0:
        parser.error("--cl must be in (0.5, 1)")
    if args.toys_per_job < 1 or args.precision <= 0 or args.max_iterations < 1:
        parser.error("--toys-per-job, --precision and --max-iterations must be positive")
    if args.grid_points < 2:
        parser.error("--grid-points must be >= 2")

    t0 = time.perf_counter()
    result = Workflow(
        func=cls_limit, name="mc_toys", service=args.service, backend=args.backend
    ).run(
        n_obs=args.n_obs,
        background=args.background,
        cl=args.cl,
        toys_per_job=args.toys_per_job,
        precision=args.precision,
        seed=args.seed,
        max_iterations=args.max_iterations,
        grid_points=args.grid_points,
        verbose=not args.json,
    )
    result["wall_seconds"] = round(time.perf_counter() - t0, 3)

    if args.json:
        print(json.dumps(result))
    else:
        _print_summary(result)
    return 0 if result["converged"] else 1


def _print_summary(r: dict[str, Any]) -> None:
    print(
        f"CLs upper limit at {100 * r['cl']:g}% CL, n_obs = {r['n_obs']}, b = {r['background']:g}"
    )
    if r["upper_limit"] is None:
        print("  toys:  no CLs = 1 - CL crossing found")
    else:
        exact = r["exact_upper_limit"]
        pull = (r["upper_limit"] - exact) / r["uncertainty"] if r["uncertainty"] else math.nan
        print(f"  toys:  mu_up = {r['upper_limit']:.4f} +- {r['uncertainty']:.4f}")
        print(f"  exact: mu_up = {exact:.4f}   (toys - exact = {pull:+.2f} sigma)")
    state = "converged" if r["converged"] else "NOT converged (raise --max-iterations)"
    print(
        f"  {r['iterations']} iterations, {r['n_jobs']} jobs, {r['n_toys']:,} toys, "
        f"{len(r['scan'])} scan points, {state}, {r['wall_seconds']:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
