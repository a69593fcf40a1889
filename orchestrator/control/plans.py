"""The plan executor: the global scheduler's actions in flight, each run step after step as the
servers it touches change state (docs/scheduling.md "steps are ordered").

One executor for both sides: the live control loop runs it over its ``Instance`` records and the
simulator (bench/sim/chimera.py) over its ``SimServer``; each satisfies ``PlanServer`` and
hands its own operations in as the callbacks. So the simulator measures the executor that runs
live. Owned by its caller's single task; not thread-safe.

Claims: from ``adopt`` on, an action's victims drain (``draining`` set: awake, taking no new
request, parked once nothing is in flight) and its wake target is reserved (``claimed``);
``policy_state`` shows both to the policies as the states they lead to.

Wake gate (optional, ``WakeGate``; the live loop and the simulator pass one): a wake whose
turn has come is issued only once the server's weights fit beside what its GPUs' neighbours
hold now (the KV ledger's ``room``); meanwhile the server is listed in ``wake_due`` (the ledger
counts its weights, so the neighbours shrink), and past the gate's bound the plan is abandoned
(policy/wake_room.py says why abandon, not force).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from orchestrator.policy import wake_room
from orchestrator.policy.placement.cluster import (
    Action,
    IdlePark,
    Migration,
    Park,
    Route,
    Start,
    Step,
    Wake,
)
from orchestrator.types import InstanceState

log = logging.getLogger("chimera.scheduler")
S = InstanceState


class PlanServer(Protocol):
    """What the executor reads and writes on a server. The owner clears ``draining`` when the
    server leaves AWAKE and ``claimed`` when it leaves PARKED (as ``Instance.to`` does)."""

    draining: str | None  # the park reason while a plan drains it
    claimed: bool  # parked, reserved as a plan's wake target

    @property
    def id(self) -> str: ...
    @property
    def model_name(self) -> str: ...
    @property
    def gpus(self) -> tuple[int, ...]: ...
    @property
    def state(self) -> InstanceState: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def error(self) -> str | None: ...


T = TypeVar("T", bound=PlanServer)


class RoomView(Protocol):
    """The KV ledger's answer (kv/room.py ``Room``): how short a server's wake is of memory."""

    @property
    def short_bytes(self) -> int: ...
    def describe(self) -> str: ...


@dataclass(frozen=True)
class WakeGate:
    """Holds a wake until its server's weights fit. ``room(server_id)``: the ledger's view (None:
    none, wake at once); ``clock``: the caller's; ``wait_s``: the bound (``scheduler.wake_room_s``,
    0: no wait); ``waited(server, seconds, outcome)``: after a wait ended, outcome ``fit`` or
    ``timeout`` (metrics)."""

    room: Callable[[str], RoomView | None]
    clock: Callable[[], float]
    wait_s: float
    waited: Callable[[PlanServer, float, str], None] | None = None


def policy_state(server: PlanServer) -> InstanceState:
    """The state a policy sees: the plans' claims included."""
    if server.state is S.AWAKE and server.draining is not None:
        return S.PARKING
    if server.state is S.PARKED and server.claimed:
        return S.WAKING
    if server.state is S.BACKOFF:  # its restart is on its way; its start budget stays reserved
        return S.STARTING
    return server.state


@dataclass
class Plan:
    """One action of a decision, its steps still to run (the head runs first)."""

    action: Action
    steps: deque[Step] = field(default_factory=deque)
    issued: str | None = None  # the server whose park/wake/start this plan issued last
    waiting: tuple[str, float] | None = None  # (server, since when) its due wake waits for room

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


class Plans(Generic[T]):
    """The actions in flight. The caller calls ``adopt`` for each action of a decision and
    ``advance`` after every event that can move a plan (a park or wake done, a server drained,
    a decision); the callables are the caller's own operations: ``park(server, reason)`` (awake,
    nothing in flight), ``wake(server)`` (parked), ``pend(server)`` (queue a stopped server for
    start-up), ``serve(model)`` (hand held requests out), ``moved(model)`` (a migration's
    traffic moved); ``gate``: the wake gate (None: wake as soon as the steps before are done);
    ``abandoned(plan, why)``: after a plan was given up (the loop answers an operator's wake)."""

    def __init__(
        self,
        servers: Mapping[str, T],
        park: Callable[[T, str], None],
        wake: Callable[[T], None],
        pend: Callable[[T], None],
        serve: Callable[[str], None],
        moved: Callable[[str], None],
        gate: WakeGate | None = None,
        abandoned: Callable[[Plan, str], None] | None = None,
    ) -> None:
        self._servers = servers
        self._park, self._wake, self._pend = park, wake, pend
        self._serve, self._moved = serve, moved
        self._gate = gate
        self._abandoned = abandoned
        self.active: list[Plan] = []

    @property
    def wake_due(self) -> frozenset[str]:
        """Servers whose wake is next in its plan and waits for room (``WakeGate``)."""
        due = (p.waiting[0] for p in self.active if p.waiting is not None)
        return frozenset(iid for iid in due if (srv := self._servers.get(iid)) is not None and srv.state is S.PARKED)

    def adopt(self, action: Action) -> Plan:
        """Take an action on: from now on its victims drain (no new requests) and its wake
        target is reserved, up to its Route (a migration's source serves until then)."""
        plan = Plan.of(action)
        for st in action.steps:
            if isinstance(st, Route):
                break
            srv = self._servers.get(getattr(st, "server", ""))
            if srv is None:
                continue
            if isinstance(st, Park) and srv.state is S.AWAKE and srv.draining is None:
                srv.draining = plan.park_reason(st)
            elif isinstance(st, Wake) and srv.state is S.PARKED:
                srv.claimed = True
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
            srv = self._target(st)
            if srv is None:
                return f"no server for {st}"
            if isinstance(st, Park):
                why, wait = self._park_step(plan, st, srv)
            else:
                why, wait = self._wake_step(plan, st, srv)
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
            srv = self._servers.get(st.server)
            if srv is not None and srv.state is S.AWAKE and srv.draining is None:
                srv.draining = plan.park_reason(st)

    def _park_step(self, plan: Plan, st: Park, srv: T) -> tuple[str | None, bool]:
        if srv.state is S.AWAKE:
            if plan.issued == srv.id:
                return f"the park of {srv.id} failed ({srv.error})", False
            if srv.draining is None:
                srv.draining = plan.park_reason(st)
            if srv.in_flight == 0:
                plan.issued = srv.id
                self._park(srv, srv.draining)
            return None, True  # draining: parked once its last request ends
        if srv.state is S.PARKING:
            return None, True
        return None, False  # parked already, stopped, or woken again by another action

    def _wake_step(self, plan: Plan, st: Wake | Start, srv: T) -> tuple[str | None, bool]:
        if srv.state is S.AWAKE:
            return None, False
        if srv.state is S.PARKED and isinstance(st, Wake):
            if plan.issued == srv.id:
                return f"{srv.id} parked again before it served", False
            if self._gate is not None:
                why, wait = self._room(plan, srv, self._gate)
                if why is not None or wait:
                    return why, wait
            plan.issued = srv.id
            self._wake(srv)
            return None, True
        if srv.state in (S.STOPPED, S.FAILED) and isinstance(st, Start):
            plan.issued = srv.id
            self._pend(srv)
            return None, True
        if srv.state in (S.WAKING, S.PARKING, S.PENDING, S.STARTING, S.BACKOFF):
            return None, True
        return f"{srv.id} is {srv.state}" + (f": {srv.error}" if srv.error else ""), False

    def _room(self, plan: Plan, srv: T, gate: WakeGate) -> tuple[str | None, bool]:
        """The wake gate: (None, False) to wake now, (None, True) to wait, (why, False) to give
        up (policy/wake_room.py). The first ask lists the server in ``wake_due``."""
        now = gate.clock()
        since = plan.waiting[1] if plan.waiting is not None else now
        room = gate.room(srv.id)
        verdict = wake_room.decide(room.short_bytes if room is not None else None, since, now, gate.wait_s)
        if verdict == "wait":
            if plan.waiting is None:
                assert room is not None
                plan.waiting = (srv.id, now)
                log.info("%s: wake waits for %s", srv.id, room.describe())
            return None, True
        waited, plan.waiting = plan.waiting is not None, None
        if verdict == "abandon":
            assert room is not None
            if gate.waited is not None:
                gate.waited(srv, now - since, "timeout")
            return f"no room for the wake of {srv.id} after {now - since:.1f} s: short of {room.describe()}", False
        if waited:
            log.info("%s: room for its wake after %.1f s", srv.id, now - since)
            if gate.waited is not None:
                gate.waited(srv, now - since, "fit")
        return None, False

    def _target(self, st: Park | Wake | Start) -> T | None:
        if isinstance(st, Start):
            return next((s for s in self._servers.values() if s.model_name == st.model and s.gpus == st.gpus), None)
        return self._servers.get(st.server)

    def _abandon(self, plan: Plan, why: str) -> None:
        """Give back what the plan reserved and was not done yet; the next decision re-plans."""
        log.warning("scheduler: abandoned %s: %s", plan.describe(), why)
        models = set()
        for st in plan.steps:
            if isinstance(st, Route):
                break
            srv = self._servers.get(getattr(st, "server", ""))
            if srv is None:
                continue
            if isinstance(st, Wake):
                srv.claimed = False
            elif isinstance(st, Park) and srv.state is S.AWAKE and srv.draining is not None:
                srv.draining = None
                models.add(srv.model_name)
        for m in sorted(models):
            self._serve(m)
        if self._abandoned is not None:
            self._abandoned(plan, why)
