"""The four experiments of docs/bench-sim.md, each a function returning plain JSON data.

Workload (all experiments): Prism's synthetic generator (bench/traces/synthetic.py) with
power-law popularity ``ALPHA``, Gamma inter-arrivals with ``CV``, half of the models (the least
popular) following on/off phases, prompt and output lengths uniform in [8, 512) - Prism's
defaults. SLO = ``SLO_SCALE`` x each model's P95 on a dedicated GPU (run.py). chimera's layout
also reads a history trace: the same spec with another seed (run.py ``history``). Searches
assume attainment is monotone in the rate and in the number of GPUs, and bisect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bench.sim.fleet import card, fleet
from bench.sim.metrics import RunResult
from bench.sim.run import history, simulate, with_slos
from bench.traces.synthetic import SyntheticSpec, generate
from orchestrator.types import GpuSharing

SLO_SCALE = 10.0  # Prism's benchmark scripts use --ttft-slo-scale 10 --tpot-slo-scale 10
TARGET = 0.99
ALPHA = 0.5
CV = 2.0
BASELINES = ("static-partition", "muxserve-like", "swap-only", "chimera")
ABLATIONS = (
    "chimera",
    "chimera-no-global",
    "chimera-no-local",
    "chimera-no-elastic",
    "chimera-kvpr-only",
    "chimera-worst-case-tpot",
    "chimera-no-profile",
    "chimera-standby",
    "chimera-park-always",
)


def spec(rate: float, duration_s: float, cycle_s: float, seed: int = 1) -> SyntheticSpec:
    return SyntheticSpec(
        rate=rate,
        duration_s=duration_s,
        alpha=ALPHA,
        cv=CV,
        seed=seed,
        on_off_cycle_s=cycle_s,
        off_ratio=0.5,
        on_off_fraction=0.5,
    )


def run_one(system: str, mix: str, gpus: int, sp: SyntheticSpec, sharing: GpuSharing = "timeslice") -> RunResult:
    """One run of the experiments' workload; the SLOs are the dedicated ones whatever ``sharing``
    (a model alone on its GPU shares nothing)."""
    models = with_slos(fleet(mix, calibration=card(sharing)), SLO_SCALE, sp.input_range, sp.output_range)
    trace = generate(sp, [m.name for m in models])
    return simulate(system, models, gpus, trace, sp.duration_s, history(sp, models), sharing)


def _bisect_max(ok: Callable[[float], bool], lo: float, hi: float, steps: int) -> float | None:
    """Largest x in [lo, hi] with ok(x) (None if not even lo)."""
    if not ok(lo):
        return None
    if ok(hi):
        return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def rate_sweep(
    mix: str = "mix8",
    gpus: int = 2,
    rates: tuple[float, ...] = (2, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64),
    duration_s: float = 600.0,
    cycle_s: float = 120.0,
    systems: tuple[str, ...] = BASELINES,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Attainment over a grid of rates, then the rate at 99% by bisection, per system. Static
    partition also runs with one GPU per model (its fair cost) for the per-GPU comparison."""
    out: dict[str, Any] = {"mix": mix, "gpus": gpus, "duration_s": duration_s, "grid": {}, "rate_at_99": {}}
    for system in systems:
        curve = []
        for r in rates:
            res = run_one(system, mix, gpus, spec(r, duration_s, cycle_s))
            curve.append((r, res.joint, res.ttft_ok, res.tpot_ok))
            log(f"  {system:18s} {r:5.1f} req/s: joint {res.joint:.4f} ({res.wall_s:.2f} s)")
        out["grid"][system] = curve
        good = [r for r, j, _, _ in curve if j >= TARGET]
        hi_bad = [r for r, j, _, _ in curve if j < TARGET and (not good or r > max(good))]
        if not good:
            out["rate_at_99"][system] = None
            continue
        lo, hi = max(good), (min(hi_bad) if hi_bad else max(good))

        def meets(x: float, s: str = system) -> bool:
            return run_one(s, mix, gpus, spec(x, duration_s, cycle_s)).joint >= TARGET

        out["rate_at_99"][system] = _bisect_max(meets, lo, hi, 4)
    n_models = len(fleet(mix))
    ok = _bisect_max(
        lambda x: run_one("static-partition", mix, n_models, spec(x, duration_s, cycle_s)).joint >= TARGET,
        1.0,
        400.0,
        7,
    )
    out["static_dedicated"] = {"gpus": n_models, "rate_at_99": ok}
    return out


def gpu_sweep(
    mix: str,
    rate: float,
    lo: int,
    hi: int,
    duration_s: float,
    cycle_s: float,
    systems: tuple[str, ...] = BASELINES,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Attainment per GPU count (grid), and the fewest GPUs reaching 99% per system."""
    sp = spec(rate, duration_s, cycle_s)
    out: dict[str, Any] = {"mix": mix, "rate": rate, "duration_s": duration_s, "grid": {}, "fewest_gpus": {}}
    for system in systems:
        seen: dict[int, RunResult] = {}

        def att(g: int, s: str = system, seen: dict[int, RunResult] = seen) -> float:
            if g not in seen:
                seen[g] = run_one(s, mix, g, sp)
                log(f"  {s:18s} {g:3d} GPUs: joint {seen[g].joint:.4f} ({seen[g].wall_s:.2f} s)")
            return seen[g].joint

        a, b = lo, hi
        if att(b) < TARGET:
            out["fewest_gpus"][system] = None
        else:
            while a < b:  # fewest g with att(g) >= TARGET
                mid = (a + b) // 2
                a, b = (a, mid) if att(mid) >= TARGET else (mid + 1, b)
            out["fewest_gpus"][system] = a
        out["grid"][system] = sorted((g, r.joint, r.ttft_ok, r.tpot_ok, r.counters["wakes"]) for g, r in seen.items())
    return out


def large_scale(
    rate: float = 10.0,
    duration_s: float = 3600.0,
    lo: int = 8,
    hi: int = 32,
    systems: tuple[str, ...] = BASELINES,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    return gpu_sweep("mix58", rate, lo, hi, duration_s, 600.0, systems, log)


def ablations(
    mix: str, rate: float, gpus: int, duration_s: float, cycle_s: float, log: Callable[[str], None] = print
) -> dict[str, Any]:
    sp = spec(rate, duration_s, cycle_s)
    out: dict[str, Any] = {"mix": mix, "rate": rate, "gpus": gpus, "duration_s": duration_s, "runs": {}}
    for system in ABLATIONS:
        r = run_one(system, mix, gpus, sp)
        log(f"  {system:18s}: joint {r.joint:.4f} ttft {r.ttft_ok:.4f} tpot {r.tpot_ok:.4f}")
        out["runs"][system] = {k: v for k, v in r.to_json().items() if k != "per_model"}
    return out


def real_trace(
    name: str = "lmsys",
    mix: str = "mix8",
    gpus: int = 2,
    time_scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125),
    systems: tuple[str, ...] = BASELINES,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """A public trace from bench/traces/data through bench.traces (LMSYS: 27 models folded onto
    the mix by request count, 600 s); ``time_scale`` < 1 replays it faster (Prism's knob)."""
    from bench.traces.build import TraceOptions, build_trace

    models = with_slos(fleet(mix), SLO_SCALE, (8, 512), (8, 512))
    out: dict[str, Any] = {"trace": name, "mix": mix, "gpus": gpus, "runs": {}}
    for ts in time_scales:
        opts = TraceOptions(synthetic=SyntheticSpec(duration_s=600.0 * ts), time_scale=ts)
        trace = build_trace(name, opts, [m.name for m in models])
        duration = max(r.arrival_s for r in trace)
        for system in systems:
            r = simulate(system, models, gpus, trace, duration)
            out["runs"].setdefault(system, []).append((ts, r.rate, r.joint))
            log(f"  {system:18s} x{1 / ts:g} ({r.rate:.1f} req/s): joint {r.joint:.4f}")
    return out


def timing(rate: float = 10.0, gpus: int = 32, duration_s: float = 3600.0) -> dict[str, Any]:
    """Wall time of a 1-hour, 58-model trace (the simulator's speed requirement)."""
    r = run_one("chimera", "mix58", gpus, spec(rate, duration_s, 600.0))
    return {"gpus": gpus, "rate": rate, "requests": r.requests, "wall_s": r.wall_s, "joint": r.joint}


def determinism_probe(seed: int) -> tuple[float, int, dict[str, int]]:
    r = run_one("chimera", "mix8", 2, replace(spec(8.0, 120.0, 60.0), seed=seed))
    return r.joint, r.shed, r.counters
