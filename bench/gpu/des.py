"""The §3 hook: the one-GPU experiment's set-up and trace through the discrete-event simulator
(bench/sim), written in the same JSON as a live run so that ``python -m bench.gpu.report`` sets
them side by side (simulated vs real, per model: attainment, TTFT and TPOT p50/p99).

One fleet runs the whole sweep, as live: the rates one after another on one simulated clock,
each ``duration_s`` of arrivals followed by ``DRAIN_S`` for its last answers and ``GAP_S`` (the
live runner's default gap), so a rate starts with the models awake, parked and warm that the
one before left; the fleet starts with the placements' ``on: true`` models awake (the others
parked, as the live warm start leaves them); each rate's counters are what changed between
its start and the next one's, its ``wall_s`` the whole sweep's. ``one_fleet=False``: each rate
from a fresh fleet whose hot set the policy picks (the twin's behaviour before 2026-12-04).
Systems: static -> bench/sim's ``FixedColocation`` over the served models, each awake on its
GPU with its file's fixed ``kv_pool_gb``, as the live static system runs them (the others'
requests are misses, as live). Not ``static-partition``: that one dedicates a whole GPU to each
model, so on one GPU it would serve the most popular model only. swap -> ``swap-only``; full ->
``chimera``; elastic has no counterpart in the simulator (KV moving between resident servers
without parking) and is refused. The models' SLOs are the set-up file's (not bench/sim's
dedicated-P95 SLOs); the GPU is the set-up's ``host.gpu_memory_gb``. The engines admit
requests as stock SGLang 0.5.17 does (``kv="sglang"``, bench/sim/sglang_kv.py: new-token ratio,
retraction and re-prefill) unless ``kv_admission`` is "reserve" (bench/sim's own experiments:
KV reserved in full at dispatch).
Nothing here is measured: every number is SIMULATED.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any, Literal

from bench.client.record import RequestRecord
from bench.gpu import measure, systems
from bench.gpu.systems import served
from bench.report import summarize_run
from bench.sim.baselines import FixedColocation
from bench.sim.fleet import make_model
from bench.sim.run import controller
from bench.sim.servers import SimReq
from bench.sim.simulator import Counters, Simulator
from bench.traces import BenchRequest, describe
from orchestrator.config import GIB, Config, parse_config
from orchestrator.deployment import derive
from orchestrator.perf.calibration import CALIBRATIONS, Calibration

DES_SYSTEM = {"static": FixedColocation.name, "swap": "swap-only", "full": "chimera"}
# One fleet: between two rates the live runner waits for the last answers (1-3 s past the
# arrivals at low load, ~11 s at set-up B's 8 req/s on the H200) and then its --gap (3 s).
DRAIN_S = 10.0
GAP_S = 3.0
# Request ids of rate i are offset by i x this: unique on the one clock, and the first-token
# spread's hash (bench/sim/servers.py spread_factor: id x K mod 2^32) draws what it draws alone.
ID_STRIDE = 1 << 32


def records(
    reqs: Sequence[SimReq], run: int, slos: dict[str, tuple[float | None, float | None]], offset_s: float = 0.0
) -> list[RequestRecord]:
    """The simulator's requests as the client's records (shed: 429; unfinished: no answer);
    ``offset_s``: where their rate began on the simulated clock (records count from it, with
    the rate's own ids)."""
    out = []
    for r in reqs:
        done = not r.shed and not math.isnan(r.finish)
        ttft = r.first - r.arrival if done else None
        tpot = (r.finish - r.first) / (r.output - 1) if done and r.output > 1 else None
        slo = slos.get(r.model, (None, None))
        out.append(
            RequestRecord(
                id=r.id % ID_STRIDE,
                model=r.model,
                route="des",
                arrival_s=r.arrival - offset_s,
                sent_at_s=r.arrival - offset_s,
                status=429 if r.shed else 200 if done else 0,
                ok=done,
                error="" if done else "shed" if r.shed else "unfinished at the end of the simulation",
                prompt_tokens=r.prompt,
                prompt_tokens_requested=r.prompt,
                output_tokens=r.output if done else 0,
                output_tokens_requested=r.output,
                ttft_s=ttft,
                tpot_s=tpot,
                e2e_s=r.finish - r.arrival if done else None,
                slo_ttft_s=slo[0],
                slo_tpot_s=slo[1],
                run=run,
            )
        )
    return out


def static_pools(cfg: Config, serving: Sequence[str]) -> FixedColocation:
    """The static system as its placements file has it: each served model on its first
    placement's GPUs with that placement's fixed KV pool."""
    pools: dict[str, tuple[tuple[int, ...], int | None]] = {}
    for m in cfg.models:
        if m.name in serving and m.placements:
            pl = m.placements[0]
            pools[m.name] = (pl.gpus, None if pl.kv_pool_gb is None else int(pl.kv_pool_gb * GIB))
    return FixedColocation(pools)


def run(
    setup: Any,
    system: str,
    trace: str,
    rates: Sequence[float],
    duration_s: float,
    seed: int,
    trace_for: Callable[[Any, str, float, float, int], list[BenchRequest]],
    calibration: str | Calibration = "h100",
    kv_admission: Literal["sglang", "reserve"] = "sglang",
    cuda_graph_max_bs: int | None = None,
    records_out: list[list[RequestRecord]] | None = None,
    one_fleet: bool = True,
) -> dict[str, Any]:
    """The experiment.json of ``system`` on ``setup`` (bench/gpu/experiment.py's Setup), with
    the step times of ``calibration`` (orchestrator/perf/calibration.py CALIBRATIONS, by name
    or itself) and each server's CUDA graphs as chimera starts it, or ``cuda_graph_max_bs``
    for every server (a live run's, to compare with it). ``records_out``, if given, gets each
    rate's request records (bench/calibration/first_token.py pairs them with a live run's)."""
    if system not in DES_SYSTEM:
        raise SystemExit(
            f"error: the discrete-event simulator has no {system!r} system (it has {', '.join(DES_SYSTEM)})"
        )
    if isinstance(calibration, Calibration):
        cal = calibration
    elif calibration in CALIBRATIONS:
        cal = CALIBRATIONS[calibration]
    else:
        raise SystemExit(f"error: no calibration {calibration!r} (there are {', '.join(CALIBRATIONS)})")
    cfg = parse_config(setup.raw)
    serving = served(setup.raw, system)
    # each model's memory as chimera would start it in this system (its CUDA graphs, its pool)
    dep = derive(parse_config(systems.derive(setup.raw, system)))
    started = dep.models
    graphs: dict[str, int] = {}  # its servers' largest --cuda-graph-max-bs
    floors: dict[str, int] = {}  # the KV ledger's floor for its servers (kv_floor_gb; 0: none)
    for f in dep.instances.values():
        graphs[f.spec.model.name] = max(graphs.get(f.spec.model.name, 0), f.cuda_graph_max_bs)
        floors[f.spec.model.name] = max(floors.get(f.spec.model.name, 0), f.floor_bytes)
    models = {
        m.name: replace(
            make_model(m.name, m.shape.name, m.tp_size, cal, started[m.name].cost),
            ttft_slo=m.slo.ttft_or_default,
            tpot_slo=m.slo.tpot_or_default,
            kv=kv_admission,
            graph_max_bs=cuda_graph_max_bs or graphs.get(m.name),
            ledger_floor_bytes=floors.get(m.name, 0),
        )
        for m in cfg.models
        if m.name in serving
    }
    gpu_bytes = int(cfg.host.gpu_memory_gb * GIB)
    awake = frozenset(m.name for m in cfg.models if m.name in models and any(p.on for p in m.placements))
    traces = [trace_for(setup, trace, rate, duration_s, seed) for rate in rates]
    sends = [[r for r in reqs if r.model in models] for reqs in traces]
    # per rate: its requests, where it began, the counters (and retractions) then and after it, wall
    runs: list[tuple[list[SimReq], float, _Mark, _Mark, float]] = []
    if one_fleet:
        offsets = [i * (duration_s + DRAIN_S + GAP_S) for i in range(len(rates))]
        both = [
            replace(r, id=r.id + i * ID_STRIDE, arrival_s=r.arrival_s + offsets[i])
            for i, send in enumerate(sends)
            for r in send
        ]
        sim = _simulator(system, cfg, serving, models, gpu_bytes, sends[0] if sends else [], duration_s, awake)
        marks: list[_Mark] = []
        for off in offsets[1:]:  # the counters where each rate begins (its first arrival's time)
            sim.at(off, lambda: marks.append(_mark(sim)))
        wall = sim.run(sorted(both, key=lambda r: r.arrival_s))
        bounds = [(Counters(), 0), *marks, _mark(sim)]
        for i in range(len(rates)):
            mine = [r for r in sim.reqs if r.id // ID_STRIDE == i]
            runs.append((mine, offsets[i], bounds[i], bounds[i + 1], wall))
    else:
        for send in sends:
            sim = _simulator(system, cfg, serving, models, gpu_bytes, send, duration_s, None)
            wall = sim.run(send)
            runs.append((sim.reqs, 0.0, (Counters(), 0), _mark(sim), wall))
    points = []
    for i, (rate, reqs, (mine, off, before, after, wall)) in enumerate(zip(rates, traces, runs, strict=True)):
        missed = measure.unserved([r for r in reqs if r.model not in models], i, "des")
        recs = sorted(records(mine, i, setup.slos, off) + missed, key=lambda r: r.id)
        if records_out is not None:
            records_out.append(recs)
        counters = {k: v - asdict(before[0])[k] for k, v in asdict(after[0]).items()}
        points.append(
            {
                "rate": rate,
                "label": f"{'rate' if trace == 'synthetic' else 'scale'} {rate:g}",
                "offered_rate_rps": len(reqs) / duration_s,
                "trace": describe(reqs, duration_s),
                "trace_digest": measure.digest(reqs),
                "sent": len(sends[i]),
                "unserved": len(missed),
                "wall_s": wall,
                **summarize_run(recs, duration_s),
                "chimera": {
                    "wakes": counters["wakes"],
                    "parks": counters["parks"],
                    "shed_client": sum(r.shed for r in mine),
                    "retractions": after[1] - before[1],
                    "counters": counters,
                },
            }
        )
    pts = [(p["offered_rate_rps"], p["overall"]["attainment"]["joint"]) for p in points]
    return {
        "schema": "chimera-gpu-experiment/1",
        "setup": setup.name,
        "system": system,
        "trace": trace,
        "engine": "des",
        "calibration": cal.name,
        "kv_admission": kv_admission,
        "cuda_graph_max_bs": cuda_graph_max_bs or graphs,
        "des_system": DES_SYSTEM[system],
        "one_fleet": one_fleet,
        "served": serving,
        "unserved": [m for m in setup.models if m not in serving],
        "duration_per_rate_s": duration_s,
        "rates": points,
        "max_rate_at_99": measure.max_rate_at(pts),
    }


_Mark = tuple[Counters, int]  # the simulator's counters and its servers' retractions at a moment


def _mark(sim: Simulator) -> _Mark:
    return replace(sim.counters), sum(s.retractions for s in sim.servers.values())


def _simulator(
    system: str,
    cfg: Config,
    serving: Sequence[str],
    models: dict[str, Any],
    gpu_bytes: int,
    first: Sequence[BenchRequest],
    duration_s: float,
    awake: frozenset[str] | None,
) -> Simulator:
    """The system's controller on a fresh simulated GPU set. Its rate prior is ``first``'s (the
    sweep's first rate when one fleet runs it); ``awake``: chimera's models awake at the start
    (the placements' ``on: true``), None: the hot set its policy picks."""
    if system == "static":
        ctl: Any = static_pools(cfg, serving)
    elif system == "full" and awake is not None:
        ctl = controller(DES_SYSTEM[system], first, duration_s, awake_at_start=awake)
    else:
        ctl = controller(DES_SYSTEM[system], first, duration_s)
    return Simulator(models, cfg.gpu_count, gpu_bytes, ctl)
