"""Every constant of the sim's latency and memory model, with where it comes from.

Four kinds of provenance, marked on each constant:
- [spec]     public datasheet numbers (NVIDIA H100 SXM5 datasheet, NCCL docs);
- [assumed]  an efficiency we chose from public reports of LLM serving on H100s — these are the
             numbers to re-calibrate from a real H100 run (bench against stock SGLang 0.5.17);
- [measured] measured on the lent H100 with stock SGLang 0.5.17 (docs/gpu-testing.md), or fitted
             from a live trace on it (bench/results/gpu-trace-h100/calibration.json);
- [sglang]   copied from SGLang 0.5.17's own source (path given), so the sim sizes itself the
             way the real server does.

The model built on these is in model.py; nothing here is read from the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GIB = 1 << 30
MIB = 1 << 20

# --- compute and memory bandwidth of one H100 SXM5 80GB --------------------------------------
PEAK_BF16_FLOPS = 989e12  # [spec] bf16 dense tensor-core peak (1979 TFLOP/s is with sparsity)
HBM_BANDWIDTH = 3.35e12  # [spec] HBM3, bytes/s
# [assumed] NCCL all-reduce bus bandwidth on NVLink 4 (~80% of its 450 GB/s per direction)
NVLINK_ALLREDUCE_BUS_BW = 360e9
ALLREDUCE_LATENCY_S = 8e-6  # [assumed] small-message NCCL all-reduce latency over NVLink

# [measured] on the lent NVIDIA H200 with stock SGLang 0.5.17 (`bash bench/gpu/mps.sh`, two
# Llama-3.1-8B-shaped servers on one GPU, dummy weights, closed-loop decode of 128 tokens): under
# the CUDA MPS daemon, TPOT together / alone was 1.63 (batch 4) and 1.67 / 1.60 (batch 32), where
# time-slicing gave 2.16 and 2.18. A decoding neighbour's step lengthens a server's decode step
# by this share of its length under MPS (time-slicing: all of it; perf/sharing.py).
MPS_DECODE_NEIGHBOUR = 0.63
# [measured] the same runs (bench/results/gpu-mps-h200/mps.json, ``mps_over_timeslice``: the pair's
# output tokens/s together under MPS over time-sliced), fitted for the discrete-event simulator's
# round (perf/sharing.py ``mps_round_s``): MPS hides this share of the GPU work (a step beyond its
# fixed cost, DECODE_STEP_OVERHEAD_S) of every decoding server's step but the one with the most.
# Least squares in log over the six measured pairs, each server's step as the H100 model gives it at
# the measured batch and context (64-token prompts, 128-token outputs: 128 tokens a request on
# average): 1B steps 3.18-3.24 ms (1.2 ms of work), 8B 9.68-9.89 ms. Model vs measured, batch 4 /
# 32: 8B+8B 1.22 / 1.23 vs 1.27 / 1.24; 1B+8B 1.04 / 1.05 vs 1.08 / 1.04; 1B+1B 1.09 / 1.10 vs
# 1.12 / 0.94 (MPS lost there; no overlap can say so). It charges an 8B neighbour 0.635 of its
# step, MPS_DECODE_NEIGHBOUR's 0.63; a 1B neighbour, mostly fixed cost, 0.83.
MPS_DECODE_OVERLAP = 0.46

# [measured] below = fitted by `python -m bench.calibration.calibrate` from bench/results/gpu-trace-h100/
# (calibration.json): NVIDIA H100 80GB HBM3, driver 580.159.04, stock SGLang 0.5.17 (triton
# attention, CUDA graphs on), 2026-11-26; Llama-3.2-1B and Llama-3.1-8B shapes (dummy weights)
# colocated on the one GPU behind chimera, 5-minute trace at 6 req/s, 1,800 requests. The two
# servers time-slice the GPU, so the fitted times are, if anything, slow for a GPU of its own.

# [measured] sample-weighted over models (per model: 1B 0.363, 8B 0.461); 1,001 prefills (1B
# 546, 8B 455), TTFT vs FLOPs. Was 0.50 [assumed]. The H200 run (gpu-trace-h200) gave 0.469.
PREFILL_MFU = 0.409
DECODE_MFU = 0.40  # [assumed] GEMMs of a large decode batch; not fittable: the run's largest mean
#                    batch (1B 7.6, 8B 15.9) is far below the compute-bound regime (~148)
# [measured] from the decode-step intercepts of the two models (engine log: 1B 7,002 lines, 8B
# 2,334; two weights, two unknowns, together with DECODE_STEP_OVERHEAD_S): 1B 3.17 ms, 8B 9.64 ms.
# Was 0.80 [assumed]. 0.627 x 3.35 TB/s = 2.1 TB/s for small-batch GEMV on H100 HBM3.
WEIGHT_READ_EFFICIENCY = 0.627
# [assumed] fraction of HBM peak reached reading a paged KV cache. The run's fit gave 0.088 (1B
# only, decode step vs summed context; the 8B showed no context slope) and it is NOT applied:
# at batch <= 8 and contexts of ~1k tokens the triton decode kernel is latency-bound, not
# bandwidth-bound, so that slope does not extrapolate. At 0.088 a decode step of the 8B at batch
# 64 x 8k context would take 237 ms (67 GB of KV at 0.3 TB/s) where paged attention kernels
# read KV at well over half of HBM peak. Within the measured range 0.65 is off by < 10% for the
# 1B (3.25 vs 3.52 ms at batch 7); see tests/unit/test_sim_calibration.py.
KV_READ_EFFICIENCY = 0.65

# Fixed cost of one scheduler iteration (Python scheduling, kernel launches, sampling, detokenize).
# [measured] with WEIGHT_READ_EFFICIENCY from the two decode intercepts (see above). Was 0.0008
# [assumed]: the graph replay itself is sub-millisecond, but the scheduler loop around it is not.
DECODE_STEP_OVERHEAD_S = 0.0020
# [measured] a decode batch above --cuda-graph-max-bs runs eagerly (no CUDA graph): its step over
# the graph steps' fit at the same batch and number of decoding neighbours (`python -m
# bench.calibration.h200_multi bench/results/gpu-experiment-h200-a bench/results/gpu-experiment-h200-a6
# bench/results/gpu-experiment-h200-a7 --out bench/results/gpu-experiment-h200-a7/calibration-a-a6-a7`:
# "eager / graph step"). NVIDIA H200, stock SGLang 0.5.17, set-up A (the seven-model runs captured
# every server up to 16), 2026-12-03/04; median ratio per shape: 1B 1.48 (78 clean intervals), 3B
# 1.42 (18), 8B 1.14 (19); this is the middle one. The small shapes pay most (kernel launches,
# not FLOPs, bound their step). A cruder reading (median step at 17-21 running eagerly over 12-16
# on graphs, not controlled for the batch or the neighbours) gave 1.11-2.18.
EAGER_DECODE_FACTOR = 1.42
# [assumed] prefill runs eagerly (no graph). The run's prefill intercept, 0.0217 s (mean of 1B
# 0.0175, 8B 0.0258), is NOT applied: it is TTFT at zero tokens, so it holds the client -> chimera
# -> SGLang HTTP round trip, tokenization and the wait for the decode step running when the
# request arrives, all of which the sim models separately (proxy, batcher step boundaries).
PREFILL_STEP_OVERHEAD_S = 0.004

# --- memory ---------------------------------------------------------------------------------
# CUDA context, NCCL buffers, allocator slack: what a server holds even with everything released.
# [measured] 2,362 MiB for the Llama-3.1-8B shape parked (1.5-1.75 GB for a tiny model), on the
# H100 with SGLang 0.5.17 and older flags (prefill CUDA graphs on, --cuda-graph-max-bs 8). Parked
# footprints were not measured on the H200; the cost model (cost.py) counts a parked server at
# this figure but never above what the same server holds awake beside its weights (the H200's
# 8B held 2.12 GiB awake beside its weights, less than this).
CONTEXT_BYTES = 2362 * MIB
# Memory already used when SGLang profiles free memory for the KV pool (before weights load).
# [measured] derived from the 8B run: 0.5 x 79.6 GiB - 14.96 GiB weights - 24.2 GiB KV = 0.6 GiB.
STARTUP_USED_BYTES = 614 * MIB
# What an awake server holds beside its weights and KV (cost.py ``runtime_bytes``):
#   RUNTIME_BYTES + CUDA_GRAPH_BYTES_PER_BS x --cuda-graph-max-bs + its req_to_token pool
# (model.py ``req_to_token_bytes``: (max_running_requests + 1) x (context_len + 4) int32, which
# SGLang allocates whatever the load: 0.5-2.0 GiB for 32k-128k contexts).
# [measured] the KV ledger's NVML-per-process peak under load less the shim's mapped KV, less the
# weights, on the lent NVIDIA H200 with stock SGLang 0.5.17, chimera's flags (incl.
# --disable-prefill-cuda-graph; --cuda-graph-max-bs from orchestrator/deployment.py), dummy
# weights, set-up A in mode full (bench/results/gpu-experiment-h200-a4 and -a5, docs/benchmarks.md
# "Fourth runs"): 1B (bs 256, 4,096 requests) 3.53 GiB, 3B (bs 64, 2,533) 2.40, 8B (bs 64,
# 2,048) 2.12, 7B (bs 128, 4,096, 32k context) 1.79. Less the req_to_token pools (2.00, 1.24,
# 1.00, 0.50 GiB) that leaves 1.53, 1.16, 1.12, 1.30 GiB, linear in the graphs' batch sizes:
# least squares 1.017 GiB + 2.07 MiB per batch slot, residuals within 25 MiB. The constants are
# that line rounded to the safe side: 1.05 GiB + 2 MiB x bs is at or above every measured server
# (by 5-53 MiB). The 1 GiB activation reserve (cost.py ACTIVATION_BYTES) comes on top.
RUNTIME_BYTES = int(1.05 * GIB)
CUDA_GRAPH_BYTES_PER_BS = 2 * MIB

# SGLang's defaults by GPU memory, [sglang] server_args.py `_handle_gpu_memory_settings`:
# (GPU memory below MiB, chunked_prefill_size, cuda-graph max bs for tp<4, for tp>=4).
GPU_MEMORY_BRACKETS: tuple[tuple[float, int, int, int], ...] = (
    (20 * 1024, 2048, 8, 8),  # T4, 4080
    (35 * 1024, 2048, 24, 80),  # A10, 4090
    (60 * 1024, 4096, 32, 160),  # A100 40GB, L40
    (90 * 1024, 8192, 256, 512),  # H100, A100 80GB
    (160 * 1024, 8192, 256, 512),  # H200, H20
    (float("inf"), 16384, 512, 512),  # B200, MI300
)
# [sglang] server_args.py: reserved_mem = 512 + max(chunk, 2048) * 1.5 + tp/8 * 1024 + max_bs * 2,
# at least 10 GiB on cards above 60 GiB; mem_fraction_static = (gpu_mem - reserved) / gpu_mem.
RESERVED_BASE_MIB = 512
RESERVED_PER_ACTIVATION_TOKEN_MIB = 1.5
RESERVED_FLOOR_MIB_ABOVE_60G = 10 * 1024
# [sglang] max_running_requests = clamp(max_total_num_tokens / context_len * 512, 2048, 4096).
MAX_RUNNING_REQUESTS_MIN = 2048
MAX_RUNNING_REQUESTS_MAX = 4096

# --- park / wake (torch_memory_saver with TMS_RETAIN_CPU_BACKUP=1, which chimera sets) -------
HOST_TO_DEVICE_BW = 50.3e9  # [measured] pinned host->GPU copy on the H100
RESUME_OVERHEAD_FACTOR = 1.33  # [measured] resume 0.40 s vs the 0.30 s copy floor, 8B shape
RELEASE_OVERHEAD_FACTOR = 1.23  # [measured] release 0.37 s vs the 0.30 s floor, 8B shape
# [measured] the first release allocates the pinned backup: 8.3-9.8 s for 14.96 GiB of weights.
FIRST_RELEASE_S_PER_GIB = 0.62
MEMORY_OP_OVERHEAD_S = 0.02  # [measured] release 46 ms / resume 18 ms for the tiny model
# /update_weights_from_disk reads safetensors (page cache) into the GPU. [measured] 13 ms for the
# 34 MB tiny model on the H100 ~ 2.5 GB/s; re-measure with a real 8B fine-tune.
DISK_LOAD_BW = 2.5e9
# A pool with ``stage: pinned`` pushes a staged checkpoint from pinned host RAM in buckets
# (orchestrator/pools/pinned/): the host->GPU copy plus the buckets' requests. [measured] on the
# H200: 16.06 GB in 0.327-0.334 s (7 switches), 1.04x the copy at HOST_TO_DEVICE_BW.
PINNED_PUSH_OVERHEAD_FACTOR = 1.04

# --- what the sim reports about itself ---------------------------------------------------------
SGLANG_VERSION = "0.5.17"  # the SGLang release whose HTTP API the sim reproduces
ACCELERATOR_NAME = "NVIDIA H100 80GB HBM3 (simulated)"

# --- named calibrations: which card the latency model stands for ----------------------------
# The constants above are the H100's (the default everywhere: live scheduler, plan, simsglang,
# the 8/18/58-model comparisons of docs/bench-sim.md). A named calibration replaces the latency
# side only (memory sizing stays the H100's model above); bench/gpu/des.py selects one with
# --calibration. model.py reads it through LatencyModel.calibration.


@dataclass(frozen=True)
class DecodeFit:
    """One shape's decode step measured WHILE colocated: base + per_req x running requests +
    per_other x other engines decoding at the same moment (to the second), in seconds, on a
    CUDA graph. ``eager_factor``: a batch above the captured graphs takes this times that whole
    colocated step (the neighbours' share included: the ratio was measured against it); None:
    EAGER_DECODE_FACTOR times the step alone."""

    base_s: float
    per_req_s: float
    per_other_s: float
    eager_factor: float | None = None


@dataclass(frozen=True)
class FirstToken:
    """What a request pays for its first token beyond its prefill, measured end to end (client
    to engine and back): ``steps`` decode steps of its server as colocated (SGLang takes a new
    request between steps and hands the prefill's token on one step later), and a delivery
    stall: first tokens due inside a window of ``stall_s`` that opens every ``period_s`` are
    seen at the window's end (bench/sim/servers.py ``first_token_at``).

    Two terms of the shared GPU and host (0 = absent): ``fixed_s``, the same for every model
    and load (client -> proxy -> tokenizer -> scheduler -> detokenizer -> client: processes and
    IPC hops outside the GPU's work), and ``prefill_share``: a prefill's kernels time-slice
    with those of the other servers busy on its GPU, so its first token comes
    ``prefill_share x others x`` its prefill later (the others' work meanwhile is counted in
    their own steps).

    ``spread``: that path varies from request to request (the host's processes and event
    loops, where in a step the request lands): each request's is the modelled one times a
    log-normal factor of median 1 and this sigma (0: every request alike)."""

    steps: float
    stall_s: float
    period_s: float
    fixed_s: float = 0.0
    prefill_share: float = 0.0
    spread: float = 0.0


@dataclass(frozen=True)
class Calibration:
    """The latency side of one card. colocation: how colocated servers' decode steps combine on
    one GPU: "time-slice" = one round runs every server's step one after another (each server's
    step takes the round: the H100 assumption); "overlap" = each server steps at its own rate,
    its step lengthened by per_other for each other server decoding (measured)."""

    name: str
    card: str
    hbm_bandwidth: float  # bytes/s, spec
    prefill_mfu: float
    colocation: Literal["time-slice", "overlap"]
    decode: tuple[tuple[str, DecodeFit], ...] = ()  # per shape name; others use the roofline
    # overlap, shapes not fitted: per other decoding server, a step gains per_other_fixed_s plus
    # per_other_per_read x one read of its weights at the spec bandwidth (PER_OTHER_FIXED_S)
    per_other_fixed_s: float = 0.0
    per_other_per_read: float = 0.0
    first_token: FirstToken | None = None  # None: the first token comes when the prefill ends

    def decode_fit(self, shape_name: str) -> DecodeFit | None:
        return next((f for s, f in self.decode if s == shape_name), None)


# What another decoding server costs a server's decode step on a time-sliced GPU, for shapes
# whose colocated step was not fitted: PER_OTHER_FIXED_S + PER_OTHER_PER_READ x the step's own
# read of its weights at the card's spec bandwidth. [measured] least squares over the H200's four
# fitted shapes below (per_other_s against weight bytes / 4.8 TB/s: 1B 0.51 ms -> 1.31 ms, 3B
# 1.34 -> 2.47, 8B 3.35 -> 3.96, 7B 3.17 -> 4.34; residuals within 0.30 ms; recomputed in
# tests/unit/test_h200_calibration.py): a neighbour's time-slices cost about one more pass of a
# server's own GPU work plus ~1 ms, whatever the neighbour's size. The H200's pairs say the same
# (bench/results/gpu-mps-h200, time-sliced): an 8B was slowed 1.6-1.9x beside a 1B and 2.2x
# beside an 8B; a 1B 1.0-1.5x beside either (at batch 4 the form gives the 8B 1.9x, the 1B 1.8x).
PER_OTHER_FIXED_S = 0.000955
PER_OTHER_PER_READ = 0.986

# The H100's colocation is that measured form [assumed: it transfers from the H200 with the
# card's bandwidth]: each server decodes at its own rate. Until 2026-12-05 it was ``H100_ROUND``'s
# assumed round (a GPU runs its decoding servers' whole steps one after another, so each waits
# for the sum): the H200's pairs refuted it both ways (docs/bench-sim.md, "The time-sliced round
# against the measured pairs"), most for a small model beside a large one (a 1B charged 4x
# beside an 8B; measured 1.0-1.5x). The round stays for what-ifs and for MPS, which the
# simulator models over it (perf/sharing.py ``mps_round_s``).
H100 = Calibration(
    "h100",
    ACCELERATOR_NAME,
    HBM_BANDWIDTH,
    PREFILL_MFU,
    "overlap",
    per_other_fixed_s=PER_OTHER_FIXED_S,
    per_other_per_read=PER_OTHER_PER_READ,
)
H100_ROUND = Calibration("h100-round", ACCELERATOR_NAME, HBM_BANDWIDTH, PREFILL_MFU, "time-slice")

# [measured] fitted by `python -m bench.calibration.h200_multi bench/results/gpu-experiment-h200-a
# bench/results/gpu-experiment-h200-a6 bench/results/gpu-experiment-h200-a7 --out
# bench/results/gpu-experiment-h200-a7/calibration-a-a6-a7` (fit and residuals: calibration-h200.md
# there): NVIDIA H200 (driver 580.159.04), stock SGLang 0.5.17, 2026-12-03/04, set-up A of the
# one-GPU experiment (six engines, then seven, of four shapes on one GPU, chimera static and full,
# synthetic trace, 2-25 req/s): 4,239 clean 40-step "Decode batch" intervals on CUDA graphs (the
# eager ones: EAGER_DECODE_FACTOR), each with the other engines that logged a decode line in the
# same or the previous second (SGLang's log stamps have 1-s resolution; that is all the alignment
# there is). The first fit, of the six-engine run alone (1,254 intervals), had 1B 1.07 / 0.044 /
# 1.23 ms, 3B 5.44 / 0.249 / 1.11, 8B 1.25 / 0.273 / 4.00, 7B 6.62 / 0.744 / 2.98 (base / per
# request / per other engine); seven engines at higher load doubled the 3B's neighbour cost.
# Interference is far below time-slicing: another decoding engine adds 1.2-4.0 ms to a step,
# where running its step in between would add 4-20 ms (the engines' CPU-side scheduling, ~most
# of a small-batch step, overlaps the other processes' kernels). The run had 3-5 others decoding
# nearly always, so base_s (the step alone) is an extrapolation, collinear with per_other_s:
# model.py floors a step at reading the weights once at the HBM spec bandwidth.
# Re-fitted on the sixth runs but one, which is held out to check it (docs/benchmarks.md "The
# simulator against the sixth runs, refit"): `python -m bench.calibration.h200_multi
# bench/results/gpu-experiment-h200-a6 bench/results/gpu-experiment-h200-a7/static --check
# bench/results/gpu-experiment-h200-a7/full --out bench/results/gpu-experiment-h200-a7/calibration-a6-a7static`
# (2,220 graph intervals; was a + a6 + a7, 4,239). Held out, a7 full at 13.97-24.87 req/s: graph
# steps measured / fitted 0.89-0.94 per shape. ``eager_factor`` per shape is that fit's eager /
# graph step, which the script always measured against the WHOLE colocated step (neighbours
# included) where the simulator applied EAGER_DECODE_FACTOR to the step alone: 1B 1.24 (61 clean
# intervals), 3B 1.30 (6), 8B 1.05 (12); qwen-7b never ran eager (EAGER_DECODE_FACTOR). Held out,
# the 1B's eager steps took 1.50x this fit (3B 1.19, 8B 1.04): at a7 full's 21-25 req/s the 1B
# decodes 40-80 requests eagerly at 21-24 ms a step where the fit gives 15 (not explained by the
# neighbours decoding nor by their being eager: see docs/benchmarks.md).
H200_HBM_BANDWIDTH = 4.8e12  # [spec] HBM3e
H200 = Calibration(
    "h200",
    "NVIDIA H200 141GB HBM3e (simulated; calibrated colocated, set-up A)",
    H200_HBM_BANDWIDTH,
    # [measured] the H200 trace run (bench/results/gpu-trace-h200), TTFT vs FLOPs; the batch
    # lines give no prefill time (their input throughput spans the decode steps in between).
    prefill_mfu=0.469,
    colocation="overlap",
    decode=(
        ("llama-3.2-1b", DecodeFit(base_s=0.00048, per_req_s=0.000075, per_other_s=0.00131, eager_factor=1.24)),
        ("llama-3.2-3b", DecodeFit(base_s=0.00086, per_req_s=0.000285, per_other_s=0.00247, eager_factor=1.30)),
        ("llama-3.1-8b", DecodeFit(base_s=0.00070, per_req_s=0.000433, per_other_s=0.00396, eager_factor=1.05)),
        ("qwen2.5-7b", DecodeFit(base_s=0.00040, per_req_s=0.000522, per_other_s=0.00434)),
    ),
    per_other_fixed_s=PER_OTHER_FIXED_S,  # shapes not measured: the form fitted over the four
    per_other_per_read=PER_OTHER_PER_READ,  # (was a flat 2.5 ms, their mean [assumed])
    # [measured] fitted by `python -m bench.calibration.first_token bench/results/gpu-experiment-h200-a3`
    # (static, 8 req/s): p25 TTFT - prefill = 2.5-3.3 colocated steps for all four shapes (TTFT
    # does not grow with the prompt at this load); first tokens of different engines released
    # in the same instant, ~every 1.3-1.5 s, TTFT p99 - p25 = 0.30 s. The stall was chimera's
    # /metrics parsing the engines' exposition on the proxy's event loop while the experiment
    # polled it (and the poller's own parse), fixed since (metrics/federate.py ``merge``). The
    # fourth runs (bench/results/gpu-experiment-h200-a4, after the fix) show none: at static 10.1
    # req/s, TTFT p99 - p25 = 43-111 ms for every model but the saturated llama-1b-a (0.30 s
    # before, at 6.9 req/s). So no stall; ``steps`` stays the low-load fit (that run's load is
    # too high to refit it: queueing inflates p25 to 2.7-7.6 steps).
    # ``steps``, ``fixed_s`` and ``prefill_share`` refitted together by `python -m
    # bench.calibration.first_token bench/results/gpu-experiment-h200-a5 --colocated static-12-24`
    # (fifth runs, static at 10.1-16.9 req/s, 1,219 requests; least absolute deviations): TTFT
    # grows by 1-2 ms (1B) to 20-33 ms (7-8B) per other busy server, i.e. with the server's own
    # prefill, and carries ~18 ms for every model (docs/benchmarks.md, "The simulator against
    # the fifth runs"). Was steps 2.84 alone (the 2.84 held the fixed path and the stretch).
    # Re-run after the decode re-fit of 2026-12-04 (the steps are colocated decode steps, so
    # they follow it): steps 2.19, fixed 19.0 ms, prefill share 0.38 (were 1.98, 18.3 ms, 0.48).
    # Re-run after the decode re-fit of the sixth runs (below the decode fits): steps 2.10, fixed
    # 19.2 ms, prefill share 0.39.
    # ``spread`` from `python -m bench.calibration.first_token --spread` over the five live runs
    # with the most low-load requests (bench/results/gpu-experiment-h200-{a8/static,a8/full,
    # b3/static,lmsys/static,lmsys/full}: each lowest rate, 24-419 requests paired by id with the
    # simulator's): per-run sigma 0.30-0.39 of log(real / simulated TTFT), median 0.331. Real
    # first tokens at low load lie -18..+26 ms around the simulated ones (p10..p90) for every
    # shape alike: the host's share, not the GPU's.
    first_token=FirstToken(steps=2.10, stall_s=0.0, period_s=1.50, fixed_s=0.0192, prefill_share=0.39, spread=0.33),
)
CALIBRATIONS: dict[str, Calibration] = {c.name: c for c in (H100, H100_ROUND, H200)}
