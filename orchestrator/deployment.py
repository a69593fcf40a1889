"""The deployment: every runtime fact a placements file implies, derived once from the
``Config`` (``derive``) and handed down from ``app.serve`` and the CLI, so that no component
re-reads the file its own way. Pure: no I/O, no clock.

Per model: what one of its servers costs (``ServerCost``, its KV floor being the largest
``kv_floor_gb`` of its placements), its latency model and its SLOs with their defaults, and what
the admission gate does with a request past its TTFT deadline. Per instance: its own cost (its
own floor), what ``up`` does with it, whether cumem_shim backs its KV pool (and if not, why,
and how large its fixed pool is), its KV ceiling and its start-up limit.

What ``up`` does with an instance: every instance that ``starts_on_up`` is started at once
(placements ``on: true``; in mode ``full`` every placement, so that a parked server is ready to
wake); one that does not ``serve_on_up`` (``on: false`` in mode full) is parked as soon as it is
awake and idle (``warm_start_park``), others stay awake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.config import GIB, Config, HostSpec, InstanceSpec, ModelSpec
from orchestrator.perf.cost import ServerCost, server_cost
from orchestrator.perf.model import LatencyModel
from orchestrator.policy.placement.cluster import PlacementParams
from orchestrator.types import Mode, OnLate

# Fallback when neither the ledger nor the placements file sizes the KV pool. SGLang reads it as
# a fraction of the memory free *when this server starts* (weights + KV; the rest is slack for
# activations and CUDA graphs), so the first server on an 80 GB GPU takes ~40 GB and a server
# started after it half of what is left: room stays for colocated models, at the price of a
# pool size that depends on start order. The supervisor should pass ``kv_bytes`` instead.
DEFAULT_MEM_FRACTION_STATIC = 0.5
# Weights bigger than the default fraction get this much on top of them (activations, graphs).
MEM_FRACTION_HEADROOM = 0.1
MAX_MEM_FRACTION_STATIC = 0.9

START_LIMIT_BYTES = 1 * GIB  # a shim's limit until the ledger's first split (a second after start)
MIN_POOL_BYTES = 1 * GIB  # the least KV ceiling an instance gets, however full its GPU


def default_mem_fraction(model: ModelSpec, host: HostSpec) -> float:
    """``--mem-fraction-static`` of a server whose pool nothing sizes: the default fraction,
    raised for weights that would not fit in it (e.g. 70B on TP 2)."""
    weights = model.shape.weight_bytes / model.tp_size / (host.gpu_memory_gb * GIB)
    return min(MAX_MEM_FRACTION_STATIC, max(DEFAULT_MEM_FRACTION_STATIC,
                                            weights + MEM_FRACTION_HEADROOM))


def ledger_enabled(mode: Mode) -> bool:
    """static: fixed pools, no shim; elastic and full: the KV ledger moves KV between models."""
    return mode in ("elastic", "full")


def shim_refusal(spec: InstanceSpec) -> str | None:
    """Why this instance cannot run with the shim (a fixed KV pool), or None. The shim backs
    single-rank pools only: every rank would have to change its limit in the same step."""
    if spec.model.tp_size > 1:
        return (f"TP {spec.model.tp_size}: the shim backs single-rank KV pools only; this "
                "instance keeps a fixed pool")
    return None


@dataclass(frozen=True)
class ModelFacts:
    spec: ModelSpec
    cost: ServerCost  # per GPU; KV floor: the largest kv_floor_gb of its placements, else the default
    latency: LatencyModel
    ttft_slo_s: float  # the file's slo.ttft_s, else the default (orders admission, never sheds)
    tpot_slo_s: float
    on_late: OnLate  # a request past its TTFT deadline: shed only when the file sets slo.ttft_s


@dataclass(frozen=True)
class InstanceFacts:
    spec: InstanceSpec
    cost: ServerCost  # per GPU, with this placement's own KV floor
    starts_on_up: bool  # started by `up` (the start-up policy's input)
    serves_on_up: bool  # stays awake after `up` (placements `on`)
    shim: bool  # cumem_shim backs its KV pool and the ledger sets its limit
    shim_refusal: str | None  # in a ledger mode, why it runs without the shim
    floor_bytes: int  # placements kv_floor_gb (0: none): KV it keeps whatever others need
    ceiling_bytes: int  # the most KV it may map: kv_pool_gb, else its GPU beside its own cost
    start_limit_bytes: int  # its shim's limit before the ledger's first split
    fixed_pool_bytes: int  # KV over its group without the shim (never resized); 0 with the shim
    mem_fraction_static: float  # what SGLang is given when nothing sizes its pool

    @property
    def warm_start_park(self) -> bool:
        """Started by `up` only to be parked once awake and idle (ready to wake fast)."""
        return self.starts_on_up and not self.serves_on_up

    @property
    def awake_bytes(self) -> int:
        """Everything but elastic KV it holds on each GPU while it holds its weights."""
        return self.cost.held_awake_bytes + self.fixed_pool_bytes // self.spec.model.tp_size

    @property
    def parked_bytes(self) -> int:
        """What it holds on each GPU while parked (its fixed pool is released with it)."""
        return self.cost.parked_bytes


@dataclass(frozen=True)
class Deployment:
    config: Config
    models: Mapping[str, ModelFacts]  # by model name
    instances: Mapping[str, InstanceFacts]  # by instance id, in file order
    placement_params: PlacementParams

    @property
    def mode(self) -> Mode:
        return self.config.mode

    @property
    def timesharing(self) -> bool:
        """Mode full: the global scheduler parks and wakes servers."""
        return self.config.mode == "full"

    @property
    def ledger(self) -> bool:
        return ledger_enabled(self.config.mode)

    @property
    def gpu_bytes(self) -> int:
        """Capacity of each GPU of the host."""
        return int(self.config.host.gpu_memory_gb * GIB)

    def costs(self) -> dict[str, ServerCost]:
        return {name: m.cost for name, m in self.models.items()}

    def shimmed(self) -> frozenset[str]:
        return frozenset(iid for iid, f in self.instances.items() if f.shim)


def derive(cfg: Config) -> Deployment:
    models = {m.name: _model(cfg, m) for m in cfg.models}
    instances = {i.id: _instance(cfg, i) for i in cfg.instances}
    return Deployment(cfg, models, instances, PlacementParams(
        tau=cfg.scheduler.tau, max_awake_per_gpu=cfg.scheduler.max_awake_per_gpu))


def _model(cfg: Config, m: ModelSpec) -> ModelFacts:
    floors = [p.kv_floor_gb for p in m.placements if p.kv_floor_gb is not None]
    cost = server_cost(m.shape, m.tp_size, int(max(floors) * GIB) if floors else None)
    on_late: OnLate = "shed" if m.slo.ttft_s is not None and cfg.scheduler.on_late == "shed" else "serve"
    return ModelFacts(m, cost, LatencyModel(m.shape, m.tp_size), m.slo.ttft_or_default,
                      m.slo.tpot_or_default, on_late)


def _instance(cfg: Config, spec: InstanceSpec) -> InstanceFacts:
    model, placement, host = spec.model, spec.placement, cfg.host
    floor_gb = placement.kv_floor_gb
    cost = server_cost(model.shape, model.tp_size, int(floor_gb * GIB) if floor_gb is not None else None)
    refusal = shim_refusal(spec) if ledger_enabled(cfg.mode) else None
    shim = ledger_enabled(cfg.mode) and refusal is None
    fraction = default_mem_fraction(model, host)
    if placement.kv_pool_gb is not None:
        ceiling = int(placement.kv_pool_gb * GIB)
    else:  # the virtual range SGLang sizes its pool for
        ceiling = max(MIN_POOL_BYTES, int(host.gpu_memory_gb * GIB) - cost.held_awake_bytes)
    floor = int((floor_gb or 0) * GIB)
    return InstanceFacts(
        spec=spec, cost=cost,
        starts_on_up=placement.on or cfg.mode == "full", serves_on_up=placement.on,
        shim=shim, shim_refusal=refusal, floor_bytes=floor, ceiling_bytes=ceiling,
        start_limit_bytes=min(ceiling, max(floor, START_LIMIT_BYTES)),
        fixed_pool_bytes=0 if shim else _fixed_pool(spec, host, fraction),
        mem_fraction_static=fraction)


def _fixed_pool(spec: InstanceSpec, host: HostSpec, fraction: float) -> int:
    """KV a server without the shim holds across its group: ``kv_pool_gb``, else what SGLang
    takes with ``fraction`` of each GPU (weights and pool share it)."""
    if spec.placement.kv_pool_gb is not None:
        return int(spec.placement.kv_pool_gb * GIB)
    per_gpu = fraction * host.gpu_memory_gb * GIB
    return max(0, int(per_gpu * spec.model.tp_size) - spec.model.shape.weight_bytes)
