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

from orchestrator.policy.placement.cluster import HOLDS_CONTEXT, RESIDENT, ClusterView, ModelDemand, S, ServerView

_TINY = 1.0  # bytes: keeps a full GPU's ratio finite and ordered
_ACTIVE = frozenset({S.AWAKE, S.WAKING, S.STARTING})


def decoding(m: ModelDemand) -> float:
    """The share of rounds a model decodes in: its activity, or 1 when unknown (worst case)."""
    return 1.0 if m.activity is None else min(max(m.activity, 0.0), 1.0)


class GpuTally:
    def __init__(self, view: ClusterView) -> None:
        n = len(view.gpu_bytes)
        reserve = view.params.gpu_reserve_bytes
        self.params = view.params
        self.models: dict[str, ModelDemand] = {m.name: m for m in view.models}
        self.room = [float(b - reserve) for b in view.gpu_bytes]  # left for KV
        self.committed = [0.0] * n  # KV that resident servers keep: max(floor, in use)
        self.pressure = [0.0] * n
        self.round_s = [0.0] * n  # expected decode seconds per round: steps x activity (tpot.py)
        self.state: dict[str, S] = {}
        self.servers: dict[str, ServerView] = {}
        self.on_gpu: list[list[str]] = [[] for _ in range(n)]
        self.of_model: dict[str, list[str]] = {}
        # per model, what one server charges each GPU: (context, awake bytes, KV floor, pressure,
        # expected decode seconds per round); computed once, a decision charges thousands
        self._charges: dict[str, tuple[int, int, int, float, float]] = {
            m.name: (m.cost.parked_bytes, m.cost.awake_bytes, m.cost.kv_floor_bytes, m.pressure, m.step_s * decoding(m))
            for m in view.models
        }
        for s in view.servers:
            if s.model not in self.models:
                raise ValueError(f"server {s.id!r} runs model {s.model!r}, which the snapshot lacks")
            if min(s.gpus) < 0 or max(s.gpus) >= n:
                bad = next(g for g in s.gpus if not 0 <= g < n)
                raise ValueError(f"server {s.id!r} is on GPU {bad}, the snapshot has {n} GPUs")
            self.servers[s.id] = s
            self.state[s.id] = s.state
            self.of_model.setdefault(s.model, []).append(s.id)
            for g in s.gpus:
                self.on_gpu[g].append(s.id)
            self._charge(s.id, +1)

    # ---- bookkeeping -------------------------------------------------------------------

    def _charge(self, sid: str, sign: int) -> None:
        s = self.servers[sid]
        st = self.state[sid]
        context, awake, floor, pressure, round_s = self._charges[s.model]
        held = (context if st in HOLDS_CONTEXT else 0) + (awake if st in RESIDENT else 0)
        active = st in _ACTIVE
        for g in s.gpus:
            if held:
                self.room[g] -= sign * held
            if st in RESIDENT:
                self.committed[g] += sign * max(floor, s.kv_used_bytes)
            if active:
                self.pressure[g] += sign * pressure
                self.round_s[g] += sign * round_s

    def set_state(self, sid: str, state: S) -> None:
        self._charge(sid, -1)
        self.state[sid] = state
        self._charge(sid, +1)

    def add_server(self, sid: str, model: str, gpus: tuple[int, ...], state: S) -> None:
        self.servers[sid] = ServerView(sid, model, gpus, state)
        self.state[sid] = state
        self.of_model.setdefault(model, []).append(sid)
        for g in gpus:
            self.on_gpu[g].append(sid)
        self._charge(sid, +1)

    # ---- questions ---------------------------------------------------------------------

    def ratio(self, g: int) -> float:
        return max(self.pressure[g], 0.0) / max(self.room[g], _TINY)

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
            self.state[sid] is S.AWAKE
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
        ``for_model`` waited long enough for it: ``starvation_s`` for a neighbour with no more
        requests/s, scaled by their ratio for a busier one, at most ``starvation_max_s``."""
        m = self.models[self.servers[sid].model]
        if m.request_rate <= for_model.request_rate:
            wait = self.params.starvation_s
        elif for_model.request_rate > 0:
            wait = self.params.starvation_s * m.request_rate / for_model.request_rate
        else:
            wait = float("inf")
        wait = min(wait, self.params.starvation_max_s)
        return (
            self.state[sid] is S.AWAKE
            and m.name != for_model.name
            and m.park_when != "never"
            and m.priority <= for_model.priority
            and for_model.oldest_wait_s >= wait
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
        For a ``starving`` model, busy servers it may preempt come after the idle ones, least
        used first (lowest request rate, then token rate: the fewest requests disturbed)."""
        short = {g: need - self.free(g) for g in gpus}
        if all(v <= 0 for v in short.values()):
            return []
        cands = {sid for g in gpus for sid in self.on_gpu[g] if sid not in exclude}
        pool = sorted(
            (sid for sid in cands if self.evictable(sid, now)),
            key=lambda sid: (self.spill(sid, gpus), -self.idle_s(self.models[self.servers[sid].model], now), sid),
        )
        if starving is not None:
            busy = [sid for sid in cands if sid not in pool and self.preemptible(sid, starving)]
            pool += sorted(
                busy,
                key=lambda sid: (
                    self.spill(sid, gpus),
                    self.models[self.servers[sid].model].request_rate,
                    self.models[self.servers[sid].model].token_rate,
                    sid,
                ),
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

    def ratio_after(
        self, gpus: tuple[int, ...], model: ModelDemand, victims: list[str], cold: bool, leaving: tuple[int, ...] = ()
    ) -> float:
        """The group's ratio once ``model`` is awake there, victims parked (and, for a migration,
        the model's pressure gone from ``leaving`` - only matters when the groups overlap)."""
        worst = 0.0
        for g in gpus:
            room = self.room[g] - model.cost.awake_bytes - (model.cost.parked_bytes if cold else 0)
            pressure = self.pressure[g] + model.pressure - (model.pressure if g in leaving else 0.0)
            for sid in victims:
                s = self.servers[sid]
                if g in s.gpus:
                    room += self.models[s.model].cost.awake_bytes
                    pressure -= self.models[s.model].pressure
            worst = max(worst, max(pressure, 0.0) / max(room, _TINY))
        return worst
