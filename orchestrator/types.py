"""chimera's shared vocabulary: the lifecycle state of an engine instance, where a request goes
(``Endpoint``), read-only views of instances and models, one scrape of an engine's load
(``LoadSample``), GPU groups and their label, and the closed sets of words the placements file
allows (modes, park and late policies, GPU sharing). Plain data, importable from every package."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from orchestrator.config import ModelSpec

# static: fixed KV pools; elastic: + KV limits re-split at run time (cumem_shim); full: elastic +
# time-sharing (park/wake) + the global scheduler. Each later mode includes the earlier ones.
Mode = Literal["static", "elastic", "full"]
MODES: tuple[Mode, ...] = ("static", "elastic", "full")
# When an idle model gives its memory back: only when wanted, as soon as idle, or never.
ParkWhen = Literal["needed", "always", "never"]
PARK_WHEN_IDLE: tuple[ParkWhen, ...] = ("needed", "always", "never")
# A request past its TTFT deadline (a model with slo.ttft_s): shed it (429) or serve it late.
OnLate = Literal["shed", "serve"]
ON_LATE: tuple[OnLate, ...] = ("shed", "serve")
EngineName = Literal["auto", "sim", "sglang"]
ENGINES: tuple[EngineName, ...] = ("auto", "sim", "sglang")
LoadFormat = Literal["auto", "dummy"]
LOAD_FORMATS: tuple[LoadFormat, ...] = ("auto", "dummy")
# How colocated servers share a GPU's compute: the driver's time-slicing between processes, or
# the CUDA MPS daemon (supervisor/mps.py). ``auto`` (the placements file only) is MPS where its
# control binary is on PATH and the engine is sglang, else time-slicing.
GpuSharing = Literal["timeslice", "mps"]
GpuSharingOption = Literal["auto", "timeslice", "mps"]
GPU_SHARING_OPTIONS: tuple[GpuSharingOption, ...] = ("auto", "mps", "timeslice")


@dataclass(frozen=True)
class LoraLimits:
    """A base model's server started with ``--enable-lora`` (it serves LoRA adapters as models of
    their own; orchestrator/lora/). ``max_loaded``: adapters chimera keeps loaded on one server
    (also passed as ``--max-loaded-loras``, SGLang's own LRU as a backstop)."""

    max_loras_per_batch: int = 8  # SGLang's default (server_args.py)
    max_loaded: int = 8  # defaults to max_loras_per_batch
    max_lora_rank: int = 16  # adapters of a higher rank fail to load
    target_modules: tuple[str, ...] = ("all",)


GpuGroup = tuple[int, ...]  # the GPUs of one engine instance (one GPU, or its TP group)


def gpu_label(gpus: GpuGroup) -> str:
    """How a GPU group is written in ids, metrics labels and tables: ``0`` or ``0+1``."""
    return "+".join(map(str, gpus))


class InstanceState(StrEnum):
    """Lifecycle of one engine instance (transitions are owned by control/instance.py)."""

    PENDING = "pending"  # waiting for its turn to start (colocated starts are serialized)
    STARTING = "starting"
    AWAKE = "awake"
    PARKING = "parking"
    PARKED = "parked"
    WAKING = "waking"
    BACKOFF = "backoff"  # crashed, or its start or wake failed: its process is gone, a restart is due
    FAILED = "failed"  # for good: restarts gave up (policy/restart.py), or a park failed past repair
    STOPPED = "stopped"


# How an awake instance that a plan drains is shown (InstanceView.shown_state); not a lifecycle
# state: the instance is awake until its park begins.
DRAINING = "draining"
# How a parked instance whose planned wake waits for room is shown (InstanceView.wake_due)
WAKE_DUE = "wake_due"

# States in which an instance's weights are (or are being put) on its GPUs: starting, awake,
# waking, and parking until SGLang's release is done. Placement counts these as resident; GPU
# seconds bill them at their awake footprint.
WEIGHTS_ON_GPU = frozenset({InstanceState.STARTING, InstanceState.AWAKE, InstanceState.WAKING, InstanceState.PARKING})
# States in which its process (CUDA context) is on its GPUs: the above, and parked.
PROCESS_ON_GPU = WEIGHTS_ON_GPU | {InstanceState.PARKED}


@dataclass(frozen=True)
class Endpoint:
    """Where to send one request: an awake instance of the model."""

    instance_id: str
    base_url: str  # http://127.0.0.1:PORT
    served_name: str  # rewrite the request's `model` to this


@dataclass(frozen=True)
class InstanceView:
    id: str
    model: str
    gpus: tuple[int, ...]
    state: InstanceState
    base_url: str | None
    error: str | None = None
    # Awake, but a plan of the global scheduler drains it: it takes no new request and parks
    # once its last one ends. The park reason (idle, migration, make_room); None otherwise.
    draining: str | None = None
    # Parked, and a plan's wake of it waits until its weights fit beside what its GPUs'
    # neighbours hold (control/plans.py ``WakeGate``): the KV ledger counts its weights already,
    # so the neighbours give pages back.
    wake_due: bool = False

    @property
    def shown_state(self) -> str:
        """The state as timelines and tables show it: ``draining`` for an awake instance a plan
        drains, ``wake_due`` for a parked one whose wake waits for room, else the lifecycle
        state's value."""
        if self.draining is not None and self.state is InstanceState.AWAKE:
            return DRAINING
        if self.wake_due and self.state is InstanceState.PARKED:
            return WAKE_DUE
        return self.state.value


@dataclass(frozen=True)
class ModelView:
    spec: ModelSpec
    state: InstanceState  # the best state among its instances (awake > waking > ...)
    instances: tuple[InstanceView, ...]


@dataclass(frozen=True)
class LoadSample:
    """One scrape of an instance's ``GET /v1/loads`` (control/scrape.py, read by
    sglang/loads.py), summed over its DP ranks. The loop turns these into per-model demand (token
    rate, concurrency, KV in use); the proxy's admission gate and the KV ledger read the same
    samples."""

    instance_id: str
    at: float  # time.monotonic() when the scrape was sent
    running: int
    waiting: int
    waiting_tokens: int  # prompt tokens queued in the engine, not yet prefilled
    used_tokens: int  # KV token slots in use
    capacity_tokens: int  # KV pool size in tokens (under the shim: its limit shows as used)
    max_running: int | None  # the engine's max running requests (None: not reported)
    tokens: float  # prompt + generated tokens processed since the instance's previous sample
    gen_rate: float = 0.0  # generated tokens/s as the engine reports it (SGLang's gen_throughput)

    @property
    def idle(self) -> bool:
        return self.running == 0 and self.waiting == 0
