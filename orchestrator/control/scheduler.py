"""The global scheduler in the live loop (mode ``full``): builds ``place.decide``'s snapshot
from the loop's state and keeps the decided actions as plans whose steps the loop runs one after
another (docs/scheduling.md). Owned by the control loop; only its task calls these.

Snapshot (``ClusterView``): one ``ModelDemand`` per model (cost and SLO from the deployment's
facts, orchestrator/deployment.py; token rate, concurrency and activity from ``Demand``; held
requests from ``Holds``) and one ``ServerView`` per instance, where the loop's claims show as
the policy expects (bench/sim/chimera.py ``_claim`` does the same): an awake instance that a
plan drains shows as ``parking``, a parked one reserved as a plan's wake target as ``waking``.

KV limits of the decision are not applied here: in modes elastic and full the KV ledger
(orchestrator/kv/) owns the shims' limits and re-splits every second and on every state change.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from orchestrator.control.demand import Demand
from orchestrator.control.instance import Instance
from orchestrator.deployment import Deployment
from orchestrator.policy.placement.cluster import (
    Action,
    ClusterView,
    IdlePark,
    Migration,
    ModelDemand,
    Park,
    Route,
    ServerView,
    Start,
    Step,
    Wake,
)
from orchestrator.types import InstanceState

log = logging.getLogger("chimera.scheduler")
S = InstanceState

@dataclass
class Plan:
    """One action of a decision, its steps still to run (the head runs first)."""

    action: Action
    steps: deque[Step] = field(default_factory=deque)
    issued: str | None = None  # the instance whose park/wake/start this plan issued last

    @classmethod
    def of(cls, action: Action) -> Plan:
        return cls(action, deque(action.steps))

    @property
    def kind(self) -> str:
        return type(self.action).__name__.lower()

    def park_reason(self, step: Park) -> str:
        """The `reason` label of a park (chimera_parks_total): idle, migration or make_room."""
        if isinstance(self.action, IdlePark):
            return "idle"
        if isinstance(self.action, Migration) and step.server == self.action.source:
            return "migration"
        return "make_room"

    def describe(self) -> str:
        what = self.action.server if isinstance(self.action, IdlePark) else self.action.model
        return f"{self.kind} of {what}: {self.action.reason}"


def policy_state(inst: Instance) -> InstanceState:
    """The state a policy sees: the loop's claims included."""
    if inst.state is S.AWAKE and inst.draining is not None:
        return S.PARKING
    if inst.state is S.PARKED and inst.claimed:
        return S.WAKING
    return inst.state


def cluster_view(deployment: Deployment, instances: Iterable[Instance], waiting: Mapping[str, int],
                 oldest_wait_s: Mapping[str, float], demand: Demand, now: float) -> ClusterView:
    facts = deployment.models
    insts = list(instances)
    running: dict[str, int] = {}
    for i in insts:
        running[i.spec.model.name] = running.get(i.spec.model.name, 0) + i.in_flight
    models = tuple(
        ModelDemand(
            name=m.name, tp_size=m.tp_size, cost=facts[m.name].cost, tpot_slo_s=facts[m.name].tpot_slo_s,
            token_rate=demand.token_rate(m.name, now), queued=waiting.get(m.name, 0),
            running=running.get(m.name, 0), last_active_at=demand.last_active(m.name),
            idle_park_s=m.idle.park_after_s, park_when=m.idle.when,
            priority=m.priority, last_moved_at=demand.last_moved(m.name),
            oldest_wait_s=oldest_wait_s.get(m.name, 0.0), step_s=demand.step_s(m, now),
            activity=demand.activity(m.name, now))
        for m in deployment.config.models)
    servers = tuple(
        ServerView(i.id, i.spec.model.name, i.spec.gpus, policy_state(i),
                   demand.kv_used_tokens(i.id) * facts[i.spec.model.name].cost.kv_bytes_per_token,
                   i.in_flight)
        for i in insts)
    return ClusterView(models, servers, (deployment.gpu_bytes,) * deployment.config.gpu_count,
                       deployment.placement_params)


class Plans:
    """The actions in flight, each run step after step as the instances it touches change state
    (design: docs/scheduling.md "steps are ordered"). The loop calls ``adopt`` for each action of
    a decision and ``advance`` after every event; the callables are the loop's own operations:
    ``park(inst, reason)`` (awake, nothing in flight), ``wake(inst)`` (parked), ``pend(inst)``
    (queue a stopped instance for the start-up policy), ``serve(model)`` (hand held requests
    out), ``moved(model)`` (a migration's traffic moved)."""

    def __init__(self, instances: Mapping[str, Instance], park: Callable[[Instance, str], None],
                 wake: Callable[[Instance], None], pend: Callable[[Instance], None],
                 serve: Callable[[str], None], moved: Callable[[str], None]) -> None:
        self._instances = instances
        self._park, self._wake, self._pend = park, wake, pend
        self._serve, self._moved = serve, moved
        self.active: list[Plan] = []

    def adopt(self, action: Action) -> Plan:
        """Take an action on: from now on its victims drain (no new requests) and its wake
        target is reserved, up to its Route (a migration's source serves until then)."""
        plan = Plan.of(action)
        for st in action.steps:
            if isinstance(st, Route):
                break
            inst = self._instances.get(getattr(st, "server", ""))
            if inst is None:
                continue
            if isinstance(st, Park) and inst.state is S.AWAKE and inst.draining is None:
                inst.draining = plan.park_reason(st)
            elif isinstance(st, Wake) and inst.state is S.PARKED:
                inst.claimed = True
        self.active.append(plan)
        log.info("scheduler: %s", plan.describe())
        return plan

    def advance(self) -> bool:
        """Run every plan as far as it can go now; True when one was abandoned (decide again)."""
        abandoned = False
        for plan in list(self.active):
            why = self._run(plan)
            if why is None and plan.steps:
                continue
            self.active.remove(plan)
            if why is not None:
                abandoned = True
                self._abandon(plan, why)
        return abandoned

    def _run(self, plan: Plan) -> str | None:
        """Steps until one must wait (returns None) or cannot be done (returns why)."""
        while plan.steps:
            st = plan.steps[0]
            if isinstance(st, Route):
                plan.steps.popleft()
                self._drain_after_route(plan)
                if isinstance(plan.action, Migration):
                    self._moved(st.model)
                self._serve(st.model)
                continue
            inst = self._target(st)
            if inst is None:
                return f"no instance for {st}"
            if isinstance(st, Park):
                why, wait = self._park_step(plan, st, inst)
            else:
                why, wait = self._wake_step(plan, st, inst)
            if why is not None or wait:
                return why
            plan.steps.popleft()
            plan.issued = None
        return None

    def _drain_after_route(self, plan: Plan) -> None:
        """Traffic moves now: servers the plan parks after its Route (a migration's source)
        take no new request from this moment, before held requests are handed out."""
        for st in plan.steps:
            if not isinstance(st, Park):
                continue
            inst = self._instances.get(st.server)
            if inst is not None and inst.state is S.AWAKE and inst.draining is None:
                inst.draining = plan.park_reason(st)

    def _park_step(self, plan: Plan, st: Park, inst: Instance) -> tuple[str | None, bool]:
        if inst.state is S.AWAKE:
            if plan.issued == inst.id:
                return f"the park of {inst.id} failed ({inst.error})", False
            if inst.draining is None:
                inst.draining = plan.park_reason(st)
            if inst.in_flight == 0:
                plan.issued = inst.id
                self._park(inst, inst.draining)
            return None, True  # draining: parked once its last request ends
        if inst.state is S.PARKING:
            return None, True
        return None, False  # parked already, stopped, or woken again by another action

    def _wake_step(self, plan: Plan, st: Wake | Start, inst: Instance) -> tuple[str | None, bool]:
        if inst.state is S.AWAKE:
            return None, False
        if inst.state is S.PARKED and isinstance(st, Wake):
            if plan.issued == inst.id:
                return f"{inst.id} parked again before it served", False
            plan.issued = inst.id
            self._wake(inst)
            return None, True
        if inst.state in (S.STOPPED, S.FAILED) and isinstance(st, Start):
            plan.issued = inst.id
            self._pend(inst)
            return None, True
        if inst.state in (S.WAKING, S.PARKING, S.PENDING, S.STARTING):
            return None, True
        return f"{inst.id} is {inst.state}" + (f": {inst.error}" if inst.error else ""), False

    def _target(self, st: Park | Wake | Start) -> Instance | None:
        if isinstance(st, Start):
            return next((i for i in self._instances.values()
                         if i.spec.model.name == st.model and i.spec.gpus == st.gpus), None)
        return self._instances.get(st.server)

    def _abandon(self, plan: Plan, why: str) -> None:
        """Give back what the plan reserved and was not done yet; the next decision re-plans."""
        log.warning("scheduler: abandoned %s: %s", plan.describe(), why)
        models = set()
        for st in plan.steps:
            if isinstance(st, Route):
                break
            inst = self._instances.get(getattr(st, "server", ""))
            if inst is None:
                continue
            if isinstance(st, Wake):
                inst.claimed = False
            elif isinstance(st, Park) and inst.state is S.AWAKE and inst.draining is not None:
                inst.draining = None
                models.add(inst.spec.model.name)
        for m in sorted(models):
            self._serve(m)
