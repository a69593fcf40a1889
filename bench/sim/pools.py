"""Shape pools in the simulator: models with no server of their own, served by re-targeting a
pooled server of their shape (docs/pools.md), as the live ``orchestrator/pools/`` does.

- Which models are pooled (``plan_pools``): per shape at TP 1, the least popular ``fraction``
  of its models by average rate (the rates every system gets), when at least ``min_members``
  and when a switch costs at most ``max_retarget_s``; the pool gets
  ceil(members x ``servers_per_member``) servers. The rest keep a dedicated server each.
- Each pool server is a hidden model ``pool-<shape>-<j>`` for chimera's control loop and layout,
  as live: laid out, parked, woken and migrated by the same policies and cost model as every
  other server (its demand is the requests routed to it).
- Routing and re-targeting are ``orchestrator/policy/pools.py``'s ``decide`` (imported, not
  copied), with the live router's popularity (``policy/lora.py``, per checkpoint: here every
  model has its own) and patience (the model's TTFT objective less a switch).
- A switch: the server is acquired from the loop first (a held request on it: parked, it is
  woken; awake, it is not parked under the switch), then it takes ``ServerCost.retarget_s``
  (orchestrator/perf/cost.py: ``/update_weights_from_disk`` = weights / the calibrated disk
  bandwidth + the memory op's overhead; the cache flush and the probe are inside it [assumed]),
  then the requests held for the new model are routed to it. A server only switches with no
  request queued or in flight, so no request is ever served by other weights
  (``wrong_weights`` counts any that would be, at completion).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench.sim.chimera import Chimera, ChimeraOptions
from bench.sim.fleet import H100_BYTES, card, fleet
from bench.sim.metrics import RunResult, summarize
from bench.sim.run import history, with_slos
from bench.sim.servers import SimModel, SimReq, SimServer
from bench.sim.simulator import Simulator
from bench.traces.request import BenchRequest
from bench.traces.synthetic import SyntheticSpec, generate
from orchestrator.perf.cost import retarget_time
from orchestrator.policy.lora import Popularity
from orchestrator.policy.placement.cluster import S
from orchestrator.policy.pools import Costs, Slot, decide
from orchestrator.shapes import load_shape
from orchestrator.types import GpuSharing

RETRY_S = 0.25  # a request that waits for a free pool server is placed again this often


@dataclass(frozen=True)
class PoolOptions:
    # Defaults: the best of the variants measured on mix58 at 17 GPUs (docs/bench-sim.md).
    fraction: float = 0.5  # of each shape's models, the least popular share is pooled
    servers_per_member: float = 0.6  # pool servers per pooled model, rounded up
    max_retarget_s: float = 3.0  # shapes whose switch costs more keep dedicated servers
    min_members: int = 2
    stage: str = "page_cache"  # pinned: switches at the pinned push's cost (pools' ``stage: pinned``)


def switch_s(m: SimModel, stage: str) -> float:
    """A switch of a server of ``m``'s shape, from the one cost model (orchestrator/perf/cost.py):
    from the page cache or disk, or pushed from pinned host RAM (measured on the H200: 0.33 s
    for an 8B)."""
    if stage == "pinned":
        return retarget_time(load_shape(m.shape_name), m.tp, pinned=True)
    return m.cost.retarget_s


@dataclass(frozen=True)
class PoolPlan:
    members: dict[str, tuple[str, ...]]  # pool -> its pooled models, most popular first
    servers: dict[str, tuple[str, ...]]  # pool -> its servers' hidden model names

    @property
    def pool_of(self) -> dict[str, str]:
        return {m: p for p, ms in self.members.items() for m in ms}


def plan_pools(models: Sequence[SimModel], rps: Mapping[str, float], opts: PoolOptions) -> PoolPlan:
    """Which models each shape's pool serves, and how many servers it has (module doc)."""
    members: dict[str, tuple[str, ...]] = {}
    servers: dict[str, tuple[str, ...]] = {}
    by_shape: dict[str, list[SimModel]] = {}
    for m in models:
        if m.tp == 1 and switch_s(m, opts.stage) <= opts.max_retarget_s:
            by_shape.setdefault(m.shape_name, []).append(m)
    for shape, ms in sorted(by_shape.items()):
        ranked = sorted(ms, key=lambda m: (-rps.get(m.name, 0.0), m.name))
        n = int(len(ranked) * opts.fraction)
        if n < opts.min_members:
            continue
        pool = f"pool-{shape}"
        members[pool] = tuple(m.name for m in ranked[len(ranked) - n :])
        k = max(1, math.ceil(n * opts.servers_per_member))
        servers[pool] = tuple(f"{pool}-{j}" for j in range(k))
    return PoolPlan(members, servers)


def hidden_of(plan: PoolPlan) -> dict[str, str]:
    """The pool server each pooled model's traffic is expected on, for the layout's inputs
    (average rates and the history's profiles): members dealt round-robin over the servers."""
    out = {}
    for pool, ms in plan.members.items():
        for i, m in enumerate(ms):
            out[m] = plan.servers[pool][i % len(plan.servers[pool])]
    return out


@dataclass
class PoolState:
    holds: dict[str, str | None] = field(default_factory=dict)  # server -> the model whose weights it holds
    switching: dict[str, str] = field(default_factory=dict)  # server -> the model it is switching to
    swapping: set[str] = field(default_factory=set)  # servers whose weights are being swapped now
    held: dict[str, list[SimReq]] = field(default_factory=dict)  # pooled model -> requests with no server yet
    popularity: dict[str, Popularity] = field(default_factory=dict)
    origin: dict[int, str] = field(default_factory=dict)  # request id -> its pooled model
    retargets: int = 0
    wrong_weights: int = 0  # requests completed by a server holding another model's weights
    retry_at: dict[str, float] = field(default_factory=dict)  # pool -> its next look


class PooledChimera(Chimera):
    """chimera with shape pools: pooled models' requests are placed by the pool policy onto
    the hidden models of the pool servers; everything else is chimera's (chimera.py)."""

    def __init__(
        self,
        plan: PoolPlan,
        members: Mapping[str, SimModel],
        expected_rps: dict[str, float],
        tokens_per_req: float,
        opts: ChimeraOptions | None = None,
        name: str = "chimera-pools",
        history: Sequence[BenchRequest] = (),
        stage: str = "page_cache",
    ) -> None:
        super().__init__(expected_rps, tokens_per_req, opts or ChimeraOptions(), name, history)
        self.plan = plan
        self.pool_of = plan.pool_of
        self.members = dict(members)
        self.pool = PoolState()
        self.stage = stage
        self.costs = {p: _costs(members[ms[0]], stage) for p, ms in plan.members.items()}

    # ---- controller hooks -------------------------------------------------------------------

    def on_start(self, sim: Simulator) -> None:
        super().on_start(sim)
        for pool, hs in self.plan.servers.items():  # each server starts with one of the pool's models
            for j, h in enumerate(hs):
                ms = self.plan.members[pool]
                self.pool.holds[h] = ms[j] if j < len(ms) else None

    def on_arrival(self, sim: Simulator, req: SimReq) -> None:
        pool = self.pool_of.get(req.model)
        if pool is None:
            return super().on_arrival(sim, req)
        st = self.pool
        st.origin[req.id] = req.model
        st.popularity[req.model] = st.popularity.get(req.model, Popularity()).bump(sim.now)
        st.held.setdefault(req.model, []).append(req)
        self._place(pool)

    def on_complete(self, sim: Simulator, server: SimServer, req: SimReq) -> None:
        member = self.pool.origin.get(req.id)
        if member is not None and self.pool.holds.get(server.model.name) != member:
            self.pool.wrong_weights += 1
        super().on_complete(sim, server, req)
        if member is not None:
            self._place(self.pool_of[member])

    # ---- chimera's hooks: a wake, park or route may let a switch begin ------------------------

    def _moved_on(self) -> None:
        super()._moved_on()
        self._begin_ready()

    def _serve(self, model: str) -> None:
        super()._serve(model)
        self._begin_ready()

    def _tick(self) -> None:
        super()._tick()
        for pool in self.plan.members:
            self._place(pool)

    # ---- the pool ---------------------------------------------------------------------------

    def _slots(self, pool: str) -> tuple[Slot, ...]:
        out = []
        for h in self.plan.servers[pool]:
            ss = self.by_model.get(h, [])
            out.append(
                Slot(
                    h,
                    self.pool.holds[h],
                    self.queued[h] + sum(s.in_flight for s in ss),
                    self.pool.switching.get(h),
                    not any(s.state is S.AWAKE for s in ss),
                )
            )
        return tuple(out)

    def _place(self, pool: str) -> None:
        """Route or re-target for every pooled model of ``pool`` with requests held, oldest first."""
        st, sim = self.pool, self.sim
        waiting = sorted((rs[0].arrival, m) for m in self.plan.members[pool] if (rs := st.held.get(m)))
        blocked = False
        for _, m in waiting:
            costs = self.costs[pool]
            choice = decide(
                self._slots(pool),
                m,
                st.popularity,
                costs,
                sim.now,
                waited_s=sim.now - st.held[m][0].arrival,
                patience_s=self.members[m].ttft_slo - costs.retarget_s - costs.wake_s,
            )
            if choice.action == "route" and choice.slot is not None:
                for r in st.held.pop(m):
                    r.model = choice.slot
                    super().on_arrival(sim, r)
            elif choice.action == "retarget" and choice.slot is not None:
                self._switch(choice.slot, m)
            elif not any(m == to for to in st.switching.values()):
                blocked = True
        if blocked and st.retry_at.get(pool, -1.0) <= sim.now:  # no free server: look again soon
            st.retry_at[pool] = sim.now + RETRY_S  # (a shed frees one with no event here)
            sim.at(st.retry_at[pool], self._place, pool)

    def _switch(self, h: str, model: str) -> None:
        """Acquire ``h`` from the loop (a held request: woken if parked, never parked while
        held), then swap its weights once it is awake."""
        st = self.pool
        st.switching[h] = model
        st.retargets += 1
        self.queued[h] += 1
        self.last[h] = self.sim.now
        if self._awake(h) is None:
            self._urgent()
        self._begin_ready()

    def _awake(self, h: str) -> SimServer | None:
        return next((s for s in self.by_model.get(h, ()) if s.state is S.AWAKE and s.draining is None), None)

    def _begin_ready(self) -> None:
        st = self.pool
        for h in sorted(st.switching):
            if h in st.swapping or (s := self._awake(h)) is None:
                continue
            if s.in_flight or any(r.model == h for r in self.queues[s.gpus[0]]):
                raise RuntimeError(f"{h}: re-targeted with requests of {st.holds[h]} in it (pool bug)")
            st.swapping.add(h)
            self.sim.at(self.sim.now + switch_s(s.model, self.stage), self._swapped, h)

    def _swapped(self, h: str) -> None:
        st = self.pool
        st.holds[h] = st.switching.pop(h)
        st.swapping.discard(h)
        self.queued[h] -= 1
        self.last[h] = self.sim.now
        self._place(next(p for p, hs in self.plan.servers.items() if h in hs))

    def restore_names(self, reqs: Sequence[SimReq]) -> None:
        """Give every pooled request back its model's name (the metrics count by model)."""
        for r in reqs:
            r.model = self.pool.origin.get(r.id, r.model)


def _costs(m: SimModel, stage: str) -> Costs:
    """A switch's cost from the one cost model (orchestrator/perf/cost.py), as live (pools/router.py)."""
    return Costs(switch_s(m, stage), m.cost.wake_s)


def simulate_pooled(
    models: Sequence[SimModel],
    n_gpus: int,
    trace: Sequence[BenchRequest],
    duration_s: float,
    history: Sequence[BenchRequest] = (),
    popts: PoolOptions = PoolOptions(),
    copts: ChimeraOptions | None = None,
    sharing: GpuSharing = "timeslice",
) -> tuple[RunResult, PooledChimera]:
    """chimera with shape pools on ``models``: the run's result (per pooled model by its own
    name; counters ``retargets`` and ``wrong_weights`` added) and the controller."""
    counts: dict[str, int] = {}
    for r in trace:
        counts[r.model] = counts.get(r.model, 0) + 1
    rps = {m: n / duration_s for m, n in counts.items()}
    plan = plan_pools(models, rps, popts)
    to_hidden = hidden_of(plan)
    by_name = {m.name: m for m in models}
    sim_models = {m.name: m for m in models if m.name not in to_hidden}
    for pool, hs in plan.servers.items():
        proto = by_name[plan.members[pool][0]]  # same shape, so the same SLOs
        for h in hs:
            sim_models[h] = replace(proto, name=h, _base={})
    hidden_rps: dict[str, float] = {}
    for m, v in rps.items():
        hidden_rps[to_hidden.get(m, m)] = hidden_rps.get(to_hidden.get(m, m), 0.0) + v
    tpr = sum(r.prompt_tokens + r.output_tokens for r in trace) / max(len(trace), 1)
    hist = [replace(r, model=to_hidden.get(r.model, r.model)) for r in history]
    ctl = PooledChimera(plan, by_name, hidden_rps, tpr, copts, history=hist, stage=popts.stage)
    sim = Simulator(sim_models, n_gpus, H100_BYTES, ctl, sharing=sharing)
    wall = sim.run(trace)
    ctl.restore_names(sim.reqs)
    res = summarize(ctl.name, n_gpus, sim.reqs, by_name, duration_s, wall, sim.counters)
    res.counters["retargets"] = ctl.pool.retargets
    res.counters["wrong_weights"] = ctl.pool.wrong_weights
    res.counters["pooled_models"] = len(to_hidden)
    res.counters["pool_servers"] = sum(len(hs) for hs in plan.servers.values())
    return res, ctl


def run_pooled(
    mix: str,
    gpus: int,
    sp: SyntheticSpec,
    popts: PoolOptions = PoolOptions(),
    slo_scale: float = 10.0,
    sharing: GpuSharing = "timeslice",
) -> RunResult:
    """One mix with pools: the same models, SLOs, trace and history as ``experiments.run_one``."""
    models = with_slos(fleet(mix, calibration=card(sharing)), slo_scale, sp.input_range, sp.output_range)
    trace = generate(sp, [m.name for m in models])
    return simulate_pooled(models, gpus, trace, sp.duration_s, history(sp, models), popts, sharing=sharing)[0]


def fewest_gpus(attainment: Callable[[int], float], lo: int, hi: int, target: float = 0.99) -> dict[str, Any]:
    """Bisect the fewest GPUs in [lo, hi] whose attainment reaches ``target`` (None: not even
    ``hi``); assumes attainment does not fall with more GPUs. Every probe is in ``grid``."""
    seen: dict[int, float] = {}

    def att(g: int) -> float:
        if g not in seen:
            seen[g] = attainment(g)
        return seen[g]

    if att(hi) < target:
        return {"fewest_gpus": None, "grid": sorted(seen.items())}
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if att(mid) >= target else (mid + 1, hi)
    return {"fewest_gpus": lo, "grid": sorted(seen.items())}
