"""THE cost of one server on each GPU of its group, by state: the one figure that placement
(``chimera-orch plan``, the global scheduler, bench/sim) and the KV ledger (orchestrator/kv/)
both count with.

An awake server holds its share of the weights, its runtime (``runtime_bytes``: CUDA context
and buffers, CUDA graphs for its --cuda-graph-max-bs, SGLang's req_to_token pool for its request
slots; fitted per shape from the H200's measured footprints, calibration.py RUNTIME_BYTES) and
an activation workspace. A parked one keeps its CUDA context: calibration.py CONTEXT_BYTES, never
more than its awake runtime. Everything else on the GPU is KV.

The runtime depends on how the server is started: the graphs' batch sizes and the pool's tokens
(its request slots). The deployment knows both (orchestrator/deployment.py ``start_mem``) and
passes them; without them the cost is the upper bound (SGLang's default 256 batch sizes on
80-160 GB cards, the most request slots SGLang gives), which is what a server the deployment does
not size is charged.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.perf import calibration as cal
from orchestrator.perf.model import (
    LatencyModel,
    kv_bytes_per_token_per_gpu,
    plan_memory,
    req_to_token_bytes,
    request_slots,
)
from orchestrator.shapes import ModelShape

GIB = cal.GIB
COLD_START_S = 65.0  # [measured] stock SGLang 0.5.17 cold start on the H100, warm caches
# [assumed] activation workspace of one awake server beside weights and CUDA graphs, with
# colocated servers run at --chunked-prefill-size 2048; re-measure on the H100.
ACTIVATION_BYTES = 1 * GIB
DEFAULT_KV_FLOOR_TOKENS = 8192  # a server is never woken with room for less than this
# --cuda-graph-max-bs when the deployment does not choose it: SGLang's own default on 80-160 GB
# cards (calibration.py GPU_MEMORY_BRACKETS), the most the deployment ever passes.
DEFAULT_CUDA_GRAPH_MAX_BS = 256


@dataclass(frozen=True)
class ServerCost:
    """What one server of a model costs on each GPU of its group, and how long it takes to move.

    parked_bytes: held even when parked (CUDA context, NCCL, allocator slack). awake_bytes:
    added while awake (weights share, the rest of its runtime, activation workspace).
    kv_floor_bytes: the least KV a server may be woken with."""

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


def runtime_bytes(
    shape: ModelShape,
    cuda_graph_max_bs: int = DEFAULT_CUDA_GRAPH_MAX_BS,
    kv_tokens: int | None = None,
    slots: int | None = None,
) -> int:
    """What an awake server holds on each GPU beside its weights, its KV and its activations:
    CUDA context and buffers, CUDA graphs up to ``cuda_graph_max_bs`` and the req_to_token pool
    of its request slots: ``slots`` (its --max-running-requests), else those SGLang derives from
    its pool of ``kv_tokens``, else (both None) the most it gives.
    Fitted on the H200 per shape (calibration.py RUNTIME_BYTES: 5-53 MiB above each of the
    measured 1B, 3B, 8B and 7B, never below them)."""
    if slots is None:
        slots = request_slots(kv_tokens, shape.max_context) if kv_tokens is not None else cal.MAX_RUNNING_REQUESTS_MAX
    return cal.RUNTIME_BYTES + cal.CUDA_GRAPH_BYTES_PER_BS * cuda_graph_max_bs + req_to_token_bytes(shape, slots)


def server_cost(
    shape: ModelShape,
    tp_size: int = 1,
    kv_floor_bytes: int | None = None,
    cuda_graph_max_bs: int = DEFAULT_CUDA_GRAPH_MAX_BS,
    kv_tokens: int | None = None,
    slots: int | None = None,
) -> ServerCost:
    """Per-GPU cost of one server of ``shape`` started with ``--cuda-graph-max-bs
    cuda_graph_max_bs``, a KV pool of ``kv_tokens`` and ``--max-running-requests slots`` (None:
    unknown, the upper bound; ``runtime_bytes``).
    ``plan_memory`` is asked with a GPU large enough never to refuse: only its weights and
    graphs (what a park moves) are used here."""
    mem = plan_memory(shape, tp_size=tp_size, gpu_memory_gb=10_000.0, cuda_graph_max_bs=cuda_graph_max_bs)
    lat = LatencyModel(shape, tp_size)
    per_token = kv_bytes_per_token_per_gpu(shape, tp_size)
    runtime = runtime_bytes(shape, cuda_graph_max_bs, kv_tokens, slots)
    parked = min(cal.CONTEXT_BYTES, runtime)  # never more than it holds awake beside its weights
    moved = ["weights", "cuda_graph"]
    return ServerCost(
        parked_bytes=parked,
        awake_bytes=mem.weight_bytes + runtime - parked + ACTIVATION_BYTES,
        kv_bytes_per_token=per_token,
        kv_floor_bytes=kv_floor_bytes if kv_floor_bytes is not None else DEFAULT_KV_FLOOR_TOKENS * per_token,
        wake_s=lat.resume_time(mem, moved),
        park_s=lat.release_time(mem, moved, first=False),
        cold_start_s=COLD_START_S,
        retarget_s=retarget_time(shape, tp_size),
    )


def retarget_time(shape: ModelShape, tp_size: int = 1, pinned: bool = False) -> float:
    """``/update_weights_from_disk`` of a same-shape model: each rank reads its share of the
    weights at the calibrated disk (page-cache) bandwidth. ``pinned``: pushed from the pinned
    holder's buffers instead (a pool's ``stage: pinned``), at the host->GPU copy's speed."""
    if pinned:
        copy = shape.weight_bytes / cal.HOST_TO_DEVICE_BW  # every rank's copy from one buffer
        return cal.MEMORY_OP_OVERHEAD_S + copy * cal.PINNED_PUSH_OVERHEAD_FACTOR
    return cal.MEMORY_OP_OVERHEAD_S + shape.weight_bytes / tp_size / cal.DISK_LOAD_BW
