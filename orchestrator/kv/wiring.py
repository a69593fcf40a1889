"""Where the elastic-KV pieces meet the running system: which instances get the shim and with
what start-up limit (``shim_launch``, used by the supervisor before a spawn), and the ledger's
view of every instance (``kv_instances``, read by the runner once per step). Pure.

An instance gets the shim in modes ``elastic`` and ``full`` when its KV pool is one the shim can
back: one rank (TP 1; every rank would have to change its limit in the same scheduler step).
Others keep a fixed pool (``kv_pool_gb`` or the engine default) and count on their GPU as
non-KV memory, so the ledger never hands their memory to a neighbour.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from orchestrator.config import GIB, HostSpec, InstanceSpec
from orchestrator.engines.base import ShimLaunch
from orchestrator.kv.ledger import KVInstance
from orchestrator.perf.cost import AWAKE_OVERHEAD_BYTES
from orchestrator.sglang.launch import default_mem_fraction
from orchestrator.types import InstanceState, InstanceView

START_LIMIT_BYTES = 1 * GIB  # until the ledger's first split (a second after the server is up)
MIN_POOL_BYTES = 1 * GIB
# holding or about to hold KV: the ledger splits among these; parked ones get limit 0
RESIDENT = frozenset({InstanceState.PENDING, InstanceState.STARTING, InstanceState.AWAKE,
                      InstanceState.WAKING})
# still holding weights and runtime: a parking instance until SGLang's release is done
HOLDS_WEIGHTS = RESIDENT | {InstanceState.PARKING}
GONE = frozenset({InstanceState.FAILED, InstanceState.STOPPED})


def ledger_enabled(mode: str) -> bool:
    """static: fixed pools, no shim; elastic and full: the ledger moves KV between models."""
    return mode in ("elastic", "full")


def shim_refusal(spec: InstanceSpec) -> str | None:
    """Why this instance runs without the shim (a fixed KV pool), or None."""
    if spec.model.tp_size > 1:
        return (f"TP {spec.model.tp_size}: the shim backs single-rank KV pools only; this "
                "instance keeps a fixed pool")
    return None


def wants_shim(mode: str, spec: InstanceSpec) -> bool:
    return ledger_enabled(mode) and shim_refusal(spec) is None


def ceiling_bytes(spec: InstanceSpec, host: HostSpec) -> int:
    """The most KV this instance may ever map: ``kv_pool_gb`` when set, else what its GPU has
    left beside its own weights and runtime (the virtual range SGLang sizes its pool for)."""
    if spec.placement.kv_pool_gb is not None:
        return int(spec.placement.kv_pool_gb * GIB)
    free = int(host.gpu_memory_gb * GIB) - spec.model.shape.weight_bytes - AWAKE_OVERHEAD_BYTES
    return max(MIN_POOL_BYTES, free)


def shim_launch(spec: InstanceSpec, host: HostSpec, socket: str,
                entry_point_dir: str | None) -> ShimLaunch:
    ceiling = ceiling_bytes(spec, host)
    floor = int((spec.placement.kv_floor_gb or 0) * GIB)
    start = min(ceiling, max(floor, START_LIMIT_BYTES))
    return ShimLaunch(socket=socket, limit_bytes=start, virtual_kv_bytes=ceiling,
                      entry_point_dir=entry_point_dir)


def fixed_pool_bytes(spec: InstanceSpec, host: HostSpec) -> int:
    """KV a server without the shim holds across its group: ``kv_pool_gb``, else what SGLang
    takes with the engine's default ``--mem-fraction-static`` (weights and pool share it)."""
    if spec.placement.kv_pool_gb is not None:
        return int(spec.placement.kv_pool_gb * GIB)
    model = spec.model
    per_gpu = default_mem_fraction(model, host) * host.gpu_memory_gb * GIB
    return max(0, int(per_gpu * model.tp_size) - model.shape.weight_bytes)


def kv_instances(views: Iterable[InstanceView], specs: Mapping[str, InstanceSpec],
                 shimmed: Collection[str], host: HostSpec) -> list[KVInstance]:
    """The ledger's instances: every live one, per GPU. Instances that run with the shim
    (``shimmed``, whether or not it is up yet) get limits; the others count their weights and
    fixed pool as non-KV memory."""
    out = []
    for v in views:
        if v.state in GONE:
            continue
        spec = specs[v.id]
        model = spec.model
        weights = model.shape.weight_bytes // model.tp_size
        if v.id not in shimmed:  # a fixed pool: never resized, counted as not KV
            weights += fixed_pool_bytes(spec, host) // model.tp_size
        for gpu in v.gpus:
            out.append(KVInstance(
                id=v.id, gpu=gpu, token_bytes=model.shape.kv_bytes_per_token,
                weight_bytes=weights,
                floor_bytes=int((spec.placement.kv_floor_gb or 0) * GIB),
                ceiling_bytes=ceiling_bytes(spec, host), priority=model.priority,
                resident=v.state in RESIDENT, holds_weights=v.state in HOLDS_WEIGHTS))
    return out
