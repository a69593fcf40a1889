"""One simulated run: a system, a model mix, a number of GPUs, a trace; and the SLOs.

SLO of a model = ``slo_scale`` x its P95 TTFT and P95 TPOT on a dedicated GPU, measured in this
same simulator: the model alone on its own GPU group, Poisson arrivals at ``REF_RATE`` req/s
with the workload's length ranges, for ``REF_DURATION_S`` (a fixed reference, so the SLO does
not move with the offered load of a sweep).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cache

from bench.sim.baselines import MuxServeLike, StaticPartition, SwapOnly
from bench.sim.chimera import Chimera, ChimeraOptions
from bench.sim.fleet import H100_BYTES, fleet, make_model
from bench.sim.metrics import RunResult, summarize
from bench.sim.servers import SimModel
from bench.sim.simulator import Controller, Simulator
from bench.traces.request import BenchRequest
from bench.traces.synthetic import SyntheticSpec, generate
from orchestrator.types import GpuSharing

HISTORY_SEED = 1000  # "yesterday": same generator and phases, other draws (chimera's layout input)
REF_RATE = 2.0
REF_DURATION_S = 300.0
SYSTEMS = (
    "static-partition",
    "muxserve-like",
    "swap-only",
    "chimera",
    "chimera-no-global",
    "chimera-no-local",
    "chimera-no-elastic",
    "chimera-kvpr-only",
    "chimera-park-always",
    "chimera-standby",
    "chimera-no-profile",
    "chimera-worst-case-tpot",
    "chimera-policy-timeslice",
)


@cache
def dedicated_p95(
    shape: str, tp: int, input_range: tuple[int, int], output_range: tuple[int, int]
) -> tuple[float, float]:
    """(P95 TTFT, P95 TPOT) of the shape alone on a dedicated GPU group at the reference load."""
    m = make_model("ref", shape, tp)
    spec = SyntheticSpec(
        rate=REF_RATE,
        duration_s=REF_DURATION_S,
        alpha=1.0,
        cv=1.0,
        input_range=input_range,
        output_range=output_range,
        seed=12345,
    )
    trace = generate(spec, ["ref"])
    sim = Simulator({"ref": m}, tp, H100_BYTES, StaticPartition({"ref": 1.0}))
    sim.run(trace)
    served = [r for r in sim.reqs if not r.shed and r.finish == r.finish]
    ttft = sorted(r.first - r.arrival for r in served)
    tpot = sorted((r.finish - r.first) / (r.output - 1) for r in served if r.output > 1)
    return ttft[int(0.95 * len(ttft))], tpot[int(0.95 * len(tpot))]


def with_slos(
    models: Sequence[SimModel], scale: float, input_range: tuple[int, int], output_range: tuple[int, int]
) -> list[SimModel]:
    out = []
    for m in models:
        ttft, tpot = dedicated_p95(m.shape_name, m.tp, input_range, output_range)
        out.append(replace(m, ttft_slo=scale * ttft, tpot_slo=scale * tpot, _base={}))
    return out


def controller(
    system: str,
    trace: Sequence[BenchRequest],
    duration_s: float,
    history: Sequence[BenchRequest] = (),
    awake_at_start: frozenset[str] | None = None,
) -> Controller:
    """``awake_at_start``: chimera's models awake when the trace begins (ChimeraOptions), for
    the chimera system only."""
    counts = Counter(r.model for r in trace)
    rps = {m: n / duration_s for m, n in counts.items()}
    tpr = sum(r.prompt_tokens + r.output_tokens for r in trace) / max(len(trace), 1)
    tokens = {m: v * tpr for m, v in rps.items()}
    makers: dict[str, Callable[[], Controller]] = {
        "static-partition": lambda: StaticPartition(rps),
        "muxserve-like": lambda: MuxServeLike(tokens),
        "swap-only": lambda: SwapOnly(rps),
        "chimera": lambda: Chimera(rps, tpr, ChimeraOptions(awake_at_start=awake_at_start), history=history),
        "chimera-no-global": lambda: Chimera(rps, tpr, ChimeraOptions(global_placement=False), system, history),
        "chimera-no-local": lambda: Chimera(rps, tpr, ChimeraOptions(local=False), system, history),
        "chimera-no-elastic": lambda: Chimera(rps, tpr, ChimeraOptions(elastic=False), system, history),
        "chimera-kvpr-only": lambda: Chimera(rps, tpr, ChimeraOptions(tpot_guard=False), system, history),
        "chimera-park-always": lambda: Chimera(rps, tpr, ChimeraOptions(park_when="always"), system, history),
        "chimera-standby": lambda: Chimera(rps, tpr, ChimeraOptions(standby_fraction=0.25), system, history),
        "chimera-no-profile": lambda: Chimera(rps, tpr, ChimeraOptions(profile=False), system, history),
        "chimera-worst-case-tpot": lambda: Chimera(rps, tpr, ChimeraOptions(activity=False), system, history),
        "chimera-policy-timeslice": lambda: Chimera(
            rps, tpr, ChimeraOptions(policy_sharing="timeslice"), system, history
        ),
    }
    if system not in makers:
        raise ValueError(f"unknown system {system!r} (known: {', '.join(SYSTEMS)})")
    return makers[system]()


def simulate(
    system: str,
    models: Sequence[SimModel],
    n_gpus: int,
    trace: Sequence[BenchRequest],
    duration_s: float,
    history: Sequence[BenchRequest] = (),
    sharing: GpuSharing = "timeslice",
) -> RunResult:
    """One run; ``sharing``: how colocated servers' decode steps share a GPU (servers.py)."""
    ctl = controller(system, trace, duration_s, history)
    sim = Simulator({m.name: m for m in models}, n_gpus, H100_BYTES, ctl, sharing=sharing)
    wall = sim.run(trace)
    return summarize(system, n_gpus, sim.reqs, sim.models, duration_s, wall, sim.counters)


def synthetic_run(system: str, mix: str, n_gpus: int, spec: SyntheticSpec, slo_scale: float) -> RunResult:
    models = with_slos(fleet(mix), slo_scale, spec.input_range, spec.output_range)
    trace = generate(spec, [m.name for m in models])
    return simulate(system, models, n_gpus, trace, spec.duration_s, history(spec, models))


def history(spec: SyntheticSpec, models: Sequence[SimModel]) -> list[BenchRequest]:
    """The trace chimera's layout learns from: the same spec drawn with another seed."""
    return generate(replace(spec, seed=spec.seed + HISTORY_SEED), [m.name for m in models])
