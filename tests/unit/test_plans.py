"""The plan executor (orchestrator/control/plans.py) over the smallest server its protocol
allows: steps run in order as states change, claims show to policies, an abandon gives back
what it reserved. The live loop's use is tested in test_loop_scheduler.py, the simulator's in
test_bench_sim.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.control.plans import Plans, policy_state
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

    def plans(self, servers: dict[str, Srv]) -> Plans[Srv]:
        return Plans(
            servers,
            park=lambda s, why: self.log.append(("park", f"{s.id}:{why}")),
            wake=lambda s: self.log.append(("wake", s.id)),
            pend=lambda s: self.log.append(("pend", s.id)),
            serve=lambda m: self.log.append(("serve", m)),
            moved=lambda m: self.log.append(("moved", m)),
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
