"""The placements file's vocabulary: frozen dataclasses of a validated file, and its defaults."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from orchestrator.shapes import ModelShape
from orchestrator.types import (
    GpuSharingOption,
    LoadFormat,
    LoraLimits,
    Mode,
    OnLate,
    ParkWhen,
)

W = TypeVar("W", bound=str)

GIB = 1 << 30

# Fraction of a GPU that weights of awake models may take at start; the rest is KV, CUDA graphs,
# activations and the CUDA context (~1.5-2.4 GB per server, docs/gpu-testing.md).
WEIGHTS_BUDGET_FRACTION = 0.9

# Prism's sensitivity study: an idle threshold under 40 s thrashes, over 80 s hoards memory.
DEFAULT_IDLE_PARK_S = 45.0


# Objectives of a model whose placements file sets none. TPOT: weighs its KV pressure and bounds
# its GPU's decode rounds (global scheduler, `chimera-orch plan`). TTFT: orders its requests in
# the admission queue (deadline = arrival + this) but never sheds them: only an objective the
# file sets is enforced (proxy/admission.py).
DEFAULT_TTFT_SLO_S = 10.0
DEFAULT_TPOT_SLO_S = 0.1


@dataclass(frozen=True)
class SLO:
    """Per-request service objectives in seconds; ``None`` = no objective."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    @property
    def ttft_or_default(self) -> float:
        return self.ttft_s if self.ttft_s is not None else DEFAULT_TTFT_SLO_S

    @property
    def tpot_or_default(self) -> float:
        return self.tpot_s if self.tpot_s is not None else DEFAULT_TPOT_SLO_S


@dataclass(frozen=True)
class Placement:
    gpus: tuple[int, ...]
    on: bool = True
    kv_pool_gb: float | None = None  # ceiling of this instance's KV pool; None = engine default
    kv_floor_gb: float | None = None  # elastic mode: KV this instance keeps whatever others need
    # The node of a Ray cluster it runs on (``up --ray``; orchestrator/cluster/placing.py turns
    # the node's local GPU ids into the cluster's global ones). None: one host.
    node: str | None = None


@dataclass(frozen=True)
class Idle:
    """When an idle model gives its GPU memory back (time-sharing)."""

    park_after_s: float = DEFAULT_IDLE_PARK_S  # 0 = never park for idleness
    when: ParkWhen = "needed"  # needed: only when its memory is wanted; always; never


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model_path: str
    shape: ModelShape
    tp_size: int = 1
    aliases: tuple[str, ...] = ()
    placements: tuple[Placement, ...] = ()
    slo: SLO = SLO()
    priority: int = 0
    load_format: LoadFormat = "auto"
    engine_args: tuple[str, ...] = ()  # extra SGLang flags, passed through after validation
    idle: Idle = Idle()
    # A LoRA adapter served as a model of its own (docs/pools.md): ``base`` names the model whose
    # servers run it, ``adapter`` is its path; it has no placements (model_path, shape and
    # tp_size are its base's).
    base: str | None = None
    adapter: str | None = None
    lora: LoraLimits | None = None  # a base whose servers start with --enable-lora
    # Shape pools (docs/pools.md): a pooled model (``pool``) has no server of its own; one of
    # its pool's servers is re-targeted to its weights. A pool's server is a model of its own
    # (``slot_of`` = the pool's name), hidden from clients, one placement each.
    pool: str | None = None
    slot_of: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.base is not None


def flag_int(args: Sequence[str], flag: str) -> int | None:
    """The positive integer ``args`` give SGLang's ``flag`` (``--flag N`` or ``--flag=N``; the
    last one wins, as its argparse keeps it), else None."""
    value = None
    for i, arg in enumerate(args):
        raw: str | None = None
        if arg == flag and i + 1 < len(args):
            raw = args[i + 1]
        elif arg.startswith(flag + "="):
            raw = arg.partition("=")[2]
        if raw is not None and raw.isdigit() and int(raw) > 0:
            value = int(raw)
    return value


@dataclass(frozen=True)
class PoolSpec:
    """Warm servers of one shape, re-targeted to the pooled models that name the pool."""

    name: str
    model_path: str  # what its servers start with (the first member's weights, by default)
    shape: ModelShape
    slots: tuple[str, ...]  # its servers' (hidden) model names, one placement each
    members: tuple[str, ...]  # the pooled models it serves
    stage_bytes: int = 0  # host RAM for its hot checkpoints (``stage_gb``; 0: off)
    stage: str = "page_cache"  # where they are kept: page_cache, or pinned (the pinned holder's buffers)


@dataclass(frozen=True)
class HostSpec:
    """The host the file runs on. ``gpus`` is used by the sim engine (a real host is detected)."""

    gpus: int | None = None
    gpu_memory_gb: float = 80.0
    host_memory_gb: float = 512.0  # RAM of the simulated host (a real host's is measured)
    # colocated servers' compute (perf/sharing.py): auto = MPS with the sglang engine where the
    # daemon is on PATH and starts, else time-slicing (the GPU suite passed under MPS on an H200)
    gpu_sharing: GpuSharingOption = "auto"


@dataclass(frozen=True)
class InstanceSpec:
    """One engine instance = one model on one GPU group (one placement)."""

    id: str
    model: ModelSpec
    placement: Placement

    @property
    def gpus(self) -> tuple[int, ...]:
        return self.placement.gpus


@dataclass(frozen=True)
class HoldLimits:
    """Requests held in the proxy while their model starts or wakes (then 503 + Retry-After)."""

    per_model: int = 256
    total: int = 1024


@dataclass(frozen=True)
class RestartLimits:
    """A crashed engine, or one whose start or wake failed, is restarted after ``backoff_s``,
    doubling per failure up to ``max_backoff_s``; ``max_failures`` failures within ``window_s``
    mark it failed for good (policy/restart.py)."""

    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_failures: int = 5
    window_s: float = 300.0


@dataclass(frozen=True)
class LivenessLimits:
    """An awake engine whose ``/v1/loads`` has not answered for ``window_s`` (or whose request
    timed out in the proxy) is probed with ``GET /model_info`` (``probe_timeout_s``); if that fails
    too it is hung: killed and restarted like a crash (policy/liveness.py)."""

    window_s: float = 10.0
    probe_timeout_s: float = 5.0


@dataclass(frozen=True)
class SchedulerSpec:
    """The two-level scheduler (mode full; docs/scheduling.md)."""

    tau: float = 0.3  # migrate a model only when its pair's KV pressure ratio drops by more
    on_late: OnLate = "shed"  # a request past its TTFT deadline (model with slo.ttft_s): shed | serve
    # Swap-on-demand (mode full only): at most this many models awake per GPU; waking another
    # parks the least recently active first, as llama-swap does. None = no limit (chimera).
    max_awake_per_gpu: int | None = None
    # A wake waits at most this long for its weights to fit beside what its GPUs' neighbours
    # hold (control/plans.py WakeGate); then its plan is abandoned and re-planned. 0: wake at
    # once. Why 30 s: a lowered limit drains a busy neighbour's pages in about one request
    # lifetime (a 512-token answer at 30 ms a token: 15 s; cumem-shim.md, the quarantine), an
    # idle one's at once, an idle prefix cache is flushed in the round that shrinks it and then
    # every second (kv/ledger.py FLUSH_FOR_WAKE_S); and a re-plan keeps most of the default
    # 300 s hold timeout.
    wake_room_s: float = 30.0
    # The starvation guard (policy/placement/kvpr.py preempt_wait_s): a model whose held
    # requests waited this long may park a busy neighbour that gets no more requests than it;
    # one that gets k times its requests after k times this; any after starvation_max_s.
    starvation_s: float = 10.0
    starvation_max_s: float = 60.0


@dataclass(frozen=True)
class Config:
    models: tuple[ModelSpec, ...]
    host: HostSpec = HostSpec()
    mode: Mode = "full"
    hold: HoldLimits = HoldLimits()
    source: str = "<memory>"
    gpu_count: int = 1
    instances: tuple[InstanceSpec, ...] = field(default=())
    scheduler: SchedulerSpec = SchedulerSpec()
    restart: RestartLimits = RestartLimits()
    liveness: LivenessLimits = LivenessLimits()
    # auth.api_keys_file: the client keys (proxy/auth.py), relative to this file; None: none
    api_keys_file: str | None = None
    pools: tuple[PoolSpec, ...] = ()  # shape pools (docs/pools.md)

    def model(self, name_or_alias: str) -> ModelSpec | None:
        for m in self.models:
            if name_or_alias == m.name or name_or_alias in m.aliases:
                return m
        return None

    def names(self) -> list[str]:
        return [n for m in self.models for n in (m.name, *m.aliases)]
