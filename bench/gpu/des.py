"""The §3 hook: the one-GPU experiment's set-up and trace through the discrete-event simulator
(bench/sim), written in the same JSON as a live run so that ``python -m bench.gpu.report`` sets
them side by side (simulated vs real, per model: attainment, TTFT and TPOT p50/p99).

Each rate is simulated from a fresh fleet (the live runner keeps one fleet across the sweep).
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
from bench.sim.simulator import Simulator
from bench.traces import BenchRequest, describe
from orchestrator.config import GIB, Config, parse_config
from orchestrator.deployment import derive
from orchestrator.perf.calibration import CALIBRATIONS, Calibration

DES_SYSTEM = {"static": FixedColocation.name, "swap": "swap-only", "full": "chimera"}


def records(
    reqs: Sequence[SimReq], run: int, slos: dict[str, tuple[float | None, float | None]]
) -> list[RequestRecord]:
    """The simulator's requests as the client's records (shed: 429; unfinished: no answer)."""
    out = []
    for r in reqs:
        done = not r.shed and not math.isnan(r.finish)
        ttft = r.first - r.arrival if done else None
        tpot = (r.finish - r.first) / (r.output - 1) if done and r.output > 1 else None
        slo = slos.get(r.model, (None, None))
        out.append(
            RequestRecord(
                id=r.id,
                model=r.model,
                route="des",
                arrival_s=r.arrival,
                sent_at_s=r.arrival,
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
    points = []
    for i, rate in enumerate(rates):
        reqs = trace_for(setup, trace, rate, duration_s, seed)
        send = [r for r in reqs if r.model in models]
        missed = measure.unserved([r for r in reqs if r.model not in models], i, "des")
        ctl = static_pools(cfg, serving) if system == "static" else controller(DES_SYSTEM[system], send, duration_s)
        sim = Simulator(models, cfg.gpu_count, gpu_bytes, ctl)
        wall = sim.run(send)
        recs = sorted(records(sim.reqs, i, setup.slos) + missed, key=lambda r: r.id)
        if records_out is not None:
            records_out.append(recs)
        points.append(
            {
                "rate": rate,
                "label": f"{'rate' if trace == 'synthetic' else 'scale'} {rate:g}",
                "offered_rate_rps": len(reqs) / duration_s,
                "trace": describe(reqs, duration_s),
                "trace_digest": measure.digest(reqs),
                "sent": len(send),
                "unserved": len(missed),
                "wall_s": wall,
                **summarize_run(recs, duration_s),
                "chimera": {
                    "wakes": sim.counters.wakes,
                    "parks": sim.counters.parks,
                    "shed_client": sum(r.shed for r in sim.reqs),
                    "retractions": sum(s.retractions for s in sim.servers.values()),
                    "counters": asdict(sim.counters),
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
        "served": serving,
        "unserved": [m for m in setup.models if m not in serving],
        "duration_per_rate_s": duration_s,
        "rates": points,
        "max_rate_at_99": measure.max_rate_at(pts),
    }
