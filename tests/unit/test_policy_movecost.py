"""The migration's cost model across nodes (policy/placement/movecost.py, migration.py): a
parked server wakes from its own node's backup; a move to a server with no backup (another
node's stopped server) is a cold start, taken only with ``cold_start`` and only when no warm
move qualifies."""

from __future__ import annotations

from dataclasses import replace

from orchestrator.policy.placement.cluster import ClusterView, Migration, Park, Route, Start, Wake
from orchestrator.policy.placement.movecost import move_cost
from orchestrator.policy.placement.place import decide
from orchestrator.types import InstanceState as S
from tests.unit.test_policy_placement import NOW, model, srv, view


def surge(*servers: tuple[tuple[int, ...], S], cold_start: bool = False) -> ClusterView:
    v = view(
        [model("surge", rate=20000, running=8), model("other", rate=8000, running=4)],
        [srv("surge", (0,), S.AWAKE), srv("other", (0,), S.AWAKE), *(srv("surge", g, st) for g, st in servers)],
        n=4,
        cold_start=cold_start,
    )
    return replace(v, gpu_node=(0, 0, 1, 1))  # GPUs 0-1 on node 0, 2-3 on node 1


def test_cost_is_a_wake_for_a_parked_server_and_a_cold_start_for_one_without_a_backup() -> None:
    v = surge()
    m = v.models[0]
    warm_far = move_cost(v, m, (0,), (2,), S.PARKED)
    cold_far = move_cost(v, m, (0,), (2,), S.STOPPED)
    cold_near = move_cost(v, m, (0,), (1,), S.STOPPED)
    assert (warm_far.kind, warm_far.seconds, warm_far.across_nodes) == ("wake", m.cost.wake_s, True)
    assert (cold_far.kind, cold_far.seconds, cold_far.across_nodes) == ("cold start", m.cost.cold_start_s, True)
    assert cold_near.cold and not cold_near.across_nodes
    assert cold_far.seconds > 10 * warm_far.seconds
    assert view([m], []).node_of(3) == 0  # no nodes given: one host


def test_a_move_to_another_node_without_a_parked_server_is_a_cold_start_only_when_allowed() -> None:
    assert decide(surge(((2,), S.STOPPED)), NOW).actions == ()  # cold starts off: no move
    (mig,) = decide(surge(((2,), S.STOPPED), cold_start=True), NOW).actions
    assert isinstance(mig, Migration) and mig.gpus == (2,)
    assert mig.steps == (Start("surge", (2,)), Route("surge", (2,)), Park("surge@0"))
    assert "cold start across nodes" in mig.reason


def test_a_warm_move_wins_over_a_cold_one_even_with_less_gain() -> None:
    # GPU 3 (cold, node 1) would be as good or better for KV; GPU 1 has a parked server: warm
    v = surge(((3,), S.STOPPED), ((1,), S.PARKED), cold_start=True)
    (mig,) = decide(v, NOW).actions
    assert isinstance(mig, Migration) and mig.steps[0] == Wake("surge@1")
    assert "wake" in mig.reason and "across" not in mig.reason


def test_a_parked_server_on_another_node_is_a_warm_move() -> None:
    (mig,) = decide(surge(((2,), S.PARKED)), NOW).actions
    assert isinstance(mig, Migration) and mig.steps[0] == Wake("surge@2")
    assert "wake across nodes" in mig.reason


def test_a_cold_target_needs_room_for_its_cuda_context_too() -> None:
    v = surge(((2,), S.STOPPED), cold_start=True)
    m = v.models[0]
    # fill GPU 2 so the weights fit but not weights + context (the cold start's extra)
    tight = m.cost.awake_bytes + m.cost.kv_floor_bytes + m.cost.parked_bytes // 2
    v = replace(v, gpu_bytes=(v.gpu_bytes[0], v.gpu_bytes[1], tight, v.gpu_bytes[3]))
    assert not any(isinstance(a, Migration) and a.gpus == (2,) for a in decide(v, NOW).actions)
