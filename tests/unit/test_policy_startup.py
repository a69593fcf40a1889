from __future__ import annotations

from orchestrator.policy.startup import ClusterSnapshot, InstanceSnapshot, StartDecision, decide
from orchestrator.types import InstanceState as S


def inst(
    i: int,
    model: str,
    gpus: tuple[int, ...],
    state: S = S.STOPPED,
    on: bool = True,
    alone: bool = False,
    budget: int = 0,
    parked: int = 0,
    parks: bool = False,
) -> InstanceSnapshot:
    return InstanceSnapshot(
        id=f"{model}@{i}",
        model=model,
        gpus=gpus,
        state=state,
        start_on_up=on,
        order=i,
        start_alone=alone,
        start_bytes=budget,
        parked_bytes=parked,
        parks_after_start=parks,
    )


def test_colocated_instances_start_together() -> None:
    snap = ClusterSnapshot((inst(0, "a", (0,)), inst(1, "b", (0,)), inst(2, "c", (1,))), {})
    d = decide(snap, 0.0)
    assert d.start == ("a@0", "b@1", "c@2") and d.queue == ()


def test_one_that_must_start_alone_waits_for_its_gpu_and_holds_it() -> None:
    snap = ClusterSnapshot(
        (inst(0, "a", (0,)), inst(1, "b", (0,), alone=True), inst(2, "c", (0,)), inst(3, "d", (1,))), {}
    )
    d = decide(snap, 0.0)  # a starts; b must not start beside it; c may
    assert d.start == ("a@0", "c@2", "d@3") and d.queue == ("b@1",)
    snap = ClusterSnapshot(
        (inst(0, "a", (0,), S.AWAKE), inst(1, "b", (0,), S.PENDING, alone=True), inst(2, "c", (0,))), {}
    )
    d = decide(snap, 0.0)  # the GPU has nothing starting: b starts, and c waits for it
    assert d.start == ("b@1",) and d.queue == ("c@2",)
    snap = ClusterSnapshot((inst(0, "big", (0, 1), S.STARTING, alone=True), inst(1, "s", (1,))), {})
    assert decide(snap, 0.0) == StartDecision((), ("s@1",))  # a TP group holds every GPU it spans


def test_starts_beside_others_only_where_the_budget_fits() -> None:
    gib = 2**30
    snap = ClusterSnapshot(
        (
            inst(0, "a", (0,), S.STARTING, budget=30 * gib),
            inst(1, "p", (0,), S.PARKED, budget=40 * gib, parked=2 * gib),
            inst(2, "b", (0,), budget=40 * gib),
            inst(3, "c", (0,), budget=48 * gib),
        ),
        {},
        gpu_bytes=80 * gib,
    )
    d = decide(snap, 0.0)  # 30 + 2 + 40 fits in 80; 48 more does not while a and b start
    assert d.start == ("b@2",) and d.queue == ("c@3",)
    done = ClusterSnapshot(
        (inst(0, "a", (0,), S.AWAKE, budget=30 * gib), inst(3, "c", (0,), S.PENDING, budget=60 * gib)),
        {},
        gpu_bytes=80 * gib,
    )
    # nothing else starting on the GPU: it starts as it always did, the policy never deadlocks
    assert decide(done, 0.0).start == ("c@3",)


def test_off_placement_starts_only_on_demand() -> None:
    off = inst(0, "a", (0,), on=False)
    assert decide(ClusterSnapshot((off,), {}), 0.0).start == ()
    assert decide(ClusterSnapshot((off,), {"a": 2}), 0.0).start == ("a@0",)


def test_demand_does_not_start_a_second_instance_while_one_is_on_its_way() -> None:
    snap = ClusterSnapshot((inst(0, "a", (0,), S.STARTING, on=False), inst(1, "a", (1,), on=False)), {"a": 5})
    assert decide(snap, 0.0).start == ()


def test_failed_instances_are_not_restarted_by_startup() -> None:
    snap = ClusterSnapshot((inst(0, "a", (0,), S.FAILED),), {"a": 1})
    assert decide(snap, 0.0).start == ()


def test_instances_that_park_after_start_go_first_and_the_rest_start_into_their_memory() -> None:
    """Set-up B's shape: four models stay awake, four start only to be parked; 80 GB do not
    hold all eight at once. In file order the awake ones took the GPU and the parked ones then
    started one at a time (3 waves of a cold start after the first); parks first, two waves."""
    gib = 1 << 30
    sizes = (8, 12, 21, 20)
    awake = [inst(i, f"a{i}", (0,), budget=sizes[i] * gib, parked=2 * gib) for i in range(4)]
    parks = [inst(4 + i, f"b{i}", (0,), budget=sizes[i] * gib, parked=2 * gib, parks=True) for i in range(4)]
    d = decide(ClusterSnapshot((*awake, *parks), {}, gpu_bytes=75 * gib), 0.0)
    assert d.start == ("b0@4", "b1@5", "b2@6", "b3@7", "a0@0")  # 69 GiB of 75
    assert d.queue == ("a1@1", "a2@2", "a3@3")
    # the four have parked (2 GiB each): the three left start together
    up = [
        *(
            inst(i, f"a{i}", (0,), S.AWAKE if i == 0 else S.PENDING, budget=sizes[i] * gib, parked=2 * gib)
            for i in range(4)
        ),
        *(inst(4 + i, f"b{i}", (0,), S.PARKED, budget=sizes[i] * gib, parked=2 * gib, parks=True) for i in range(4)),
    ]
    d = decide(ClusterSnapshot(tuple(up), {}, gpu_bytes=75 * gib), 0.0)
    assert d.start == ("a1@1", "a2@2", "a3@3")
