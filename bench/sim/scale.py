"""The simulator at cluster scale (issue 13): 1,000 models on 512 GPUs for an hour.

The fleet repeats mix58's proportions (fleet.py: 1-3B models most, a few 32B, 70B at TP 2) up
to ``n_models``, shuffled with a seed so popularity does not follow size; the workload is the
experiments' generator (experiments.py: power-law popularity, bursty arrivals, half of the
models on/off) at ``rate`` requests/s over all models. ``run`` is one system at one GPU count
and reports the simulator's wall time; ``fewest_gpus`` bisects the GPU count at which a system
reaches 99% joint attainment (each probe is a full run: at this scale, minutes). SIMULATED.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from bench.sim.experiments import SLO_SCALE, TARGET, spec
from bench.sim.fleet import MIXES, make_model
from bench.sim.metrics import RunResult
from bench.sim.run import history, simulate, with_slos
from bench.sim.servers import SimModel
from bench.traces.synthetic import generate

CYCLE_S = 600.0  # on/off cycle of the on/off models (the large-scale experiment's)


def scaled_fleet(n_models: int, seed: int = 7) -> list[SimModel]:
    """``n_models`` models in mix58's proportions (rounded down, the rest 1B), in popularity order."""
    mix = MIXES["mix58"]
    total = sum(count for _, _, count in mix)
    kinds = [(shape, tp) for shape, tp, count in mix for _ in range(count * n_models // total)]
    kinds += [("llama-3.2-1b", 1)] * (n_models - len(kinds))
    random.Random(seed).shuffle(kinds)
    return [make_model(f"m{i:04d}-{shape}", shape, tp) for i, (shape, tp) in enumerate(kinds)]


def run(system: str, n_models: int, n_gpus: int, rate: float, hours: float, seed: int = 1) -> dict[str, Any]:
    """One simulated run; ``wall_s`` covers building the trace, the SLOs and the simulation."""
    t0 = time.perf_counter()
    sp = spec(rate, 3600.0 * hours, CYCLE_S, seed)
    models = with_slos(scaled_fleet(n_models), SLO_SCALE, sp.input_range, sp.output_range)
    trace = generate(sp, [m.name for m in models])
    res: RunResult = simulate(system, models, n_gpus, trace, sp.duration_s, history(sp, models))
    return {
        "system": system,
        "models": n_models,
        "gpus": n_gpus,
        "hours": hours,
        "rate": rate,
        "requests": res.requests,
        "joint": res.joint,
        "shed": res.shed,
        "sim_wall_s": res.wall_s,
        "wall_s": time.perf_counter() - t0,
    }


def fewest_gpus(
    system: str,
    n_models: int,
    rate: float,
    hours: float,
    lo: int,
    hi: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The fewest GPUs in [lo, hi] at which ``system`` reaches ``TARGET`` joint attainment
    (attainment assumed monotone in GPUs), None if not even ``hi``; every probe's run."""
    seen: dict[int, dict[str, Any]] = {}

    def ok(g: int) -> bool:
        if g not in seen:
            seen[g] = run(system, n_models, g, rate, hours)
            log(describe(seen[g]))
        return bool(seen[g]["joint"] >= TARGET)

    found: int | None = None
    if ok(hi):
        a, b = lo, hi
        while a < b:
            mid = (a + b) // 2
            a, b = (a, mid) if ok(mid) else (mid + 1, b)
        found = a
    return {"system": system, "fewest_gpus": found, "probes": [seen[g] for g in sorted(seen)]}


def describe(r: dict[str, Any]) -> str:
    return (
        f"SIMULATED {r['system']}: {r['models']} models on {r['gpus']} GPUs, {r['hours']:g} h at "
        f"{r['rate']:g} req/s ({r['requests']:,} requests): joint attainment {r['joint']:.4f}, "
        f"{r['shed']} shed; wall {r['wall_s']:.0f} s (simulation {r['sim_wall_s']:.0f} s)"
    )
