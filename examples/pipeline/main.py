"""A toy HEP production chain, Gen -> Sim -> Reco -> Deriv, as a data-flow workflow.

    python examples/pipeline/main.py [--jobs 24] [--json] [--service URL] [--backend NAME]

Each stage is one work; job i of a stage takes job i's output of the stage before (``each()``),
and the derivation collects everything (``all()``). The engine releases a job as soon as its
own input is ready, so simulation starts while generation is still running. For comparison the
same chain then runs stage by stage (each stage waits for the whole previous one), and the
summary shows the wall time of both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

from tasklift import Workflow, work, workflow
from tasklift.settings import Settings

# seconds per job: (mean, relative spread); simulation dominates, as in real production, and
# one job in eight is a straggler (5x: a busy node, a hard event), the case where waiting for
# a whole stage costs most
COST = {"gen": (0.04, 0.5), "sim": (0.12, 0.8), "reco": (0.06, 0.5)}


def _cost(stage: str, seed: int) -> float:
    mean, spread = COST[stage]
    u = int(hashlib.sha256(f"{stage}:{seed}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    straggler = 5.0 if u > 0.875 else 1.0
    return mean * (1 + spread * (2 * u - 1)) * straggler


@work(retries=1)
def generate(seed: int, n_events: int = 100, tag: str = "") -> dict:
    """Event generation: a few 'events' with a toy energy each."""
    time.sleep(_cost("gen", seed))
    energies = [((seed * 7919 + i * 104729) % 1000) / 10.0 for i in range(n_events)]
    return {"seed": seed, "energies": energies}


@work(retries=1)
def simulate(events: dict) -> dict:
    """Detector simulation: smear each energy (deterministically)."""
    time.sleep(_cost("sim", events["seed"]))
    hits = [e * (0.95 + 0.1 * ((i * 31 + events["seed"]) % 10) / 10) for i, e in
            enumerate(events["energies"])]
    return {"seed": events["seed"], "hits": hits}


@work(retries=1)
def reconstruct(hits: dict) -> dict:
    """Reconstruction: count and sum the hits above threshold."""
    time.sleep(_cost("reco", hits["seed"]))
    selected = [h for h in hits["hits"] if h > 20.0]
    return {"seed": hits["seed"], "n": len(selected), "sum": sum(selected)}


@work(retries=1)
def derive(parts: list, tag: str = "") -> dict:
    """Derivation: the analysis summary over every reconstructed batch."""
    return {"batches": len(parts), "selected": sum(p["n"] for p in parts),
            "energy": round(sum(p["sum"] for p in parts), 6)}


@workflow
def production(n_jobs: int) -> dict:
    """Run the chain pipelined, then stage by stage, and time both."""
    seeds = [{"seed": s} for s in range(n_jobs)]
    derive(group_kwargs=[{"parts": [], "tag": f"warm-up {i}"} for i in range(16)])  # start workers
    t = time.perf_counter()
    gen = generate(group_kwargs=[dict(s, tag="pipelined") for s in seeds], return_work=True)
    sim = simulate(events=gen.each(), return_work=True)
    reco = reconstruct(hits=sim.each(), return_work=True)
    summary = derive(parts=reco.all(), return_work=True).result()
    pipelined = time.perf_counter() - t

    t = time.perf_counter()
    stage_walls = []
    s0 = time.perf_counter()
    events = generate(group_kwargs=[dict(s, tag="staged") for s in seeds])
    stage_walls.append(time.perf_counter() - s0)
    s0 = time.perf_counter()
    hits = simulate(group_kwargs=[{"events": e} for e in events])
    stage_walls.append(time.perf_counter() - s0)
    s0 = time.perf_counter()
    reconstructed = reconstruct(group_kwargs=[{"hits": h} for h in hits])
    stage_walls.append(time.perf_counter() - s0)
    staged_summary = derive(parts=reconstructed)
    staged = time.perf_counter() - t
    assert staged_summary == summary, (staged_summary, summary)
    return {"summary": summary, "n_jobs": n_jobs, "pipelined_wall": round(pipelined, 3),
            "staged_wall": round(staged, 3), "stage_walls": [round(w, 3) for w in stage_walls],
            "gain": round(staged / pipelined, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24, help="jobs per stage")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--service", default="local", help="'local' or a server URL")
    parser.add_argument("--backend", default="local", help="where jobs run")
    parser.add_argument("--workers", type=int, default=8,
                        help="local workers (the toy jobs sleep, standing in for work on "
                             "other nodes, so more workers than cores is fine)")
    args = parser.parse_args()
    settings = Settings(workers=args.workers)
    out = Workflow(func=production, service=args.service, backend=args.backend,
                   fresh=True, settings=settings).run(args.jobs)
    if args.json:
        print(json.dumps(out))
    else:
        s = out["summary"]
        print(f"{out['n_jobs']} jobs per stage: {s['selected']} selected events, energy "
              f"{s['energy']:.1f}")
        print(f"pipelined (job i of a stage starts when job i of the stage before ends): "
              f"{out['pipelined_wall']:.2f} s")
        print(f"stage by stage (each stage waits for the whole previous one):          "
              f"{out['staged_wall']:.2f} s  (stages: {out['stage_walls']})")
        print(f"gain from pipelining: x{out['gain']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
