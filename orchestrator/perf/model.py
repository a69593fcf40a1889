"""THE performance model of one SGLang server (the H100 by default; other cards through calibration.py's
named calibrations): how its memory is split and how long a scheduler step, a park and a wake take.

Pure functions and small value objects (no clock, no I/O). One model for everything that
predicts: the live scheduler and admission gate (step and prefill times), ``chimera-orch plan``,
the simulated server (simsglang/) and the discrete-event simulator (bench/sim/). Constants and
their provenance live in calibration.py; per-server costs in cost.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.perf import calibration as cal
from orchestrator.shapes import ModelShape


class MemoryPlanError(ValueError):
    """The model does not fit the simulated GPU (fatal: the real server would fail to start)."""


def kv_bytes_per_token_per_gpu(shape: ModelShape, tp_size: int) -> int:
    """KV bytes of one token on one GPU. KV heads are split across TP ranks; when there are
    fewer KV heads than ranks SGLang replicates them (one head per rank)."""
    heads = max(1, shape.num_kv_heads // tp_size)
    return 2 * shape.num_layers * heads * shape.head_dim * shape.dtype_bytes


def sglang_defaults(gpu_memory_gb: float, tp_size: int) -> tuple[float, int, int]:
    """(mem_fraction_static, chunked_prefill_size, cuda_graph_max_bs) as SGLang 0.5.17 picks
    them for a GPU of this size when the flags are not given (server_args.py)."""
    gpu_mib = gpu_memory_gb * 1024
    _, chunk, bs_small_tp, bs_large_tp = next(b for b in cal.GPU_MEMORY_BRACKETS if gpu_mib < b[0])
    max_bs = bs_small_tp if tp_size < 4 else bs_large_tp
    reserved = (
        cal.RESERVED_BASE_MIB
        + max(chunk, 2048) * cal.RESERVED_PER_ACTIVATION_TOKEN_MIB
        + tp_size / 8 * 1024
        + max_bs * 2
    )
    if gpu_mib > 60 * 1024:
        reserved = max(reserved, cal.RESERVED_FLOOR_MIB_ABOVE_60G)
    return round((gpu_mib - reserved) / gpu_mib, 3), chunk, max_bs


def request_slots(kv_tokens: int, context_len: int) -> int:
    """SGLang's request slots when --max-running-requests is not given (model_runner)."""
    estimate = int(kv_tokens / context_len * 512)
    return min(max(estimate, cal.MAX_RUNNING_REQUESTS_MIN), cal.MAX_RUNNING_REQUESTS_MAX)


def req_to_token_bytes(shape: ModelShape, requests: int, context_len: int | None = None) -> int:
    """SGLang's req_to_token pool on each rank: (requests + 1) rows of (context_len + 4) int32
    token slots, allocated in full at start (mem_cache/memory_pool.py ``ReqToTokenPool``)."""
    return (requests + 1) * ((context_len or shape.max_context) + 4) * 4


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes on each GPU of the instance's group, and the KV pool size in tokens."""

    gpu_bytes: int
    context_bytes: int  # CUDA context etc.: resident even when everything is released
    weight_bytes: int  # this rank's share of the weights
    kv_bytes: int  # the KV pool
    cuda_graph_bytes: int
    kv_capacity_tokens: int  # SGLang's max_total_num_tokens
    mem_fraction_static: float
    chunked_prefill_size: int
    max_running_requests: int
    cuda_graph_max_bs: int = 0  # decode batches above it run eagerly (0: every batch, no graphs)

    def bytes_of(self, tag: str) -> int:
        return {"weights": self.weight_bytes, "kv_cache": self.kv_bytes, "cuda_graph": self.cuda_graph_bytes}[tag]


def plan_memory(
    shape: ModelShape,
    *,
    tp_size: int = 1,
    gpu_memory_gb: float = 80.0,
    mem_fraction_static: float | None = None,
    max_total_tokens: int | None = None,
    max_running_requests: int | None = None,
    chunked_prefill_size: int | None = None,
    context_length: int | None = None,
    cuda_graph_max_bs: int | None = None,
) -> MemoryPlan:
    """Size the server like SGLang's model runner: KV pool = gpu x mem_fraction_static - memory
    used at startup - weights, capped by --max-total-tokens (SGLang takes the minimum). CUDA
    graphs for batch sizes up to ``cuda_graph_max_bs`` (None: SGLang's default for the card; 0:
    none, as with --disable-cuda-graph)."""
    frac_default, chunk_default, bs_default = sglang_defaults(gpu_memory_gb, tp_size)
    frac = frac_default if mem_fraction_static is None else mem_fraction_static
    gpu = int(gpu_memory_gb * cal.GIB)
    weights = shape.weight_bytes // tp_size
    per_token = kv_bytes_per_token_per_gpu(shape, tp_size)
    room = int(gpu * frac) - cal.STARTUP_USED_BYTES - weights
    if room < per_token * 16:
        raise MemoryPlanError(
            f"Not enough memory: {shape.name} needs {weights / cal.GIB:.1f} GiB of weights per GPU "
            f"but --mem-fraction-static {frac} of {gpu_memory_gb:g} GiB leaves "
            f"{max(room, 0) / cal.GIB:.2f} GiB for the KV cache; raise --tp-size or "
            f"--mem-fraction-static (SIMULATED H100)"
        )
    tokens = room // per_token
    if max_total_tokens is not None:
        tokens = min(tokens, max_total_tokens)
    context_len = context_length or shape.max_context
    if max_running_requests is None:
        max_running_requests = request_slots(int(tokens), context_len)
    else:  # SGLang keeps the requested slots within half the pool (resolve_max_num_reqs)
        max_running_requests = max(1, min(max_running_requests, int(tokens) // 2))
    return MemoryPlan(
        gpu_bytes=gpu,
        # as the cost model counts a parked server (cost.py): its CUDA context, never more than
        # its runtime beside the graphs (buffers and the req_to_token pool of its request slots)
        context_bytes=min(
            cal.CONTEXT_BYTES, cal.RUNTIME_BYTES + req_to_token_bytes(shape, max_running_requests, context_len)
        ),
        weight_bytes=weights,
        kv_bytes=tokens * per_token,
        cuda_graph_bytes=cal.CUDA_GRAPH_BYTES_PER_BS * (bs_default if cuda_graph_max_bs is None else cuda_graph_max_bs),
        kv_capacity_tokens=int(tokens),
        mem_fraction_static=frac,
        chunked_prefill_size=chunked_prefill_size or chunk_default,
        max_running_requests=max_running_requests,
        cuda_graph_max_bs=bs_default if cuda_graph_max_bs is None else cuda_graph_max_bs,
    )


@dataclass(frozen=True)
class LatencyModel:
    """Seconds of one scheduler step on the instance's GPU group (roofline with efficiencies).

    ``speed`` scales every duration: 1 = the calibrated H100, 0 = no compute time at all (tokens
    come as fast as the event loop runs; used to measure the proxy's own overhead)."""

    shape: ModelShape
    tp_size: int = 1
    speed: float = 1.0
    calibration: cal.Calibration = cal.H100  # the card (calibration.py CALIBRATIONS)

    def _allreduce(self, tokens: int) -> float:
        if self.tp_size == 1:
            return 0.0
        nbytes = tokens * self.shape.hidden_size * self.shape.dtype_bytes
        ring = 2 * (self.tp_size - 1) / self.tp_size
        one = cal.ALLREDUCE_LATENCY_S + nbytes * ring / cal.NVLINK_ALLREDUCE_BUS_BW
        return 2 * self.shape.num_layers * one  # after attention and after the MLP

    def _weight_read(self) -> float:
        bandwidth = self.calibration.hbm_bandwidth * cal.WEIGHT_READ_EFFICIENCY
        return self.shape.weight_bytes / self.tp_size / bandwidth

    def _attention_flops(self, new: int, prefix: int) -> float:
        # QK^T and AV over a causal window: 4 * layers * q_dim * new * (prefix + new / 2)
        q_dim = self.shape.num_heads * self.shape.head_dim
        return 4.0 * self.shape.num_layers * q_dim * new * (prefix + new / 2)

    def prefill_time(self, chunks: Sequence[tuple[int, int]], chunk_size: int = 8192) -> float:
        """One prefill batch; ``chunks`` = (new tokens, tokens already in KV) per request.
        SGLang's chunked prefill splits a batch over ceil(total / chunk_size) forward passes."""
        new_total = sum(n for n, _ in chunks)
        if new_total == 0:
            return 0.0
        flops = new_total * self.shape.flops_per_token + sum(self._attention_flops(n, p) for n, p in chunks)
        compute = flops / self.tp_size / (cal.PEAK_BF16_FLOPS * self.calibration.prefill_mfu)
        passes = -(-new_total // max(1, chunk_size))
        # a pass is never faster than streaming the weights once; compute overlaps that stream
        step = passes * cal.PREFILL_STEP_OVERHEAD_S + max(compute, passes * self._weight_read())
        return self.speed * (step + self._allreduce(new_total))

    def decode_time(self, context_lens: Sequence[int]) -> float:
        """One decode step producing a token for each running request (context = its tokens)."""
        batch = len(context_lens)
        if batch == 0:
            return 0.0
        fitted = self.calibration.decode_fit(self.shape.name)
        if fitted is not None:
            # measured per shape (calibration.py); never below one read of the weights at spec
            floor = self.shape.weight_bytes / self.tp_size / self.calibration.hbm_bandwidth
            step = max(floor, fitted.base_s + fitted.per_req_s * batch)
            return self.speed * (step + self._allreduce(batch))
        compute = batch * self.shape.flops_per_token / self.tp_size / (cal.PEAK_BF16_FLOPS * cal.DECODE_MFU)
        kv_per_token = kv_bytes_per_token_per_gpu(self.shape, self.tp_size)
        kv_read = sum(context_lens) * kv_per_token / (self.calibration.hbm_bandwidth * cal.KV_READ_EFFICIENCY)
        step = cal.DECODE_STEP_OVERHEAD_S + max(self._weight_read(), compute) + kv_read + self._allreduce(batch)
        return self.speed * step

    def decode_fixed_s(self) -> float:
        """The part of a roofline decode step that is not GPU work: the scheduler iteration's
        fixed cost (DECODE_STEP_OVERHEAD_S). MPS overlaps the rest (perf/sharing.py)."""
        return self.speed * cal.DECODE_STEP_OVERHEAD_S

    def colocated_extra_s(self, others: int) -> float:
        """Seconds a decode step of this server gains with ``others`` other servers decoding on
        its GPU, under an "overlap" calibration: the shape's measured per-other cost, else the
        form fitted over the measured shapes (calibration.py PER_OTHER_FIXED_S). Under a
        "time-slice" one (H100_ROUND) the simulator's round itself charges them: 0 here."""
        c = self.calibration
        if c.colocation != "overlap" or others <= 0:
            return 0.0
        fitted = c.decode_fit(self.shape.name)
        if fitted is not None:
            return self.speed * others * fitted.per_other_s
        read = self.shape.weight_bytes / self.tp_size / c.hbm_bandwidth
        return self.speed * others * (c.per_other_fixed_s + c.per_other_per_read * read)

    def colocated_decode_s(self, alone_s: float, others: int, eager: bool) -> float:
        """A decode step that takes ``alone_s`` (decode_time) with ``others`` other servers
        decoding on its GPU, on a CUDA graph or (``eager``: its batch is above the captured
        graphs) without: the calibration's eager factor times the whole colocated step where
        it was measured so (calibration.py ``DecodeFit.eager_factor``), else
        EAGER_DECODE_FACTOR times the step alone."""
        extra = self.colocated_extra_s(others)
        if not eager:
            return alone_s + extra
        fitted = self.calibration.decode_fit(self.shape.name)
        if fitted is not None and fitted.eager_factor is not None:
            return fitted.eager_factor * (alone_s + extra)
        return cal.EAGER_DECODE_FACTOR * alone_s + extra

    def release_time(self, plan: MemoryPlan, tags: Sequence[str], first: bool) -> float:
        """Park: copy weights/graphs to the (retained) pinned host backup; KV is just dropped."""
        moved = sum(plan.bytes_of(t) for t in tags if t != "kv_cache")
        if first:
            seconds = moved / cal.GIB * cal.FIRST_RELEASE_S_PER_GIB
        else:
            seconds = moved / cal.HOST_TO_DEVICE_BW * cal.RELEASE_OVERHEAD_FACTOR
        return self.speed * (cal.MEMORY_OP_OVERHEAD_S + seconds)

    def resume_time(self, plan: MemoryPlan, tags: Sequence[str]) -> float:
        """Wake: copy weights/graphs back from host; KV pages are re-mapped empty."""
        moved = sum(plan.bytes_of(t) for t in tags if t != "kv_cache")
        seconds = moved / cal.HOST_TO_DEVICE_BW * cal.RESUME_OVERHEAD_FACTOR
        return self.speed * (cal.MEMORY_OP_OVERHEAD_S + seconds)
