"""The per-GPU memory ledger: what each instance holds on each of its GPUs, by state.

capacity − Σ footprints = room. An awake instance holds its weights share, its KV pool and a
runtime overhead (CUDA context, NCCL, CUDA graphs, activations); a parked one keeps only its
process's context. Numbers measured on the H100 with stock SGLang 0.5.17 (gpu.md): a parked
server holds 1.5-2.4 GB; CUDA graphs of an 8B shape take 1.43 GB.
"""

from __future__ import annotations

from orchestrator.control.api import InstanceState
from orchestrator.policy.types import FootprintView, InstanceSnapshot

GIB = 1 << 30
PARKED_BYTES = int(2.4 * GIB)  # measured upper end: 2,362 MiB for the 8B shape parked
AWAKE_OVERHEAD_BYTES = int(4.0 * GIB)  # context (2.4) + graphs (1.43 for 8B) + activations slack

S = InstanceState
_HOLDS_AWAKE = frozenset({S.PENDING, S.STARTING, S.AWAKE, S.WAKING, S.PARKING})


def footprint(weight_bytes: int, tp_size: int, kv_pool_bytes: int) -> FootprintView:
    """Per-GPU bytes of one instance awake and parked."""
    per_gpu = weight_bytes // tp_size + kv_pool_bytes // tp_size + AWAKE_OVERHEAD_BYTES
    return FootprintView(awake_bytes=per_gpu, parked_bytes=PARKED_BYTES)


def held_bytes(inst: InstanceSnapshot) -> int:
    """What the instance holds on each of its GPUs now (a parking one still holds all)."""
    if inst.state in _HOLDS_AWAKE:
        return inst.footprint.awake_bytes
    if inst.state is S.PARKED:
        return inst.footprint.parked_bytes
    return 0


def room(instances: tuple[InstanceSnapshot, ...], capacity: dict[int, int]) -> dict[int, int]:
    """Free bytes per GPU (may be negative when over-committed)."""
    free = dict(capacity)
    for inst in instances:
        for g in inst.gpus:
            free[g] = free.get(g, 0) - held_bytes(inst)
    return free
