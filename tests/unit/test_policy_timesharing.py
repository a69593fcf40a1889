from __future__ import annotations

from orchestrator.control.api import InstanceState as S
from orchestrator.policy.gpu_memory import GIB, PARKED_BYTES, footprint, room
from orchestrator.policy.timesharing import decide
from orchestrator.policy.types import ClusterSnapshot, InstanceSnapshot

CAP = {0: 80 * GIB, 1: 80 * GIB}
BIG = footprint(30 * GIB, 1, 20 * GIB)  # 54 GiB awake
SMALL = footprint(3 * GIB, 1, 10 * GIB)  # 17 GiB awake


def inst(iid: str, state: S, gpus: tuple[int, ...] = (0,), fp=BIG, idle_s: float = 100.0,
         in_flight: int = 0, when: str = "needed", after: float = 45.0, prio: int = 0,
         at_start: bool = False, order: int = 0) -> InstanceSnapshot:
    return InstanceSnapshot(id=iid, model=iid.split("@")[0], gpus=gpus, state=state,
                            start_on_up=True, order=order, in_flight=in_flight, idle_s=idle_s,
                            park_after_s=after, park_when=when, priority=prio,
                            park_at_start=at_start, footprint=fp)


def snap(*insts: InstanceSnapshot, waiting: dict[str, int] | None = None) -> ClusterSnapshot:
    return ClusterSnapshot(tuple(insts), waiting or {}, CAP)


def test_ledger__awake_parked_and_stopped_footprints() -> None:
    free = room((inst("a@0", S.AWAKE), inst("b@0", S.PARKED), inst("c@1", S.STOPPED, (1,))), CAP)
    assert free[0] == 80 * GIB - BIG.awake_bytes - PARKED_BYTES
    assert free[1] == 80 * GIB


def test_timesharing__off_placement_parks_once_warm() -> None:
    d = decide(snap(inst("a@0", S.AWAKE, at_start=True, idle_s=0)), 0)
    assert d.park == (("a@0", "warm_start"),)


def test_timesharing__warm_start_park_waits_for_held_requests() -> None:
    d = decide(snap(inst("a@0", S.AWAKE, at_start=True), waiting={"a": 1}), 0)
    assert d.park == ()


def test_timesharing__request_for_parked_model_wakes_it_when_room() -> None:
    d = decide(snap(inst("a@0", S.PARKED), inst("b@0", S.AWAKE, fp=SMALL), waiting={"a": 2}), 0)
    assert d.wake == ("a@0",) and d.park == ()


def test_timesharing__no_room_parks_idle_neighbour_first_then_wakes() -> None:
    s = snap(inst("a@0", S.PARKED), inst("b@0", S.AWAKE, idle_s=60), waiting={"a": 1})
    d = decide(s, 0)
    assert d.park == (("b@0", "make_room"),) and d.wake == ()
    s = snap(inst("a@0", S.PARKED), inst("b@0", S.PARKED), waiting={"a": 1})
    assert decide(s, 0).wake == ("a@0",)


def test_timesharing__busy_neighbour_is_never_parked() -> None:
    s = snap(inst("a@0", S.PARKED), inst("b@0", S.AWAKE, in_flight=3), waiting={"a": 1})
    d = decide(s, 0)
    assert d.park == () and d.wake == ()


def test_timesharing__victims_past_threshold_and_low_priority_go_first() -> None:
    s = snap(inst("a@0", S.PARKED),
             inst("young@0", S.AWAKE, fp=SMALL, idle_s=5, order=1),
             inst("old@0", S.AWAKE, fp=SMALL, idle_s=50, order=2),
             inst("vip@0", S.AWAKE, fp=SMALL, idle_s=90, prio=5, order=3),
             waiting={"a": 1})
    d = decide(s, 0)
    assert [v for v, _ in d.park][:1] == ["old@0"]


def test_timesharing__wake_prefers_the_gpu_with_room() -> None:
    s = snap(inst("a@0", S.PARKED, (0,)), inst("a@1", S.PARKED, (1,), order=1),
             inst("b@0", S.AWAKE, (0,), in_flight=1), waiting={"a": 1})
    assert decide(s, 0).wake == ("a@1",)


def test_timesharing__idle_always_parks_after_threshold_only() -> None:
    assert decide(snap(inst("a@0", S.AWAKE, when="always", idle_s=44)), 0).park == ()
    assert decide(snap(inst("a@0", S.AWAKE, when="always", idle_s=46)), 0).park == (
        ("a@0", "idle"),)
    assert decide(snap(inst("a@0", S.AWAKE, when="needed", idle_s=460)), 0).park == ()
    assert decide(snap(inst("a@0", S.AWAKE, when="always", after=0, idle_s=460)), 0).park == ()


def test_timesharing__nothing_to_wake_while_model_is_waking_or_parking() -> None:
    for st in (S.WAKING, S.STARTING):
        assert decide(snap(inst("a@0", st), waiting={"a": 1}), 0).wake == ()
    assert decide(snap(inst("a@0", S.PARKING), waiting={"a": 1}), 0).wake == ()
