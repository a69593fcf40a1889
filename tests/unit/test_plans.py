"""The plan executor (orchestrator/control/plans.py) over the smallest server its protocol
allows: steps run in order as states change, claims show to policies, an abandon gives back
what it reserved. The live loop's use is tested in test_loop_scheduler.py, the simulator's in
test_bench_sim.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.control.plans import Plans, WakeGate, policy_state
from orchestrator.policy.placement.cluster import Activation, Migration, Park, Route, Wake
from orchestrator.types import InstanceState

S = InstanceState


@dataclass
class Srv:
    id: str
    model_name: str
    gpus: tuple[int, ...]
    state: InstanceState
    in_flight: int = 0
    error: str | None = None
    draining: str | None = None
    claimed: bool = False


@dataclass
class Ops:
    log: list[tuple[str, str]] = field(default_factory=list)

    def plans(self, servers: dict[str, Srv], gate: WakeGate | None = None) -> Plans[Srv]:
        return Plans(
            servers,
            park=lambda s, why: self.log.append(("park", f"{s.id}:{why}")),
            wake=lambda s: self.log.append(("wake", s.id)),
            pend=lambda s: self.log.append(("pend", s.id)),
            serve=lambda m: self.log.append(("serve", m)),
            moved=lambda m: self.log.append(("moved", m)),
            gate=gate,
        )


def _servers() -> dict[str, Srv]:
    return {"v": Srv("v", "old", (0,), S.AWAKE, in_flight=2), "t": Srv("t", "new", (0,), S.PARKED)}


def test_plans__victim_drains_then_parks_then_the_target_wakes_then_traffic_routes() -> None:
    srv, ops = _servers(), Ops()
    plans = ops.plans(srv)
    plans.adopt(Activation("new", (0,), (Park("v"), Wake("t"), Route("new", (0,))), 0.0, "test"))
    assert srv["v"].draining == "make_room" and srv["t"].claimed
    assert policy_state(srv["v"]) is S.PARKING and policy_state(srv["t"]) is S.WAKING
    assert not plans.advance() and ops.log == []  # two requests still in flight on the victim
    srv["v"].in_flight = 0
    plans.advance()
    assert ops.log == [("park", "v:make_room")]
    srv["v"].state, srv["v"].draining = S.PARKED, None
    plans.advance()
    assert ops.log[-1] == ("wake", "t")
    srv["t"].state, srv["t"].claimed = S.AWAKE, False
    assert not plans.advance()
    assert ops.log[-1] == ("serve", "new") and plans.active == []


def test_plans__a_migration_source_serves_until_the_route_then_drains() -> None:
    srv = {"src": Srv("src", "m", (0,), S.AWAKE, in_flight=1), "dst": Srv("dst", "m", (1,), S.PARKED)}
    ops = Ops()
    plans = ops.plans(srv)
    plans.adopt(Migration("m", "src", (1,), (Wake("dst"), Route("m", (1,)), Park("src")), 0.5, "test"))
    assert srv["src"].draining is None  # it serves until traffic moves
    plans.advance()
    srv["dst"].state = S.AWAKE
    plans.advance()
    assert ops.log[1:] == [("moved", "m"), ("serve", "m")] and srv["src"].draining == "migration"


def test_plans__a_failed_park_abandons_and_gives_back_the_claims() -> None:
    srv, ops = _servers(), Ops()
    srv["v"].in_flight = 0
    plans = ops.plans(srv)
    plans.adopt(Activation("new", (0,), (Park("v"), Wake("t"), Route("new", (0,))), 0.0, "test"))
    plans.advance()
    srv["v"].error = "boom"  # the park failed: the owner put it back to awake
    assert plans.advance()
    assert not srv["t"].claimed and srv["v"].draining is None and ops.log[-1] == ("serve", "old")


@dataclass
class FakeRoom:
    """The KV ledger's answer as the wake gate sees it (kv/room.py ``Room``)."""

    short_bytes: int

    def describe(self) -> str:
        return f"{self.short_bytes} B on GPU 0"


@dataclass
class Gate:
    """A wake gate over a settable room and clock, recording what it reports."""

    short: int | None = 0
    now: float = 0.0
    waits: list[tuple[str, float, str]] = field(default_factory=list)

    def gate(self, wait_s: float = 30.0) -> WakeGate:
        return WakeGate(
            lambda iid: None if self.short is None else FakeRoom(self.short),
            lambda: self.now,
            wait_s,
            lambda s, secs, outcome: self.waits.append((s.id, secs, outcome)),
        )


def _gated(gate: WakeGate) -> tuple[dict[str, Srv], Ops, Plans[Srv]]:
    srv, ops = {"t": Srv("t", "new", (0,), S.PARKED)}, Ops()
    plans = ops.plans(srv, gate)
    plans.adopt(Activation("new", (0,), (Wake("t"), Route("new", (0,))), 0.0, "test"))
    return srv, ops, plans


def test_plans__a_wake_waits_for_room_then_wakes_when_it_fits() -> None:
    g = Gate(short=9 << 30)
    srv, ops, plans = _gated(g.gate())
    assert not plans.advance() and ops.log == []  # short: no wake issued
    assert plans.wake_due == {"t"} and srv["t"].claimed
    g.now = 4.0
    assert not plans.advance() and ops.log == [] and plans.wake_due == {"t"}
    g.short, g.now = 0, 6.5  # the neighbours' pages freed
    plans.advance()
    assert ops.log == [("wake", "t")] and plans.wake_due == frozenset()
    assert g.waits == [("t", 6.5, "fit")]


def test_plans__a_wake_with_room_or_no_view_goes_at_once() -> None:
    for short in (0, None):
        g = Gate(short=short)
        _, ops, plans = _gated(g.gate())
        plans.advance()
        assert ops.log == [("wake", "t")] and plans.wake_due == frozenset() and g.waits == []
    g = Gate(short=1)
    _, ops, plans = _gated(g.gate(wait_s=0))  # the gate off (scheduler.wake_room_s: 0)
    plans.advance()
    assert ops.log == [("wake", "t")]


def test_plans__a_wake_short_past_the_bound_abandons_its_plan() -> None:
    g = Gate(short=1 << 30)
    srv, ops, plans = _gated(g.gate(wait_s=30))
    assert not plans.advance()
    g.now = 29.9
    assert not plans.advance()
    g.now = 30.0
    assert plans.advance()  # abandoned: the loop decides again
    assert ("wake", "t") not in ops.log and plans.active == [] and not srv["t"].claimed
    assert plans.wake_due == frozenset() and g.waits == [("t", 30.0, "timeout")]


def test_plans__a_server_that_leaves_parked_while_it_waits_is_no_longer_due() -> None:
    g = Gate(short=1)
    srv, _, plans = _gated(g.gate())
    plans.advance()
    srv["t"].state, srv["t"].claimed = S.WAKING, False  # woken by an admin meanwhile
    assert plans.wake_due == frozenset()
