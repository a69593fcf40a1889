"""What the global scheduler (placement.py) sees and what it answers: plain frozen data.

The caller (control loop, ``chimera-orch plan``, the simulator in bench/sim) fills the snapshot:
rates are measured outside (rates.py), memory costs come from the calibrated performance model
(``orchestrator.perf.cost.server_cost``, whose ``ServerCost`` is the input type here), so
nothing here knows a clock or a constant of SGLang. All byte counts are per GPU; a TP server
charges each GPU of its group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.perf.cost import ServerCost
from orchestrator.types import PROCESS_ON_GPU, WEIGHTS_ON_GPU, GpuSharing, InstanceState

S = InstanceState
# States whose weights are (or are being put) on the GPU: they count as resident.
RESIDENT = WEIGHTS_ON_GPU
# States in which a server holds its process (CUDA context) on the GPU, or will at once (a
# pending start: its context is planned for).
HOLDS_CONTEXT = PROCESS_ON_GPU | {S.PENDING}


@dataclass(frozen=True)
class ModelDemand:
    """One model: its demand, its SLO and what its servers cost."""

    name: str
    tp_size: int
    cost: ServerCost
    tpot_slo_s: float
    token_rate: float  # tokens/s entering the model (prompt + output), moving average (~60 s)
    queued: int = 0  # requests held for it (not yet in an engine)
    running: int = 0  # requests inside its engines
    last_active_at: float | None = None  # last arrival or completion; None = never used
    idle_park_s: float = 45.0  # park when idle longer than this and memory is needed; 0 = never
    park_when: Literal["needed", "always", "never"] = "needed"
    priority: int = 0
    last_moved_at: float | None = None  # last migration of this model (cooldown)
    oldest_wait_s: float = 0.0  # age of its oldest held request (starvation guard)
    # requests/s arriving for it, held ones included (a parked model's demand too), moving
    # average over the token rate's window: the starvation guard weighs a busy neighbour by it
    request_rate: float = 0.0
    # Decode step time of its server at its usual batch (0 for a model with almost no traffic).
    # Colocated servers share the GPU's compute: time-slicing (no MPS), while they all decode a
    # token of each costs the sum of their steps; under MPS a neighbour's step counts in part
    # (PlacementParams.sharing, perf/sharing.py). The TPOT guard keeps that round under their
    # SLOs (tpot.py).
    step_s: float = 0.0
    # Share of time (0..1) its server has requests running when alone on its GPU, at its usual
    # rate (1 - exp(-rate x time one request takes alone)). None = unknown: the TPOT guard
    # then counts it as always decoding (the worst case); known, it counts the chance that
    # neighbours decode together (interference.py, tpot.py).
    activity: float | None = None

    @property
    def pressure(self) -> float:
        """KV pressure this model puts on a GPU: token rate x KV bytes per token / TPOT SLO."""
        return self.token_rate * self.cost.kv_bytes_per_token / max(self.tpot_slo_s, 1e-6)

    @property
    def busy(self) -> bool:
        return self.queued > 0 or self.running > 0


@dataclass(frozen=True)
class ServerView:
    """One engine instance: a model on a GPU group, in one lifecycle state."""

    id: str
    model: str
    gpus: tuple[int, ...]
    state: InstanceState
    kv_used_bytes: int = 0  # per GPU, in use now
    in_flight: int = 0


@dataclass(frozen=True)
class PlacementParams:
    tau: float = 0.3  # migrate only when the pressure of the pair drops by more than this (relative)
    migrate: bool = True  # False: activations only (ablation "global placement off" uses home servers)
    max_migrations: int = 1  # per decision: a migration costs a wake on the target
    migration_cooldown_s: float = 120.0  # a model moved recently stays put (no ping-pong)
    migration_parks_idle: bool = False  # may a migration park idle servers on its target?
    # A model whose requests have waited this long for memory may park *busy* neighbours of no
    # higher priority that get no more requests than it (least used first: lowest request rate;
    # they drain first): time-sharing, not starvation. A neighbour that gets k times its
    # requests only after k x this wait (a turn parked costs k times the requests it serves),
    # and any after ``starvation_max_s``: no model waits for memory longer (kvpr.py preempt_wait_s).
    starvation_s: float = 10.0
    starvation_max_s: float = 60.0
    tpot_guard: bool = True  # also place by decode rounds (chimera's addition to Prism's KVPR)
    # how colocated servers share compute (host.gpu_sharing as resolved at `up`): the share of a
    # neighbour's decode step a round charges is perf/sharing.py's
    sharing: GpuSharing = "timeslice"
    # may start new servers (65 s each) where no parked server exists, for an activation or a
    # migration (a migration to a server with no backup on its node is a cold start: movecost.py)
    cold_start: bool = False
    gpu_reserve_bytes: int = 0  # per GPU, never planned (driver, fragmentation)
    candidates: int = 8  # cold-start targets examined per activation (lowest ratio first)
    # Swap-on-demand (the llama-swap baseline): at most this many servers of different models
    # awake (or on their way) per GPU; an activation parks the others first, busy or not (their
    # requests drain), and waits while the GPU is already waking one. None = no limit.
    max_awake_per_gpu: int | None = None


@dataclass(frozen=True)
class ClusterView:
    """The frozen snapshot handed to ``place.decide``."""

    models: tuple[ModelDemand, ...]
    servers: tuple[ServerView, ...]
    gpu_bytes: tuple[int, ...]  # capacity of GPU i (index = GPU id)
    params: PlacementParams = PlacementParams()
    # The node of GPU i (up --ray); empty: one node. A move across nodes cannot use the source's
    # host-RAM backup (movecost.py).
    gpu_node: tuple[int, ...] = ()

    def node_of(self, gpu: int) -> int:
        return self.gpu_node[gpu] if gpu < len(self.gpu_node) else 0


# ---- decision: actions made of ordered steps the control loop executes one after another ----


@dataclass(frozen=True)
class Park:
    server: str  # drain (it is idle: no request in flight), then release weights and KV


@dataclass(frozen=True)
class Wake:
    server: str  # resume a parked server


@dataclass(frozen=True)
class Start:
    model: str
    gpus: tuple[int, ...]  # cold start a new server there (last resort: ~65 s)


@dataclass(frozen=True)
class Route:
    model: str
    gpus: tuple[int, ...]  # send the model's new requests to its server on these GPUs once ready


Step = Park | Wake | Start | Route


@dataclass(frozen=True)
class Activation:
    """Bring a model with demand and no awake server up: park idle victims, wake, route."""

    model: str
    gpus: tuple[int, ...]
    steps: tuple[Step, ...]
    kvpr_after: float
    reason: str


@dataclass(frozen=True)
class Migration:
    """Move a model: wake the target (after parking idle victims there), move traffic when it is
    ready, then park the source once its in-flight requests are done."""

    model: str
    source: str  # server id
    gpus: tuple[int, ...]
    steps: tuple[Step, ...]
    gain: float  # relative drop of the pair's highest KV pressure ratio
    reason: str


@dataclass(frozen=True)
class IdlePark:
    server: str
    steps: tuple[Step, ...]
    reason: str


Action = Activation | Migration | IdlePark


@dataclass(frozen=True)
class Blocked:
    model: str
    reason: str  # why it could not be activated now (the proxy keeps holding or sheds)


@dataclass(frozen=True)
class PlacementDecision:
    actions: tuple[Action, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    kvpr: tuple[float, ...] = ()  # per GPU after the actions (for metrics and the plan table)
