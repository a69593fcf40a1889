"""THE cost of one server on each GPU of its group, by state: the one figure that placement
(``chimera-orch plan``, the global scheduler, bench/sim) and the KV ledger (orchestrator/kv/)
both count with.

A parked server keeps only its process's CUDA context (NCCL, allocator slack); an awake one
adds its share of the weights, its CUDA graphs and an activation workspace. Everything else on
the GPU is KV. The figures come from the calibrated H100 memory model (model.py
``plan_memory``, calibration.py): a context of 2,362 MiB and CUDA graphs of 1.43 GiB, both
measured for the 8B shape and used as is for every shape until they are measured per shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.perf import calibration as cal
from orchestrator.perf.model import LatencyModel, kv_bytes_per_token_per_gpu, plan_memory
from orchestrator.shapes import ModelShape

GIB = cal.GIB
COLD_START_S = 65.0  # [measured] stock SGLang 0.5.17 cold start on the H100, warm caches
# [assumed] activation workspace of one awake server beside weights and CUDA graphs, with
# colocated servers run at --chunked-prefill-size 2048; re-measure on the H100.
ACTIVATION_BYTES = 1 * GIB
DEFAULT_KV_FLOOR_TOKENS = 8192  # a server is never woken with room for less than this


@dataclass(frozen=True)
class ServerCost:
    """What one server of a model costs on each GPU of its group, and how long it takes to move.

    parked_bytes: held even when parked (CUDA context, NCCL, allocator slack). awake_bytes:
    added while awake (weights share, CUDA graphs, activation workspace). kv_floor_bytes: the
    least KV a server may be woken with."""

    parked_bytes: int
    awake_bytes: int
    kv_bytes_per_token: int
    kv_floor_bytes: int
    wake_s: float
    park_s: float
    cold_start_s: float
    # Re-target a pooled server to another model of the same shape: /update_weights_from_disk
    # reads the weights (page cache or disk) into the GPU (docs/pools.md).
    retarget_s: float = 0.0

    @property
    def held_awake_bytes(self) -> int:
        """Everything but KV an awake server holds on each GPU: its context and its awake part."""
        return self.parked_bytes + self.awake_bytes


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
        retarget_s=retarget_time(shape, tp_size),
    )


def retarget_time(shape: ModelShape, tp_size: int = 1) -> float:
    """``/update_weights_from_disk`` of a same-shape model: each rank reads its share of the
    weights at the calibrated disk (page-cache) bandwidth."""
    return cal.MEMORY_OP_OVERHEAD_S + shape.weight_bytes / tp_size / cal.DISK_LOAD_BW
