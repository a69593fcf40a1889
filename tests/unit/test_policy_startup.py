from __future__ import annotations

from orchestrator.policy.startup import ClusterSnapshot, InstanceSnapshot, decide
from orchestrator.types import InstanceState as S


def inst(i: int, model: str, gpus: tuple[int, ...], state: S = S.STOPPED, on: bool = True) -> InstanceSnapshot:
    return InstanceSnapshot(id=f"{model}@{i}", model=model, gpus=gpus, state=state,
                            start_on_up=on, order=i)


def test_colocated_instances_start_one_at_a_time_per_gpu() -> None:
    snap = ClusterSnapshot((inst(0, "a", (0,)), inst(1, "b", (0,)), inst(2, "c", (1,))), {})
    d = decide(snap, 0.0)
    assert d.start == ("a@0", "c@2")
    assert d.queue == ("b@1",)


def test_next_colocated_starts_when_the_gpu_is_free() -> None:
    snap = ClusterSnapshot((inst(0, "a", (0,), S.AWAKE), inst(1, "b", (0,), S.PENDING)), {})
    assert decide(snap, 0.0).start == ("b@1",)
    snap = ClusterSnapshot((inst(0, "a", (0,), S.STARTING), inst(1, "b", (0,), S.PENDING)), {})
    assert decide(snap, 0.0).start == ()


def test_tp_group_blocks_every_gpu_it_spans() -> None:
    snap = ClusterSnapshot((inst(0, "big", (0, 1), S.STARTING), inst(1, "s", (1,))), {})
    d = decide(snap, 0.0)
    assert d.start == () and d.queue == ("s@1",)


def test_off_placement_starts_only_on_demand() -> None:
    off = inst(0, "a", (0,), on=False)
    assert decide(ClusterSnapshot((off,), {}), 0.0).start == ()
    assert decide(ClusterSnapshot((off,), {"a": 2}), 0.0).start == ("a@0",)


def test_demand_does_not_start_a_second_instance_while_one_is_on_its_way() -> None:
    snap = ClusterSnapshot((inst(0, "a", (0,), S.STARTING, on=False), inst(1, "a", (1,), on=False)),
                           {"a": 5})
    assert decide(snap, 0.0).start == ()


def test_failed_instances_are_not_restarted_by_startup() -> None:
    snap = ClusterSnapshot((inst(0, "a", (0,), S.FAILED),), {"a": 1})
    assert decide(snap, 0.0).start == ()
