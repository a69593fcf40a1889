"""chimera in the simulator: the policies of orchestrator/policy/, called as the control loop and
the proxy will call them, with the virtual clock.

- warm start: ``layout`` puts one parked server per model (``standby_fraction`` of the most
  popular get a second one, a migration target), packing by the awake and activity profiles
  of a *history* trace (another draw of the same generator: "yesterday"; the trace being
  replayed is never looked at beyond its average rates, which every system gets); the first
  ``place.decide`` wakes the expected-hot set (instantly, like the baselines, which also
  start loaded);
- global: ``place.decide`` every ``tick_s`` and at once when a request arrives for a model
  with no awake server; its actions run through the live plan executor
  (orchestrator/control/plans.py: park victims once drained, wake, route when ready, park the
  migration source once drained), whose park, wake and serve are the simulator's operations;
- KV: the live KV ledger (kv.py over orchestrator/kv/ledger.py) re-splits every GPU every
  ``kv_every_s`` (``kv_regrow_s`` while it holds a grow back) and on every park and wake;
- local: one queue per GPU (lead GPU of a TP group); ``admit.decide`` on every arrival,
  completion, route and limit change: EDF dispatch under KV room, Moore–Hodgson shedding.
Ablations: ``global_placement=False`` (round-robin layout, no KVPR, no migration), ``local=False``
(first-come-first-served per model, nothing shed), ``elastic=False`` (a server's KV pool is
the share it was given when it woke, never resized while awake, and counts whole in the
ledger and in the policy's snapshot),
``profile=False`` (no history: expected awake shares from average rates), ``activity=False``
(the TPOT guard and the layout count every awake model as always decoding),
``policy_sharing="timeslice"`` (placement and layout charge neighbours' steps whole whatever the
GPUs' sharing: under simulated MPS, a guard more conservative than the live one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from bench.sim.kv import SimLedger
from bench.sim.servers import SimModel, SimReq, SimServer
from bench.sim.simulator import Simulator, held_bytes
from bench.traces.request import BenchRequest
from orchestrator.config.spec import SchedulerSpec
from orchestrator.control.plans import Plans, WakeGate, policy_state
from orchestrator.kv.room import Hold, Room, room
from orchestrator.layout.packing import layout
from orchestrator.layout.profiles import activity_profile, awake_profile
from orchestrator.policy.admission import admit
from orchestrator.policy.admission.queueing import EngineRoom, ModelRule, Pending, QueueView
from orchestrator.policy.placement import place
from orchestrator.policy.placement.cluster import (
    Activation,
    ClusterView,
    ModelDemand,
    PlacementParams,
    ServerView,
    Wake,
)
from orchestrator.policy.placement.cluster import S as St
from orchestrator.policy.rates import RateWindow
from orchestrator.types import GpuSharing, InstanceState, OnLate

MAX_RUNNING = 1024
PROFILE_STEP_S = 10.0  # resolution of the profiles the layout packs by (a fraction of the 45 s idle threshold)


def expected_step_s(m: SimModel, req_rate: float, tokens_per_req: float, floor: float = 0.0) -> float:
    """The model's decode step time at the batch Little's law predicts (rate x unloaded request
    time); 0 when it has no traffic, or less than ``floor`` requests in flight on average. How
    often it decodes is ``expected_activity`` (tpot.py, interference.py); without it, the TPOT
    guard counts every model with a step as always decoding, so ``floor`` = 0.01 leaves out
    models busy under 1% of the time."""
    out = tokens_per_req / 2  # prompt and output lengths have the same range in these traces
    concurrency = req_rate * out * m.decode_s(1, tokens_per_req)
    if concurrency <= floor:
        return 0.0
    batch = max(1, round(concurrency))
    return m.decode_s(batch, batch * tokens_per_req)


def request_alone_s(m: SimModel, tokens_per_req: float) -> float:
    """How long one request of the usual length takes on the model's server alone."""
    half = int(tokens_per_req / 2)  # prompt and output lengths have the same range here
    return m.lat.prefill_time([(half, 0)]) + half * m.decode_s(1, 1.5 * half)


def expected_activity(req_rate: float, alone_s: float) -> float:
    """Share of time the model's server has requests running when alone: 1 - exp(-rate x the
    time one request takes alone), the chance of at least one under Poisson arrivals."""
    return 1 - math.exp(-req_rate * alone_s)


@dataclass(frozen=True)
class ChimeraOptions:
    global_placement: bool = True
    local: bool = True
    elastic: bool = True
    tick_s: float = 2.0
    kv_every_s: float = 1.0  # the live KV runner's period
    kv_regrow_s: float = 0.25  # its next step while a grow is held back (kv/runner.py REGROW_S)
    # Models that get a second (parked) server, a migration target. 0 by default: in these
    # simulations the extra CUDA contexts (2.3 GiB each) and migration wakes cost more than the
    # moves gained (docs/bench-sim.md, variant chimera-standby).
    standby_fraction: float = 0.0
    tau: float = 0.3
    idle_park_s: float = 45.0
    starvation_s: float = 10.0  # requests waiting this long for memory may preempt busy neighbours
    starvation_max_s: float = 60.0  # ... busier ones after a wait scaled by their request rates, at most this
    on_late: OnLate = "shed"
    tpot_guard: bool = True  # False: placement by KVPR alone, as Prism
    park_when: Literal["needed", "always"] = "needed"  # "always": park idle models proactively
    profile: bool = True  # lay out by the profiles of the history trace (when one is given)
    activity: bool = True  # False: TPOT guard and layout count every awake model as always decoding
    # the GPU sharing placement and layout are told; None: the one in force (Simulator.sharing),
    # as live. "timeslice" under simulated MPS: a policy that charges every neighbour's step whole
    policy_sharing: GpuSharing | None = None
    # the models awake when the trace begins (a placements file's `on: true`, the GPU experiment's
    # twin: bench/gpu/des.py); None: the hot set the policy wakes at once (the warm start)
    awake_at_start: frozenset[str] | None = None
    # the wake gate's bound (scheduler.wake_room_s, as live): a wake waits while its weights do
    # not fit beside what its neighbours hold, at most this long; 0: wake at once (no gate)
    wake_room_s: float = SchedulerSpec.wake_room_s


class Chimera:
    def __init__(
        self,
        expected_rps: dict[str, float],
        tokens_per_req: float,
        opts: ChimeraOptions = ChimeraOptions(),
        name: str = "chimera",
        history: Sequence[BenchRequest] = (),
    ) -> None:
        self.name = name
        self.history = history
        self.opts = opts
        self.expected = expected_rps
        self.tpr = tokens_per_req
        self.params = PlacementParams(
            tau=opts.tau,
            migrate=opts.global_placement,
            tpot_guard=opts.tpot_guard,
            starvation_s=opts.starvation_s,
            starvation_max_s=opts.starvation_max_s,
        )
        self.queues: dict[int, list[SimReq]] = {}
        self.pending: dict[str, list[SimReq]] = {}
        self.route: dict[str, SimServer | None] = {}
        self.rates: dict[str, RateWindow] = {}
        self.last: dict[str, float] = {}
        self.queued: dict[str, int] = {}
        self.by_model: dict[str, list[SimServer]] = {}
        self.moved: dict[str, float] = {}
        self.urgent = False
        # each model's and server's last snapshot entry, with the inputs it was built from
        self._demand_memo: dict[str, tuple[tuple[object, ...], ModelDemand]] = {}
        self._server_memo: dict[str, tuple[tuple[InstanceState, int, int], ServerView]] = {}

    # ---- controller hooks -------------------------------------------------------------------

    def on_start(self, sim: Simulator) -> None:
        self.sim = sim
        # the sharing in force on the GPUs, as the live placement gets host.gpu_sharing resolved
        sharing = sim.sharing if self.opts.policy_sharing is None else self.opts.policy_sharing
        self.params = replace(self.params, sharing=sharing)
        self.rules = {m: ModelRule(on_late=self.opts.on_late) for m in sim.models}
        self.alone = {name: request_alone_s(m, self.tpr) for name, m in sim.models.items()}
        for m in sim.models:
            self.rates[m] = RateWindow()
            self.rates[m].add(0.0, self.expected.get(m, 0.0) * self.tpr * 30)  # prior for minute one
            self.last[m] = 0.0
            self.queued[m] = 0
            self.pending[m] = []
            self.route[m] = None
        demands = self._demands(prime=True)
        ranked = sorted(sim.models, key=lambda m: (-self.expected.get(m, 0.0), m))
        n_standby = int(len(ranked) * self.opts.standby_fraction) if self.opts.global_placement else 0
        standby = set(ranked[:n_standby])
        share = {m: 1 - math.exp(-self.expected.get(m, 0.0) * self.opts.idle_park_s) for m in sim.models}
        awake = active = None
        if self.history and self.opts.profile:
            horizon = max(r.arrival_s for r in self.history)
            times: dict[str, list[float]] = {m: [] for m in sim.models}
            for r in self.history:
                times.setdefault(r.model, []).append(r.arrival_s)
            awake = {m: awake_profile(ts, self.opts.idle_park_s, PROFILE_STEP_S, horizon) for m, ts in times.items()}
            active = {
                m: activity_profile(ts, self.alone[m], PROFILE_STEP_S, horizon)
                for m, ts in times.items()
                if m in self.alone
            }
        lay = layout(
            demands,
            (sim.gpu_bytes,) * sim.n_gpus,
            awake_share=share,
            awake_profile=awake,
            activity_profile=active,
            replicas={m: 2 for m in standby},
            round_robin=not self.opts.global_placement,
            tpot_guard=self.opts.tpot_guard,
            sharing=sharing,
        )
        for model, gpus in lay.servers:
            sid = f"{model}@{'+'.join(map(str, gpus))}"
            self.by_model.setdefault(model, []).append(sim.add_server(sid, model, gpus))
        for g in range(sim.n_gpus):
            self.queues[g] = []
        self.plans: Plans[SimServer] = Plans(
            sim.servers,
            park=self._park,
            wake=self._wake,
            pend=self._start,
            serve=self._serve,
            moved=self._moved,
            gate=WakeGate(self._room, lambda: sim.now, self.opts.wake_room_s) if self.opts.wake_room_s > 0 else None,
        )
        self.kv = SimLedger(
            sim.gpu_bytes,
            sim.n_gpus,
            self.opts.elastic,
            self._queued_for,
            self._rate_of,
            due=lambda: self.plans.wake_due,
        )
        if self.opts.awake_at_start is not None:  # as a placements file's `on: true` (the GPU twin)
            for model in sorted(self.opts.awake_at_start):
                for s in self.by_model.get(model, ())[:1]:
                    s.state = St.AWAKE
                    self.route[model] = s
        else:
            d = place.decide(self._view(demands), 0.0)
            for a in d.actions:  # warm start: the hot set is awake when the trace begins
                if isinstance(a, Activation):
                    for st in a.steps:
                        if isinstance(st, Wake):
                            sim.servers[st.server].state = St.AWAKE
                    self.route[a.model] = self._server_on(a.model, a.gpus)
        self._split()
        sim.at(self.opts.tick_s, self._tick)
        sim.at(self.opts.kv_every_s, self._kv_tick)

    def on_arrival(self, sim: Simulator, req: SimReq) -> None:
        m = sim.models[req.model]
        self.rates[req.model].add(sim.now, req.prompt + req.output)
        self.last[req.model] = sim.now
        req.prefill_s = m.lat.prefill_time([(req.prompt, 0)])
        self.queued[req.model] += 1
        s = self.route[req.model]
        if s is not None:
            self.queues[s.gpus[0]].append(req)
            self._admit(s.gpus[0])
        else:
            self.pending[req.model].append(req)
            self._urgent()

    def on_complete(self, sim: Simulator, server: SimServer, req: SimReq) -> None:
        self.last[req.model] = sim.now
        self._admit(server.gpus[0])
        if server.draining is not None and server.in_flight == 0:
            self._advance()  # a plan's victim drained: its park is due

    # ---- global ---------------------------------------------------------------------------

    def _tick(self) -> None:
        self._decide()
        self.sim.at(self.sim.now + self.opts.tick_s, self._tick)

    def _decide(self) -> None:
        self.urgent = False
        self.sim.counters.decisions += 1
        d = place.decide(self._view(self._demands()), self.sim.now)
        for a in d.actions:
            self.plans.adopt(a)
        self._advance()

    def _kv_tick(self) -> None:
        self._split()
        if self.plans.wake_due:
            self._advance()  # the neighbours' pages drained since: a waiting wake may fit now
        wait = self.opts.kv_regrow_s if self.kv.deferred else self.opts.kv_every_s
        self.sim.at(self.sim.now + wait, self._kv_tick)

    def _urgent(self) -> None:
        """Decide at once (not at the next tick): held requests or an abandoned plan."""
        if not self.urgent:
            self.urgent = True
            self.sim.at(self.sim.now, self._decide)

    def _demands(self, prime: bool = False) -> tuple[ModelDemand, ...]:
        """Every model's demand now. A model whose inputs (requests, rate, activity, moves,
        oldest wait) are those of its previous demand gets that same (frozen) object back:
        most of a large fleet is idle between two decisions."""
        sim = self.sim
        out = []
        memo = self._demand_memo
        for name, m in sim.models.items():
            running = sum(s.in_flight for s in self.by_model.get(name, ()))
            queued = self.queued[name] if not prime else int(self.expected.get(name, 0.0) > 0)
            tok_rate = self.rates[name].rate(sim.now) if not prime else self.expected.get(name, 0.0) * self.tpr
            moved = self.moved.get(name)
            oldest = sim.now - p[0].arrival if (p := self.pending[name]) else 0.0
            key = (running, queued, tok_rate, self.last[name], moved, oldest)
            got = memo.get(name)
            if got is not None and got[0] == key:
                out.append(got[1])
                continue
            d = ModelDemand(
                name,
                m.tp,
                m.cost,
                m.tpot_slo,
                tok_rate,
                queued,
                running,
                self.last[name],
                self.opts.idle_park_s,
                self.opts.park_when,
                last_moved_at=moved,
                oldest_wait_s=oldest,
                request_rate=tok_rate / self.tpr,  # arrivals (held ones too), as live
                step_s=expected_step_s(m, tok_rate / self.tpr, self.tpr, 0.0 if self.opts.activity else 0.01),
                activity=(expected_activity(tok_rate / self.tpr, self.alone[name]) if self.opts.activity else None),
            )
            memo[name] = (key, d)
            out.append(d)
        return tuple(out)

    def _view(self, demands: tuple[ModelDemand, ...]) -> ClusterView:
        """The policy's snapshot; a server whose state, KV and requests are unchanged keeps its
        (frozen) view object."""
        elastic = self.opts.elastic
        memo = self._server_memo
        servers = []
        for ss in self.by_model.values():
            for s in ss:
                key = (
                    policy_state(s),
                    (s.kv_used if elastic else s.kv_limit) * s.model.cost.kv_bytes_per_token,
                    s.in_flight,
                )
                got = memo.get(s.id)
                if got is None or got[0] != key:
                    got = memo[s.id] = (key, ServerView(s.id, s.model.name, s.gpus, *key))
                servers.append(got[1])
        return ClusterView(demands, tuple(servers), (self.sim.gpu_bytes,) * self.sim.n_gpus, self.params)

    # ---- the plan executor's operations ------------------------------------------------------

    def _advance(self) -> None:
        """Run the plans as far as they go now; requests of a server that a plan drains go back
        to their model's pending (its route closes until a Route step or an abandon serves)."""
        if self.plans.advance():
            self._urgent()  # a plan could not finish: decide again
        for model, s in self.route.items():
            if s is not None and (s.state is not St.AWAKE or s.draining is not None):
                self._unroute(model, s)

    def _room(self, iid: str) -> Room:
        """The wake gate's view of ``iid``'s GPUs (kv/room.py, as the live ledger's ``room``):
        what every other server holds there now (``held_bytes``: a resident one its pages, at
        least what is in use), a wake waiting before this one (id first) its weights too."""
        s = self.sim.servers[iid]
        c = s.model.cost
        due = self.plans.wake_due
        need, own, others = {}, {}, {}
        for g in s.gpus:
            need[g] = c.awake_bytes
            own[g] = int(held_bytes(s))
            others[g] = tuple(
                Hold(o.id, int(held_bytes(o) + (o.model.cost.awake_bytes if o.id in due and o.id < iid else 0)))
                for o in self.sim.on_gpu[g]
                if o is not s
            )
        return room(iid, {g: self.sim.gpu_bytes for g in s.gpus}, self.kv.ledger.margin, need, own, others)

    def _park(self, s: SimServer, reason: str) -> None:
        self.sim.park(s, self._moved_on)
        self._split()  # a parking server holds no KV (its limit goes to 0 as live)

    def _wake(self, s: SimServer) -> None:
        self.sim.wake(s, self._moved_on, settle=self._split)

    def _start(self, s: SimServer) -> None:
        self.sim.wake(s, self._moved_on, cold=True, settle=self._split)

    def _moved_on(self) -> None:
        """A park or wake is done: memory changed and plans may move."""
        self._advance()
        self._split()

    def _moved(self, model: str) -> None:
        self.sim.counters.migrations += 1
        self.moved[model] = self.sim.now

    def _serve(self, model: str) -> None:
        """Hand the model's held requests to an awake server no plan drains (the one routed
        already if it still qualifies)."""
        ok = [s for s in self.by_model.get(model, ()) if s.state is St.AWAKE and s.draining is None]
        if not ok:
            return
        cur = self.route[model]
        self._route(model, cur if cur is not None and cur in ok else ok[0])

    def _route(self, model: str, target: SimServer) -> None:
        old = self.route[model]
        self.route[model] = target
        q = self.queues[target.gpus[0]]
        q.extend(self.pending[model])
        self.pending[model] = []
        if old is not None and old is not target:
            src = self.queues[old.gpus[0]]
            q.extend(r for r in src if r.model == model)
            src[:] = [r for r in src if r.model != model]
        q.sort(key=lambda r: r.arrival)
        self._admit(target.gpus[0])

    def _unroute(self, model: str, s: SimServer) -> None:
        """``s`` takes no new request: what was queued for it goes back to its model's pending."""
        self.route[model] = None
        q = self.queues[s.gpus[0]]
        back = [r for r in q if r.model == model]
        if back:
            q[:] = [r for r in q if r.model != model]
            self.pending[model] = sorted(back + self.pending[model], key=lambda r: r.arrival)
            self._urgent()

    def _server_on(self, model: str, gpus: tuple[int, ...]) -> SimServer:
        return next(s for s in self.by_model[model] if s.gpus == gpus)

    # ---- KV ----------------------------------------------------------------------------------

    def _split(self) -> None:
        for g in sorted(self.kv.split(self.sim.servers.values(), self.sim.now)):
            self._admit(g)

    def _queued_for(self, s: SimServer) -> list[SimReq]:
        if self.route[s.model.name] is not s:
            return []
        return [r for r in self.queues[s.gpus[0]] if r.model == s.model.name]

    def _rate_of(self, s: SimServer) -> float:
        return self.rates[s.model.name].rate(self.sim.now) if self.route[s.model.name] is s else 0.0

    # ---- local ------------------------------------------------------------------------------

    def _admit(self, g: int) -> None:
        q = self.queues[g]
        if not q:
            return
        sim = self.sim
        routed = [s for s in sim.gpus[g].servers if s.gpus[0] == g and self.route[s.model.name] is s]
        if not self.opts.local:
            return self._fcfs(q, routed)
        engines = tuple(
            EngineRoom(
                s.id,
                s.model.name,
                sim.now if s.state is St.AWAKE else s.ready_at,
                s.kv_free(),
                MAX_RUNNING - s.in_flight,
            )
            for s in routed
        )
        view = QueueView(
            tuple(
                Pending(
                    str(r.id), r.model, r.arrival, r.arrival + sim.models[r.model].ttft_slo, r.prefill_s, r.kv_tokens
                )
                for r in q
            ),
            engines,
            self.rules,
            sim.prefill_backlog(g),
        )
        d = admit.decide(view, sim.now)
        if not d.dispatch and not d.shed:
            return
        by_id = {str(r.id): r for r in q}
        gone = set()
        for x in d.dispatch:
            sim.dispatch(by_id[x.request], sim.servers[x.server])
            gone.add(x.request)
        for sh in d.shed:
            sim.shed(by_id[sh.request])
            gone.add(sh.request)
        for rid in gone:
            self.queued[by_id[rid].model] -= 1
        q[:] = [r for r in q if str(r.id) not in gone]

    def _fcfs(self, q: list[SimReq], routed: list[SimServer]) -> None:
        by_model = {s.model.name: s for s in routed}
        keep = []
        for r in q:
            s = by_model.get(r.model)
            if s is not None and s.state is St.AWAKE and r.kv_tokens <= s.kv_free() and s.in_flight < MAX_RUNNING:
                self.sim.dispatch(r, s)
                self.queued[r.model] -= 1
            else:
                keep.append(r)
        q[:] = keep
