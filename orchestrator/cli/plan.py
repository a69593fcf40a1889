"""``chimera-orch plan FILE``: a dry run of the global scheduler on a placements file.

Prints each GPU's memory budget (weights, KV floor, runtime overhead of every instance parked
and awake), flags files that cannot work (with the reason), and with ``--rates`` shows where
the global policy (orchestrator/policy/placement/place.py) would wake what for that request mix
and the KV Pressure Ratio of each GPU (KV limits are not shown: the KV ledger sets them live
from measured load). Costs and what starts at ``up`` are the deployment's facts
(orchestrator/deployment.py), costs from the cost model (orchestrator/perf/cost.py: each server
as the deployment starts it), the same the live scheduler, the KV ledger and the simulator count
with.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from orchestrator.config import GIB, Config, load_config
from orchestrator.deployment import Deployment, derive
from orchestrator.env import Env
from orchestrator.perf import calibration as cal
from orchestrator.perf.model import LatencyModel
from orchestrator.perf.sharing import resolve
from orchestrator.policy.placement import place
from orchestrator.policy.placement.cluster import (
    Activation,
    ClusterView,
    Migration,
    ModelDemand,
    Park,
    PlacementDecision,
    ServerView,
    Wake,
)
from orchestrator.policy.placement.kvpr import GpuTally
from orchestrator.pools.router import pool_costs
from orchestrator.supervisor.mps import find_control
from orchestrator.types import InstanceState, gpu_label

EXIT_IMPOSSIBLE = 2


@dataclass(frozen=True)
class Problem:
    gpu: int | None
    text: str


def problems(dep: Deployment) -> list[Problem]:
    """Why a placements file cannot work on its GPUs (empty: it can)."""
    cfg, cap = dep.config, dep.gpu_bytes
    out: list[Problem] = []
    for g in range(cfg.gpu_count):
        here = [f for f in dep.instances.values() if g in f.spec.gpus]
        costs = [(f.spec, f.cost) for f in here]
        contexts = sum(c.parked_bytes for _, c in costs)
        for i, c in costs:
            need = contexts + c.awake_bytes + c.kv_floor_bytes
            if need > cap:
                out.append(
                    Problem(
                        g,
                        f"{i.id} can never wake on GPU {g}: it needs {_gb(c.awake_bytes)} "
                        f"awake + {_gb(c.kv_floor_bytes)} KV floor, and the CUDA contexts "
                        f"of the {len(here)} servers there take {_gb(contexts)} of "
                        f"{_gb(cap)} (raise tp_size, move servers, or lower kv_floor_gb)",
                    )
                )
        at_start = [f.cost for f in here if f.serves_on_up]
        need = contexts + sum(c.awake_bytes + c.kv_floor_bytes for c in at_start)
        if at_start and need > cap and not dep.timesharing:
            out.append(
                Problem(
                    g,
                    f"GPU {g}: the instances that start awake need {_gb(need)} "
                    f"(> {_gb(cap)}); set `on: false` on some or use mode: full",
                )
            )
    return out


def cluster_view(dep: Deployment, rates: dict[str, float], tokens_per_request: float) -> ClusterView:
    """Every placement parked; demand from ``rates`` (requests/s per model)."""
    cfg = dep.config
    models = tuple(
        ModelDemand(
            name=m.name,
            tp_size=m.tp_size,
            cost=dep.models[m.name].cost,
            tpot_slo_s=dep.models[m.name].tpot_slo_s,
            token_rate=rates.get(m.name, 0.0) * tokens_per_request,
            request_rate=rates.get(m.name, 0.0),
            queued=1 if rates.get(m.name, 0.0) > 0 else 0,
            idle_park_s=m.idle.park_after_s,
            park_when=m.idle.when,
            priority=m.priority,
            # one request's decode step (a TP server's holds every GPU of its group): the TPOT
            # guard's rounds with each model decoding, its activity unknown (the worst case)
            step_s=LatencyModel(m.shape, m.tp_size).decode_time([int(tokens_per_request)])
            if rates.get(m.name, 0.0) > 0
            else 0.0,
        )
        for m in cfg.models
    )
    servers = tuple(ServerView(i.id, i.model.name, i.gpus, InstanceState.PARKED) for i in cfg.instances)
    return ClusterView(models, servers, (dep.gpu_bytes,) * cfg.gpu_count, dep.placement_params)


def parse_rates(text: str | None, cfg: Config) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, _, val = part.partition("=")
        spec = cfg.model(name.strip())
        if spec is None:
            raise SystemExit(f"--rates: unknown model {name.strip()!r} (known: {', '.join(cfg.names())})")
        try:
            out[spec.name] = float(val)
        except ValueError:
            raise SystemExit(f"--rates: {part!r} is not model=requests_per_second") from None
    return out


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    con = console or Console()
    cfg = load_config(args.file, gpu_count=args.gpus)  # ConfigError is reported by cli.main
    # host.gpu_sharing as `up --engine sglang` would resolve it on this host (supervisor/mps.py)
    sharing, why = resolve(cfg.host.gpu_sharing, "sglang", find_control(Env.read().mps_control) is not None)
    dep = derive(cfg, sharing=sharing)
    con.print(f"GPU sharing: {'MPS' if sharing == 'mps' else 'time-slicing'} ({why})", highlight=False)
    _budget_table(dep, con)
    _pools_table(dep, con)
    found = problems(dep)
    for pr in found:
        con.print(f"[bold red]impossible:[/] {pr.text}", highlight=False)
    if args.rates is not None:
        _placement_table(dep, parse_rates(args.rates, cfg), args.tokens_per_request, con)
    if found:
        return EXIT_IMPOSSIBLE
    con.print(
        f"[green]{args.file}: fits[/] ({len(cfg.instances)} instances on {cfg.gpu_count} GPU(s); "
        f"SIMULATED H100 memory model, {cal.ACCELERATOR_NAME})"
    )
    return 0


def _budget_table(dep: Deployment, con: Console) -> None:
    cfg = dep.config
    t = Table(title=f"memory budget per GPU ({cfg.host.gpu_memory_gb:g} GB each; parked = CUDA context only)")
    for col in ("GPU", "instance", "weights", "KV floor", "overhead", "parked", "awake"):
        t.add_column(col, justify="left" if col == "instance" else "right")
    for g in range(cfg.gpu_count):
        here = [i for i in cfg.instances if g in i.gpus]
        parked_total = 0
        for i in here:
            c = dep.instances[i.id].cost
            weights = i.model.shape.weight_bytes // i.model.tp_size
            overhead = c.parked_bytes + c.awake_bytes - weights
            parked_total += c.parked_bytes
            t.add_row(
                str(g),
                i.id,
                _gb(weights),
                _gb(c.kv_floor_bytes),
                _gb(overhead),
                _gb(c.parked_bytes),
                _gb(c.parked_bytes + c.awake_bytes + c.kv_floor_bytes),
            )
        t.add_row(str(g), "[bold]all parked[/]", "", "", "", _gb(parked_total), "", end_section=True)
    con.print(t)


def _pools_table(dep: Deployment, con: Console) -> None:
    """Shape pools (docs/pools.md) and LoRA bases: which servers serve which models, and what a
    switch costs on the cost model."""
    cfg = dep.config
    if cfg.pools:
        t = Table(title="shape pools (models with no server of their own; SIMULATED costs)")
        for col in ("pool", "shape", "servers", "models", "checkpoints", "re-target", "wake", "cold start"):
            t.add_column(col)
        for p in cfg.pools:
            c = dep.models[p.slots[0]].cost
            switch = pool_costs(dep, p.name)
            servers = ", ".join(i.id for i in cfg.instances if i.model.slot_of == p.name)
            paths = {m.model_path for m in cfg.models if m.pool == p.name}
            t.add_row(
                p.name,
                p.shape.name,
                servers,
                str(len(p.members)),
                str(len(paths)),
                f"{switch.retarget_s:.2f} s" + (" (pinned)" if p.stage == "pinned" else ""),
                f"{switch.wake_s:.2f} s",
                f"{c.cold_start_s:.0f} s",
            )
        con.print(t)
    bases = [m for m in cfg.models if m.lora is not None]
    for b in bases:
        adapters = [m.name for m in cfg.models if m.base == b.name]
        assert b.lora is not None
        con.print(
            f"LoRA: {b.name} serves {len(adapters)} adapter(s), at most {b.lora.max_loaded} loaded per server "
            f"({b.lora.max_loras_per_batch} per batch, rank <= {b.lora.max_lora_rank})",
            highlight=False,
        )


def _placement_table(dep: Deployment, rates: dict[str, float], tpr: float, con: Console) -> None:
    view = cluster_view(dep, rates, tpr)
    d = place.decide(view, 0.0)
    t = Table(title="placement the global scheduler would choose (all servers parked at start)")
    for col in ("model", "req/s", "GPU(s)", "steps"):
        t.add_column(col)
    for a in d.actions:
        if not isinstance(a, Activation):
            continue
        steps = " → ".join(type(s).__name__.lower() + " " + getattr(s, "server", "") for s in a.steps).replace(
            "route ", "route"
        )
        t.add_row(a.model, f"{rates.get(a.model, 0):g}", "+".join(map(str, a.gpus)), steps)
    for b in d.blocked:
        t.add_row(b.model, f"{rates.get(b.model, 0):g}", "[red]blocked[/]", b.reason)
    con.print(t)
    con.print(
        "KV pressure ratio per GPU (SIMULATED costs): " + ", ".join(f"GPU {g}: {r:.3g}" for g, r in enumerate(d.kvpr)),
        highlight=False,
    )
    _after_table(view, d, con)


def after(view: ClusterView, d: PlacementDecision) -> ClusterView:
    """The snapshot once the decision's steps have run: woken servers awake, victims parked."""
    state = {s.id: s.state for s in view.servers}
    for a in d.actions:
        for st in a.steps:
            if isinstance(st, Park):
                state[st.server] = InstanceState.PARKED
            elif isinstance(st, Wake):
                state[st.server] = InstanceState.AWAKE
        if isinstance(a, Migration):
            state[a.source] = InstanceState.PARKED
    servers = tuple(ServerView(s.id, s.model, s.gpus, state[s.id]) for s in view.servers)
    return ClusterView(view.models, servers, view.gpu_bytes, view.params)


def _after_table(view: ClusterView, d: PlacementDecision, con: Console) -> None:
    """Per GPU after the placement: what is awake there (a TP group on each GPU it spans), the
    memory it holds, the KV pressure and the decode round that the TPOT guard counts."""
    led = GpuTally(after(view, d))
    t = Table(title="each GPU after the placement (a TP group counts on every GPU it spans)")
    for col in ("GPU", "awake", "held", "free for KV", "KVPR", "decode round"):
        t.add_column(col, justify="left" if col == "awake" else "right")
    for g, cap in enumerate(view.gpu_bytes):
        awake = [
            sid if len(led.servers[sid].gpus) == 1 else f"{sid} (TP {len(led.servers[sid].gpus)})"
            for sid in led.on_gpu[g]
            if led.state[sid] is InstanceState.AWAKE
        ]
        held = cap - led.room[g]
        t.add_row(
            str(g),
            ", ".join(awake) or "-",
            _gb(held),
            _gb(led.free(g)),
            f"{led.ratio(g):.3g}",
            f"{led.round_s[g] * 1000:.1f} ms",
        )
    con.print(t)
    groups = sorted({s.gpus for s in led.servers.values() if len(s.gpus) > 1})
    if groups:
        con.print("TP groups: " + ", ".join(f"GPU {gpu_label(grp)}" for grp in groups), highlight=False)


def _gb(b: float) -> str:
    return f"{b / GIB:.1f} GiB"
