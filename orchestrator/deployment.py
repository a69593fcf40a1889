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

How its server is started (``start_mem``): servers that share a GPU start concurrently, each
given its memory in absolute terms. A fixed pool is ``--max-total-tokens``; the shim's virtual
range is absolute already. SGLang still profiles (``_profile_available_bytes``, the formula it
has kept since 0.4): ``rest = free_after_weights - free_before * (1 - fraction)``, its pool being
``min(rest, --max-total-tokens)``, and it fails "Not enough memory" when ``rest <= 0``. With the
default fraction (~0.5 of what is free) the result depends on what the others hold and load
meanwhile; ``launch_mem_fraction`` (``launch_fraction``) is chosen so that ``rest`` covers the
pool whatever the others do, provided the budgets of the GPU fit in it, which the start-up
policy sees to (orchestrator/policy/startup.py). With the shim the profile is replaced
(cumem_shim answers its virtual range): no fraction is given. Every figure is computed from
``host.gpu_memory_gb``, never from the physical card, so a larger card can stand for a smaller
one.

An instance's cost depends on how it is started (perf/cost.py ``runtime_bytes``: its CUDA
graphs' batch sizes and its pool's request slots), and a shim's virtual range on its cost. No
circle: ``_instance`` sizes the range with the upper-bound cost (SGLang's default batch sizes,
the most request slots); ``start_mem`` chooses the batch sizes from the KV the instance can
expect beside its GPU's other servers (``kv_share``, also from upper-bound costs), gives every
server its request slots (``--max-running-requests``: those SGLang derives from that KV, at most
REQUEST_SLOTS_PER_GRAPH_BS x the batch sizes; from a shim's virtual range SGLang would derive up
to twice a fixed pool's) and charges the instance the cost of the batch sizes and slots it is
really started with, never more than the upper bound. A model's cost (the global scheduler's,
``plan``'s) is the largest of its instances'. On a GPU whose start budgets would not fit with
every shim at START_LIMIT_BYTES, its shims start at their KV floor instead (``_crowded``):
servers that fit awake start together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from orchestrator.config import GIB, Config, HostSpec, InstanceSpec, ModelSpec
from orchestrator.config.spec import flag_int
from orchestrator.perf.cost import DEFAULT_CUDA_GRAPH_MAX_BS, DEFAULT_KV_FLOOR_TOKENS, ServerCost, server_cost
from orchestrator.perf.model import LatencyModel, request_slots
from orchestrator.policy.placement.cluster import PlacementParams
from orchestrator.shapes import ModelShape
from orchestrator.types import GpuSharing, Mode, OnLate

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

# Bounds of the --mem-fraction-static a fixed pool is started with (``launch_fraction``).
MIN_LAUNCH_MEM_FRACTION = 0.5
MAX_LAUNCH_MEM_FRACTION = 0.99
# CUDA graphs: SGLang captures one graph per batch size up to --cuda-graph-max-bs (its default
# on a 80-160 GB card: 256, i.e. ~35 graphs). A server sized for few concurrent sequences never
# runs most of them; a batch above the largest one runs eager (slower decode, never wrong).
# Expected concurrency = the KV it is sized for at start / this many tokens per sequence.
EXPECTED_TOKENS_PER_SEQUENCE = 512
MIN_CUDA_GRAPH_MAX_BS = 32
MAX_CUDA_GRAPH_MAX_BS = DEFAULT_CUDA_GRAPH_MAX_BS  # SGLang's own default for 80-160 GB cards
# Request slots (--max-running-requests): SGLang allocates its req_to_token pool for them at start,
# (slots + 1) rows of the model's whole context (1 GiB for a 128k context at the 2,048 it derives
# from any pool), whatever the load. A server gets at most this many times its graphs' largest
# batch: 256 slots (128 MiB at 128k) for one sized for 32 sequences. More requests wait in the
# proxy's admission queue, which counts the engine's slots (proxy/admission.py).
REQUEST_SLOTS_PER_GRAPH_BS = 8


def default_mem_fraction(model: ModelSpec, host: HostSpec) -> float:
    """``--mem-fraction-static`` of a server whose pool nothing sizes: the default fraction,
    raised for weights that would not fit in it (e.g. 70B on TP 2)."""
    weights = model.shape.weight_bytes / model.tp_size / (host.gpu_memory_gb * GIB)
    return min(MAX_MEM_FRACTION_STATIC, max(DEFAULT_MEM_FRACTION_STATIC, weights + MEM_FRACTION_HEADROOM))


def ledger_enabled(mode: Mode) -> bool:
    """static: fixed pools, no shim; elastic and full: the KV ledger moves KV between models."""
    return mode in ("elastic", "full")


def shim_refusal(spec: InstanceSpec) -> str | None:
    """Why this instance cannot run with the shim (a fixed KV pool), or None. Every TP rank
    backs its own shard and all ranks apply a limit in the same step (cumem_shim/ranks.py),
    so tensor parallelism is no reason; nothing in the placements file is one today."""
    del spec
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
    ceiling_bytes: int  # per GPU, the most KV it may map: kv_pool_gb / TP, else its GPU beside its own cost
    start_limit_bytes: int  # its shim's limit before the ledger's first split
    fixed_pool_bytes: int  # KV over its group without the shim (never resized); 0 with the shim
    mem_fraction_static: float  # the fraction a fixed pool without kv_pool_gb is sized with
    # Start-up (``start_mem``): what the server is given and what it may hold once up.
    max_total_tokens: int | None = None  # the fixed pool in tokens; None with the shim
    launch_mem_fraction: float | None = None  # --mem-fraction-static; None with the shim
    start_alone: bool = False  # no other instance of its GPUs may start while it starts
    start_budget_bytes: int = 0  # per GPU once up, before the ledger's first split
    cuda_graph_max_bs: int = MAX_CUDA_GRAPH_MAX_BS
    pool_tokens: int | None = None  # the KV pool SGLang sizes its request slots by (None: unknown)
    # --max-running-requests (``max_running_requests``); None: SGLang derives them from its pool
    max_running_requests: int | None = None

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

    @property
    def host_backup_bytes(self) -> int:
        """Pinned host RAM its weights' backup holds once it has parked (mode full: SGLang's CPU
        backup, kept between parks with TMS_RETAIN_CPU_BACKUP=1): the whole model's weights,
        every TP rank's shard together (docs/gpu-testing.md: host RAM equal to the weights)."""
        return self.spec.model.shape.weight_bytes


@dataclass(frozen=True)
class Deployment:
    config: Config
    models: Mapping[str, ModelFacts]  # by model name
    instances: Mapping[str, InstanceFacts]  # by instance id, in file order
    placement_params: PlacementParams
    gpu_node: tuple[int, ...] = ()  # node of each cluster-wide GPU (up --ray); empty: one host

    @property
    def mode(self) -> Mode:
        return self.config.mode

    @property
    def sharing(self) -> GpuSharing:
        """How colocated servers share compute in this run (host.gpu_sharing, resolved)."""
        return self.placement_params.sharing

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


def derive(
    cfg: Config, serial_starts: bool = False, gpu_node: tuple[int, ...] = (), sharing: GpuSharing = "timeslice"
) -> Deployment:
    """``serial_starts``: every instance starts alone on its GPUs (CHIMERA_SERIAL_STARTS);
    ``gpu_node``: the node of each GPU on a Ray cluster (cluster/nodes.py ``Inventory``);
    ``sharing``: how colocated servers share compute, ``host.gpu_sharing`` as resolved where the
    engines run (perf/sharing.py ``resolve``)."""
    instances = start_mem({i.id: _instance(cfg, i) for i in cfg.instances}, cfg.host, serial_starts)
    models = {
        m.name: _model(cfg, m, [f for f in instances.values() if f.spec.model.name == m.name]) for m in cfg.models
    }
    return Deployment(
        cfg,
        models,
        instances,
        PlacementParams(
            tau=cfg.scheduler.tau,
            max_awake_per_gpu=cfg.scheduler.max_awake_per_gpu,
            sharing=sharing,
            starvation_s=cfg.scheduler.starvation_s,
            starvation_max_s=cfg.scheduler.starvation_max_s,
        ),
        gpu_node,
    )


def _model(cfg: Config, m: ModelSpec, instances: list[InstanceFacts]) -> ModelFacts:
    """``instances``: the model's own (none for a pooled model: the upper-bound cost)."""
    floors = [p.kv_floor_gb for p in m.placements if p.kv_floor_gb is not None]
    floor = int(max(floors) * GIB) if floors else None
    if instances and all(f.pool_tokens is not None for f in instances):  # the largest of its instances'
        bs = max(f.cuda_graph_max_bs for f in instances)
        tokens = max(f.pool_tokens or 0 for f in instances)
        slots = max((f.max_running_requests for f in instances if f.max_running_requests is not None), default=None)
        cost = server_cost(m.shape, m.tp_size, floor, bs, tokens, slots)
    else:
        cost = server_cost(m.shape, m.tp_size, floor)
    on_late: OnLate = "shed" if m.slo.ttft_s is not None and cfg.scheduler.on_late == "shed" else "serve"
    return ModelFacts(m, cost, LatencyModel(m.shape, m.tp_size), m.slo.ttft_or_default, m.slo.tpot_or_default, on_late)


def _instance(cfg: Config, spec: InstanceSpec) -> InstanceFacts:
    model, placement, host = spec.model, spec.placement, cfg.host
    floor_gb = placement.kv_floor_gb
    # the upper bound (module docstring); ``start_mem`` charges the server as it is started
    cost = server_cost(model.shape, model.tp_size, int(floor_gb * GIB) if floor_gb is not None else None)
    refusal = shim_refusal(spec) if ledger_enabled(cfg.mode) else None
    shim = ledger_enabled(cfg.mode) and refusal is None
    fraction = default_mem_fraction(model, host)
    if placement.kv_pool_gb is not None:  # the server's KV over its group; a ceiling is per GPU
        ceiling = int(placement.kv_pool_gb * GIB) // model.tp_size
    else:  # the virtual range SGLang sizes its pool for
        ceiling = max(MIN_POOL_BYTES, int(host.gpu_memory_gb * GIB) - cost.held_awake_bytes)
    floor = int((floor_gb or 0) * GIB)
    return InstanceFacts(
        spec=spec,
        cost=cost,
        starts_on_up=placement.on or cfg.mode == "full",
        serves_on_up=placement.on,
        shim=shim,
        shim_refusal=refusal,
        floor_bytes=floor,
        ceiling_bytes=ceiling,
        start_limit_bytes=min(ceiling, max(floor, START_LIMIT_BYTES)),
        fixed_pool_bytes=0 if shim else _fixed_pool(spec, host, fraction),
        mem_fraction_static=fraction,
    )


def _fixed_pool(spec: InstanceSpec, host: HostSpec, fraction: float) -> int:
    """KV a server without the shim holds across its group: ``kv_pool_gb``, else what SGLang
    takes with ``fraction`` of each GPU (weights and pool share it)."""
    if spec.placement.kv_pool_gb is not None:
        return int(spec.placement.kv_pool_gb * GIB)
    per_gpu = fraction * host.gpu_memory_gb * GIB
    return max(0, int(per_gpu * spec.model.tp_size) - spec.model.shape.weight_bytes)


def start_budget(f: InstanceFacts) -> int:
    """What the instance holds on each of its GPUs once up: its context, weights, graphs and
    activations, and its KV (its fixed pool, or the shim's limit before the ledger moves it)."""
    kv = f.start_limit_bytes if f.shim else f.fixed_pool_bytes // f.spec.model.tp_size
    return f.cost.held_awake_bytes + kv


def start_mem(facts: Mapping[str, InstanceFacts], host: HostSpec, serial: bool = False) -> dict[str, InstanceFacts]:
    """Each instance's start-up facts (module docstring): its budget, its pool in tokens, the
    fraction that holds whatever starts beside it, whether it must start alone (``serial``:
    every instance, CHIMERA_SERIAL_STARTS), its CUDA-graph batch sizes and the cost of the
    server so started (module docstring)."""
    gpu = int(host.gpu_memory_gb * GIB)
    share = kv_share(facts, gpu)
    out: dict[str, InstanceFacts] = {}
    for iid, f in facts.items():
        per_token_group = f.cost.kv_bytes_per_token * f.spec.model.tp_size
        if f.shim:  # sized for its share of the GPU's KV, at least its floor
            tokens = None
            per_gpu = max(f.floor_bytes, min(f.ceiling_bytes, min(share[g] for g in f.spec.gpus)))
            sized_for = per_gpu * f.spec.model.tp_size  # over the group, like a fixed pool
            pool_tokens = max(1, sized_for // per_token_group)
        else:
            tokens = max(1, f.fixed_pool_bytes // per_token_group)
            sized_for, pool_tokens = f.fixed_pool_bytes, tokens
        model = f.spec.model
        bs, slots, cost = sized_server(
            model.shape,
            model.tp_size,
            model.engine_args,
            f.cost.kv_floor_bytes,
            sized_for // per_token_group,
            pool_tokens,
            fixed=not f.shim,
        )
        started = replace(f, cost=cost, cuda_graph_max_bs=bs, pool_tokens=pool_tokens, max_running_requests=slots)
        out[iid] = replace(
            started,
            max_total_tokens=tokens,
            launch_mem_fraction=None if f.shim else launch_fraction(started, gpu),
            start_alone=serial,
        )
    crowded = _crowded(out, gpu)
    for iid, f in out.items():
        if f.shim and not crowded.isdisjoint(f.spec.gpus):  # its least KV instead of the start limit
            f = replace(f, start_limit_bytes=min(f.ceiling_bytes, max(f.floor_bytes, f.cost.kv_floor_bytes)))
        out[iid] = replace(f, start_budget_bytes=start_budget(f))
    return out


def kv_share(facts: Mapping[str, InstanceFacts], gpu_bytes: int) -> dict[int, int]:
    """Per GPU: the KV one of its shim servers can expect to hold, which sizes its CUDA graphs:
    what the GPU has beside the servers that stay awake after ``up`` (each at its upper-bound
    cost, so the estimate never depends on the batch sizes it chooses) and the parked contexts
    of the others, split evenly among those awake (at least one). Not the shim's virtual range
    shared: that range is the GPU less the server's own cost alone, so on a GPU shared by seven
    servers whose weights nearly fill it, it sized a 1B's graphs for ~170 sequences (batch size
    256, ~0.5 GiB more than 16) where its KV holds ~10; the graphs it never runs are memory the
    KV ledger cannot hand out."""
    held: dict[int, int] = {}
    awake: dict[int, int] = {}
    for f in facts.values():
        for g in f.spec.gpus:
            on = f.serves_on_up
            held[g] = held.get(g, 0) + (f.cost.held_awake_bytes if on else f.cost.parked_bytes)
            awake[g] = awake.get(g, 0) + int(on)
    return {g: max(0, gpu_bytes - held[g]) // max(1, awake[g]) for g in held}


def _crowded(facts: Mapping[str, InstanceFacts], gpu_bytes: int) -> set[int]:
    """GPUs whose instances' start budgets, with every shim at START_LIMIT_BYTES, exceed the
    GPU: there each shim starts with its KV floor (the least it is ever woken with), so that
    servers that fit awake at their floors (what ``plan`` checks) also start together; the
    ledger's first split a second later hands out the rest."""
    need: dict[int, int] = {}
    for f in facts.values():
        for g in f.spec.gpus:
            need[g] = need.get(g, 0) + start_budget(f)
    return {g for g, n in need.items() if n > gpu_bytes}


def launch_fraction(f: InstanceFacts, gpu_bytes: int) -> float:
    """``--mem-fraction-static`` for a fixed pool started beside others: ``1 - after / G``,
    where ``after`` is what the server allocates after its pool (CUDA graphs, activations) and
    ``G`` the GPU's capacity in the placements file.

    Why it holds whatever the others do, as long as the budgets of the GPU fit in ``G`` (the
    start-up policy starts an instance beside others only then): when SGLang reads ``after
    weights``, everything allocated on the card is at most ``G - pool - after`` (the others'
    budgets and its own, less what it has not allocated yet), so ``free_after_weights >=
    G_card - G + pool + after``; and ``free_before * (1 - fraction) <= G_card * after / G <=
    G_card - G + after``. Hence ``rest >= pool`` on a card of any size ``G_card >= G``, and
    ``--max-total-tokens`` keeps the pool at its budget. A larger fraction never hurts SGLang
    (it only enters the profile); a smaller one, as with the default, sizes the pool from what
    the others happen to hold."""
    after = f.cost.awake_bytes - f.spec.model.shape.weight_bytes // f.spec.model.tp_size
    return min(MAX_LAUNCH_MEM_FRACTION, max(MIN_LAUNCH_MEM_FRACTION, 1 - after / gpu_bytes))


def max_running_requests(bs: int, pool_tokens: int, context_len: int, fixed: bool, asked: int | None = None) -> int:
    """``--max-running-requests`` of a server with graphs up to ``bs`` and a pool of
    ``pool_tokens`` (a shim's: the KV it is sized for; its virtual range would give SGLang up to
    twice a fixed pool's slots): ``asked`` (the model's engine_args), else the slots SGLang
    derives from that pool, at most REQUEST_SLOTS_PER_GRAPH_BS x ``bs``; a ``fixed`` pool's also
    within half its tokens, as SGLang keeps them (``resolve_max_num_reqs``), so the figure
    passed is the one in force."""
    slots = asked or min(request_slots(pool_tokens, context_len), REQUEST_SLOTS_PER_GRAPH_BS * bs)
    return max(1, min(slots, pool_tokens // 2)) if fixed else slots


def sized_server(
    shape: ModelShape,
    tp_size: int,
    engine_args: Sequence[str],
    floor_bytes: int | None,
    sized_tokens: int,
    pool_tokens: int,
    fixed: bool,
) -> tuple[int, int, ServerCost]:
    """How a server sized for ``sized_tokens`` of KV, with a pool of ``pool_tokens``, is started
    and what it then costs: (--cuda-graph-max-bs, --max-running-requests, its cost). A model's
    own ``engine_args`` win over chimera's figures (sglang/launch.py puts them last): it is
    charged them."""
    bs = flag_int(engine_args, "--cuda-graph-max-bs") or cuda_graph_max_bs(sized_tokens)
    asked = flag_int(engine_args, "--max-running-requests")
    slots = max_running_requests(bs, pool_tokens, shape.max_context, fixed, asked)
    return bs, slots, server_cost(shape, tp_size, floor_bytes, bs, pool_tokens, slots)


def crowded_cost(shape: ModelShape, tp_size: int = 1) -> ServerCost:
    """What a server costs when ``start_mem`` starts it on a GPU its neighbours fill: sized for
    its KV floor (DEFAULT_KV_FLOOR_TOKENS), so graphs up to MIN_CUDA_GRAPH_MAX_BS and
    REQUEST_SLOTS_PER_GRAPH_BS x as many request slots. bench/sim's fleets are charged this."""
    tokens = DEFAULT_KV_FLOOR_TOKENS
    return sized_server(shape, tp_size, (), None, tokens, tokens, fixed=False)[2]


def cuda_graph_max_bs(tokens: int) -> int:
    """``--cuda-graph-max-bs`` for a server sized for ``tokens`` of KV: the power of two at or
    above its expected concurrency, within [MIN_CUDA_GRAPH_MAX_BS, MAX_CUDA_GRAPH_MAX_BS]."""
    want = max(1, -(-tokens // EXPECTED_TOKENS_PER_SEQUENCE))
    bs = 1 << (want - 1).bit_length()
    return min(MAX_CUDA_GRAPH_MAX_BS, max(MIN_CUDA_GRAPH_MAX_BS, bs))
