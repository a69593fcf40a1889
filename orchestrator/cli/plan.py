"""``chimera-orch plan FILE``: a dry run of the global scheduler on a placements file.

Prints each GPU's memory budget (weights, KV floor, runtime overhead of every instance parked
and awake), flags files that cannot work (with the reason), and with ``--rates`` shows where
the global policy (orchestrator/policy/placement/place.py) would wake what for that request mix
and the KV Pressure Ratio of each GPU (KV limits are not shown: the KV ledger sets them live
from measured load). Costs come from the H100 memory and latency model of the sim engine
(orchestrator/perf/model.py, calibration.py), so this is also the one place that turns a shape
into a ``ServerCost`` (bench/sim uses it too).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from orchestrator.config import Config, ModelSpec, load_config
from orchestrator.perf import calibration as cal
from orchestrator.perf.model import LatencyModel, kv_bytes_per_token_per_gpu, plan_memory
from orchestrator.policy.placement import place
from orchestrator.policy.placement.cluster import Activation, ClusterView, ModelDemand, ServerCost, ServerView
from orchestrator.shapes import ModelShape
from orchestrator.types import InstanceState

GIB = 1 << 30
COLD_START_S = 65.0  # [measured] stock SGLang 0.5.17 cold start on the H100, warm caches (gpu.md)
# [assumed] activation workspace of one awake server beside weights and CUDA graphs, with
# colocated servers run at --chunked-prefill-size 2048; re-measure on the H100.
ACTIVATION_BYTES = 1 * GIB
DEFAULT_KV_FLOOR_TOKENS = 8192  # a server is never woken with room for less than this
EXIT_IMPOSSIBLE = 2


def server_cost(shape: ModelShape, tp_size: int = 1, kv_floor_bytes: int | None = None) -> ServerCost:
    """Per-GPU cost of one server of ``shape`` (H100 model). ``plan_memory`` is asked with a
    GPU large enough never to refuse: only its per-server constants are used here."""
    mem = plan_memory(shape, tp_size=tp_size, gpu_memory_gb=10_000.0)
    lat = LatencyModel(shape, tp_size)
    per_token = kv_bytes_per_token_per_gpu(shape, tp_size)
    moved = ["weights", "cuda_graph"]
    return ServerCost(
        parked_bytes=mem.context_bytes,
        awake_bytes=mem.weight_bytes + mem.cuda_graph_bytes + ACTIVATION_BYTES,
        kv_bytes_per_token=per_token,
        kv_floor_bytes=kv_floor_bytes if kv_floor_bytes is not None else DEFAULT_KV_FLOOR_TOKENS * per_token,
        wake_s=lat.resume_time(mem, moved),
        park_s=lat.release_time(mem, moved, first=False),
        cold_start_s=COLD_START_S,
    )


@dataclass(frozen=True)
class Problem:
    gpu: int | None
    text: str


def _cost(m: ModelSpec, floor_gb: float | None) -> ServerCost:
    floor = int(floor_gb * GIB) if floor_gb is not None else None
    return server_cost(m.shape, m.tp_size, floor)


def problems(cfg: Config) -> list[Problem]:
    """Why a placements file cannot work on its GPUs (empty: it can)."""
    cap = int(cfg.host.gpu_memory_gb * GIB)
    out: list[Problem] = []
    for g in range(cfg.gpu_count):
        here = [i for i in cfg.instances if g in i.gpus]
        costs = [(i, _cost(i.model, i.placement.kv_floor_gb)) for i in here]
        contexts = sum(c.parked_bytes for _, c in costs)
        for i, c in costs:
            need = contexts + c.awake_bytes + c.kv_floor_bytes
            if need > cap:
                out.append(Problem(g, f"{i.id} can never wake on GPU {g}: it needs {_gb(c.awake_bytes)} "
                                      f"awake + {_gb(c.kv_floor_bytes)} KV floor, and the CUDA contexts "
                                      f"of the {len(here)} servers there take {_gb(contexts)} of "
                                      f"{_gb(cap)} (raise tp_size, move servers, or lower kv_floor_gb)"))
        at_start = [(i, c) for i, c in costs if i.placement.on]
        need = contexts + sum(c.awake_bytes + c.kv_floor_bytes for _, c in at_start)
        if at_start and need > cap and cfg.mode != "full":
            out.append(Problem(g, f"GPU {g}: the instances that start awake need {_gb(need)} "
                                  f"(> {_gb(cap)}); set `on: false` on some or use mode: full"))
    return out


def cluster_view(cfg: Config, rates: dict[str, float], tokens_per_request: float) -> ClusterView:
    """Every placement parked; demand from ``rates`` (requests/s per model)."""
    models = tuple(
        ModelDemand(name=m.name, tp_size=m.tp_size, cost=_cost(m, _floor(m)),
                    tpot_slo_s=m.slo.tpot_or_default,
                    token_rate=rates.get(m.name, 0.0) * tokens_per_request,
                    queued=1 if rates.get(m.name, 0.0) > 0 else 0,
                    idle_park_s=m.idle.park_after_s, park_when=m.idle.when,
                    priority=m.priority)
        for m in cfg.models)
    servers = tuple(ServerView(i.id, i.model.name, i.gpus, InstanceState.PARKED) for i in cfg.instances)
    cap = int(cfg.host.gpu_memory_gb * GIB)
    return ClusterView(models, servers, (cap,) * cfg.gpu_count)


def _floor(m: ModelSpec) -> float | None:
    floors = [p.kv_floor_gb for p in m.placements if p.kv_floor_gb is not None]
    return max(floors) if floors else None


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


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "plan", help="dry run: each GPU's memory budget and where the global scheduler would wake what",
        description="Print each GPU's memory budget (weights, KV floor, runtime overhead of every "
        "instance, parked and awake; H100 model of the sim engine), flag placements that cannot "
        "work, and with --rates show the placement the global scheduler would choose. Exit code 2 "
        "when the file is invalid or impossible.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--gpus", type=int, default=None, help="GPUs of the target host")
    p.add_argument("--rates", default=None, metavar="MODEL=REQ/S,...",
                   help="request rate per model, e.g. llama-8b=4,qwen-7b=0.5")
    p.add_argument("--tokens-per-request", type=float, default=520.0,
                   help="prompt + output tokens per request, to turn rates into token rates "
                   "(default: %(default)s, Prism's synthetic mean)")


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    con = console or Console()
    cfg = load_config(args.file, gpu_count=args.gpus)  # ConfigError is reported by cli.main
    _budget_table(cfg, con)
    found = problems(cfg)
    for pr in found:
        con.print(f"[bold red]impossible:[/] {pr.text}", highlight=False)
    if args.rates is not None:
        _placement_table(cfg, parse_rates(args.rates, cfg), args.tokens_per_request, con)
    if found:
        return EXIT_IMPOSSIBLE
    con.print(f"[green]{args.file}: fits[/] ({len(cfg.instances)} instances on {cfg.gpu_count} GPU(s); "
              f"SIMULATED H100 memory model, {cal.ACCELERATOR_NAME})")
    return 0


def _budget_table(cfg: Config, con: Console) -> None:
    t = Table(title=f"memory budget per GPU ({cfg.host.gpu_memory_gb:g} GB each; parked = CUDA context only)")
    for col in ("GPU", "instance", "weights", "KV floor", "overhead", "parked", "awake"):
        t.add_column(col, justify="left" if col == "instance" else "right")
    for g in range(cfg.gpu_count):
        here = [i for i in cfg.instances if g in i.gpus]
        parked_total = 0
        for i in here:
            c = _cost(i.model, i.placement.kv_floor_gb)
            weights = i.model.shape.weight_bytes // i.model.tp_size
            overhead = c.parked_bytes + c.awake_bytes - weights
            parked_total += c.parked_bytes
            t.add_row(str(g), i.id, _gb(weights), _gb(c.kv_floor_bytes), _gb(overhead),
                      _gb(c.parked_bytes), _gb(c.parked_bytes + c.awake_bytes + c.kv_floor_bytes))
        t.add_row(str(g), "[bold]all parked[/]", "", "", "", _gb(parked_total), "", end_section=True)
    con.print(t)


def _placement_table(cfg: Config, rates: dict[str, float], tpr: float, con: Console) -> None:
    view = cluster_view(cfg, rates, tpr)
    d = place.decide(view, 0.0)
    t = Table(title="placement the global scheduler would choose (all servers parked at start)")
    for col in ("model", "req/s", "GPU(s)", "steps"):
        t.add_column(col)
    for a in d.actions:
        if not isinstance(a, Activation):
            continue
        steps = " → ".join(type(s).__name__.lower() + " " + getattr(s, "server", "")
                           for s in a.steps).replace("route ", "route")
        t.add_row(a.model, f"{rates.get(a.model, 0):g}", "+".join(map(str, a.gpus)), steps)
    for b in d.blocked:
        t.add_row(b.model, f"{rates.get(b.model, 0):g}", "[red]blocked[/]", b.reason)
    con.print(t)
    con.print("KV pressure ratio per GPU (SIMULATED costs): "
              + ", ".join(f"GPU {g}: {r:.3g}" for g, r in enumerate(d.kvpr)), highlight=False)


def _gb(b: float) -> str:
    return f"{b / GIB:.1f} GiB"
