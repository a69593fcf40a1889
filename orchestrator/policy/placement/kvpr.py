"""The per-GPU memory ledger and KV Pressure Ratio that the global scheduler decides on.

KV Pressure Ratio of GPU g (Prism, arXiv 2505.04021 §4):
    KVPR_g = sum over models awake on g of (token rate x KV bytes per token / TPOT SLO)
             / memory left for KV on g
memory left for KV = capacity - reserve - CUDA contexts of every server there (parked ones too)
- awake bytes (weights, graphs, workspace) of every resident server. A TP group's ratio is the
highest of its GPUs. ``GpuTally`` is a working copy for one decision: placement.py mutates it as
it commits actions, so later choices of the same decision see earlier ones.
"""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.perf.sharing import decode_weight
from orchestrator.policy.placement.charges import Charges
from orchestrator.policy.placement.cluster import HOLDS_CONTEXT, RESIDENT, ClusterView, ModelDemand, S, ServerView

_TINY = 1.0  # bytes: keeps a full GPU's ratio finite and ordered
_ACTIVE = frozenset({S.AWAKE, S.WAKING, S.STARTING})
_AWAKE = S.AWAKE  # a module constant: an Enum member read off its class costs ~10x more
# per state: (holds its CUDA context, resident, active) - one lookup instead of three
_FLAGS = {st: (st in HOLDS_CONTEXT, st in RESIDENT, st in _ACTIVE) for st in S}
_PARKED = S.PARKED
# the tally's short paths: a parked server charges its context only, an awake one everything
assert _FLAGS[_PARKED] == (True, False, False), "a parked server holds its context, no weights, no KV"
assert _FLAGS[_AWAKE] == (True, True, True), "an awake server holds its context, weights and KV"


def preempt_wait_s(starvation: tuple[float, float], victim: ModelDemand, starving: ModelDemand) -> float:
    """How long ``starving``'s requests must have waited before it may park the busy ``victim``
    (``starvation``: PlacementParams' ``starvation_s`` and ``starvation_max_s``): the base wait
    for a neighbour that gets no more requests than it, that times the ratio of their request
    rates for a busier one (a turn parked loses the victim's requests, a turn awake serves the
    starving model's), and never more than the cap. A starving model with no measured rate
    counts as getting the fewest requests: the cap."""
    base, cap = starvation
    if victim.request_rate <= starving.request_rate:
        return min(base, cap)
    if starving.request_rate <= 0.0:
        return cap
    return min(cap, base * victim.request_rate / starving.request_rate)


def _use(m: ModelDemand) -> tuple[float, float]:
    return (m.request_rate, m.token_rate)


def decoding(m: ModelDemand) -> float:
    """The share of rounds a model decodes in: its activity, or 1 when unknown (worst case)."""
    return 1.0 if m.activity is None else min(max(m.activity, 0.0), 1.0)


class GpuTally:
    def __init__(self, view: ClusterView) -> None:
        n = len(view.gpu_bytes)
        reserve = view.params.gpu_reserve_bytes
        self.starvation = (view.params.starvation_s, view.params.starvation_max_s)
        self.models: dict[str, ModelDemand] = {m.name: m for m in view.models}
        self.room = [float(b - reserve) for b in view.gpu_bytes]  # left for KV
        self.committed = [0.0] * n  # KV that resident servers keep: max(floor, in use)
        self.pressure = [0.0] * n
        self.round_s = [0.0] * n  # expected decode seconds per round: steps x activity (tpot.py)
        self.on_gpu: list[list[str]] = [[] for _ in range(n)]
        self.of_model: dict[str, list[str]] = {}
        # per model, what one server charges each GPU (charges.py): computed when first needed
        self.charges = Charges(self.models, decode_weight(view.params.sharing))
        charges, models = self.charges, self.models
        # The initial charge of every server, inlined (``_charge`` with sign +1, same order of
        # additions per GPU, so the same floats): at 10,000 models this loop is a third of a
        # decision. A server is checked as it is charged (the first bad one raises, as before).
        room, committed, pressure, round_s, on_gpu = self.room, self.committed, self.pressure, self.round_s, self.on_gpu
        of_model = self.of_model
        # the id -> server and id -> state maps in one C-level pass each (same last-wins order)
        servers: dict[str, ServerView] = {s.id: s for s in view.servers}
        self.servers = servers
        self.state: dict[str, S] = {sid: s.state for sid, s in servers.items()}
        flags = _FLAGS
        coming: set[str] = set()  # coming_models() as the snapshot stands
        for s in view.servers:
            model = s.model
            m = models.get(model)
            if m is None:
                raise ValueError(f"server {s.id!r} runs model {model!r}, which the snapshot lacks")
            sid, gpus = s.id, s.gpus
            sids = of_model.get(model)
            if sids is None:
                of_model[model] = [sid]
            else:
                sids.append(sid)
            st = s.state
            if st is _PARKED and len(gpus) == 1:  # most servers of a large fleet: a context, no more
                g = gpus[0]
                if g < 0 or g >= n:
                    raise ValueError(f"server {sid!r} is on GPU {g}, the snapshot has {n} GPUs")
                on_gpu[g].append(sid)
                held = m.cost.parked_bytes
                if held:
                    room[g] -= held
                continue
            if st is _AWAKE and len(gpus) == 1:  # the other common case: every term, one GPU
                charge = charges[model]
                g = gpus[0]
                if g < 0 or g >= n:
                    raise ValueError(f"server {sid!r} is on GPU {g}, the snapshot has {n} GPUs")
                coming.add(model)
                on_gpu[g].append(sid)
                held = charge[0] + charge[1]
                if held:
                    room[g] -= held
                kv = s.kv_used_bytes
                committed[g] += charge[2] if charge[2] > kv else kv  # max(floor, in use)
                pressure[g] += charge[3]
                round_s[g] += charge[4]
                continue
            holds, resident, active = flags[st]
            if resident or active:
                charge = charges[model]
                if resident:
                    kv = s.kv_used_bytes
                    if charge[2] > kv:  # max(floor, in use)
                        kv = charge[2]
                    held = (charge[0] if holds else 0) + charge[1]
                else:
                    held = charge[0] if holds else 0
                if active:
                    coming.add(model)
                    p, r = charge[3], charge[4]
            else:  # parked, stopped, pending: its context at most, no charge computed
                held = m.cost.parked_bytes if holds else 0
            if not gpus:
                raise ValueError(f"server {sid!r} has no GPU")
            for g in gpus:
                if g < 0 or g >= n:
                    raise ValueError(f"server {sid!r} is on GPU {g}, the snapshot has {n} GPUs")
                on_gpu[g].append(sid)
                if held:
                    room[g] -= held
                if resident:
                    committed[g] += kv
                if active:
                    pressure[g] += p
                    round_s[g] += r
        self._coming: set[str] | None = coming  # None once a state changed

    # ---- bookkeeping -------------------------------------------------------------------

    def _charge(self, sid: str, sign: int) -> None:
        s = self.servers[sid]
        st = self.state[sid]
        context, awake, floor, pressure, round_s, _, _, _, _ = self.charges[s.model]
        holds, resident, active = _FLAGS[st]
        held = (context if holds else 0) + (awake if resident else 0)
        for g in s.gpus:
            if held:
                self.room[g] -= sign * held
            if resident:
                self.committed[g] += sign * max(floor, s.kv_used_bytes)
            if active:
                self.pressure[g] += sign * pressure
                self.round_s[g] += sign * round_s

    def set_state(self, sid: str, state: S) -> None:
        self._coming = None
        self._charge(sid, -1)
        self.state[sid] = state
        self._charge(sid, +1)

    def add_server(self, sid: str, model: str, gpus: tuple[int, ...], state: S) -> None:
        self._coming = None
        self.servers[sid] = ServerView(sid, model, gpus, state)
        self.state[sid] = state
        self.of_model.setdefault(model, []).append(sid)
        for g in gpus:
            self.on_gpu[g].append(sid)
        self._charge(sid, +1)

    # ---- questions ---------------------------------------------------------------------

    def ratio(self, g: int) -> float:
        return max(self.pressure[g], 0.0) / max(self.room[g], _TINY)

    def ratios(self) -> list[float]:
        """``ratio(g)`` of every GPU, in one pass."""
        # max(p, 0.0) / max(r, _TINY) spelled as comparisons: the same floats, no calls
        tiny = _TINY
        return [
            (0.0 if 0.0 > p else p) / (tiny if tiny > r else r) for p, r in zip(self.pressure, self.room, strict=True)
        ]

    def coming_models(self) -> set[str]:
        """Models with a server awake or on its way (waking, starting)."""
        if self._coming is not None:
            return set(self._coming)
        servers = self.servers
        return {servers[sid].model for sid, st in self.state.items() if st in _ACTIVE}

    def group_ratio(self, gpus: Iterable[int]) -> float:
        return max(self.ratio(g) for g in gpus)

    def free(self, g: int) -> float:
        """Memory a new resident server could still take on g (room beyond committed KV)."""
        return self.room[g] - self.committed[g]

    def resident(self, model: str) -> list[str]:
        return [sid for sid in self.of_model.get(model, ()) if self.state[sid] in RESIDENT]

    def idle_s(self, model: ModelDemand, now: float) -> float:
        return float("inf") if model.last_active_at is None else now - model.last_active_at

    def evictable(self, sid: str, now: float) -> bool:
        """Awake, nothing in flight, and its model idle past its threshold (and allowed to park)."""
        s = self.servers[sid]
        m = self.models[s.model]
        return (
            self.state[sid] is _AWAKE
            and s.in_flight == 0
            and not m.busy
            and m.park_when != "never"
            and m.idle_park_s > 0
            and self.idle_s(m, now) >= m.idle_park_s
        )

    def need_bytes(self, model: ModelDemand, cold: bool) -> float:
        c = model.cost
        return c.awake_bytes + c.kv_floor_bytes + (c.parked_bytes if cold else 0)

    def preemptible(self, sid: str, for_model: ModelDemand) -> bool:
        """Awake, allowed to park, of no higher priority than ``for_model`` (busy or not), and
        ``for_model``'s requests have waited ``preempt_wait_s`` for this neighbour."""
        m = self.models[self.servers[sid].model]
        return (
            self.state[sid] is _AWAKE
            and m.name != for_model.name
            and m.park_when != "never"
            and m.priority <= for_model.priority
            and for_model.oldest_wait_s >= preempt_wait_s(self.starvation, m, for_model)
        )

    def spill(self, sid: str, gpus: tuple[int, ...]) -> int:
        """GPUs of a server outside ``gpus``: parking a TP group to make room for a small model
        also empties its other GPUs (and costs a wake of the whole group later), so victims
        that spill beyond the GPUs that need room come last."""
        return sum(1 for g in self.servers[sid].gpus if g not in gpus)

    def make_room(
        self,
        gpus: tuple[int, ...],
        need: float,
        now: float,
        exclude: frozenset[str] = frozenset(),
        starving: ModelDemand | None = None,
    ) -> list[str] | None:
        """Idle servers to park so that ``need`` bytes fit on every GPU of the group (those within
        the group before TP groups that spill beyond it, then longest idle first), [] if it fits
        already, None if even parking every idle server is not enough.
        For a ``starving`` model, busy servers it may preempt (``preemptible``) come after the
        idle ones, least used first (lowest request rate, then token rate: the fewest requests
        disturbed; KV pressure would pick a busy model with a small KV per token, and a popular
        one thrashes with its neighbours)."""
        room, committed = self.room, self.committed
        if len(gpus) == 1:  # the common case, without the dict
            g = gpus[0]
            if need - (room[g] - committed[g]) <= 0:
                return []
        short = {g: need - (room[g] - committed[g]) for g in gpus}  # need - free(g)
        if max(short.values()) <= 0:
            return []
        cands = {sid for g in gpus for sid in self.on_gpu[g] if sid not in exclude}
        pool = sorted(
            (sid for sid in cands if self.evictable(sid, now)),
            key=lambda sid: (self.spill(sid, gpus), -self.idle_s(self.models[self.servers[sid].model], now), sid),
        )
        if starving is not None:
            busy = [sid for sid in cands if sid not in pool and self.preemptible(sid, starving)]
            pool += sorted(
                busy, key=lambda sid: (self.spill(sid, gpus), *_use(self.models[self.servers[sid].model]), sid)
            )
        victims: list[str] = []
        for sid in pool:
            s = self.servers[sid]
            if not any(short.get(g, 0) > 0 for g in s.gpus):
                continue
            freed = self.models[s.model].cost.awake_bytes + max(
                self.models[s.model].cost.kv_floor_bytes, s.kv_used_bytes
            )
            victims.append(sid)
            for g in s.gpus:
                if g in short:
                    short[g] -= freed
            if all(v <= 0 for v in short.values()):
                return victims
        return None

    def fits_ratio(self, g: int, model: ModelDemand, need: float) -> float | None:
        """``ratio_after((g,), model, [], cold=False)`` when ``need`` bytes fit on GPU g as it
        stands (``make_room``'s first test: nobody to park), else None: an activation's common
        case in one call, same floats."""
        if need - (self.room[g] - self.committed[g]) > 0:
            return None
        pressure = self.pressure[g] + model.pressure
        room = self.room[g] - model.cost.awake_bytes
        ratio = (0.0 if 0.0 > pressure else pressure) / (_TINY if _TINY > room else room)
        return ratio if ratio > 0.0 else 0.0

    def ratio_after(
        self, gpus: tuple[int, ...], model: ModelDemand, victims: list[str], cold: bool, leaving: tuple[int, ...] = ()
    ) -> float:
        """The group's ratio once ``model`` is awake there, victims parked (and, for a migration,
        the model's pressure gone from ``leaving`` - only matters when the groups overlap)."""
        worst = 0.0
        own = model.pressure
        awake, context = model.cost.awake_bytes, model.cost.parked_bytes if cold else 0
        # max(a, b) spelled as ``b if b > a else a`` (what max does): no calls, same floats
        for g in gpus:
            room = self.room[g] - awake - context
            pressure = self.pressure[g] + own - (own if g in leaving else 0.0)
            for sid in victims:
                s = self.servers[sid]
                if g in s.gpus:
                    room += self.charges[s.model][1]  # awake bytes
                    pressure -= self.charges[s.model][3]  # its pressure
            ratio = (0.0 if 0.0 > pressure else pressure) / (_TINY if _TINY > room else room)
            if ratio > worst:
                worst = ratio
        return worst
