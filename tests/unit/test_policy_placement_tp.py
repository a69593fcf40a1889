"""The global scheduler with TP groups spanning GPUs that also host TP-1 models: memory counted
on every GPU of a group, KV pressure per GPU, the TPOT guard counting the group's steps on each
GPU, victims chosen for a small model without parking a whole group, and cold-start GPU sets
(orchestrator/policy/placement/)."""

from __future__ import annotations

from orchestrator.perf.cost import ServerCost
from orchestrator.policy.placement import tpot
from orchestrator.policy.placement.cluster import (
    Activation,
    Blocked,
    ClusterView,
    ModelDemand,
    Park,
    PlacementParams,
    Route,
    ServerView,
    Start,
    Wake,
)
from orchestrator.policy.placement.kvpr import GpuTally
from orchestrator.policy.placement.place import decide
from orchestrator.types import InstanceState as S

GIB = 1 << 30
NOW = 1000.0
# per GPU of its group: a 70B shard at TP 4, and a 1B server
BIG = ServerCost(2 * GIB, 36 * GIB, 80 * 1024, 1 * GIB, wake_s=1.0, park_s=0.8, cold_start_s=65.0)
SMALL = ServerCost(2 * GIB, 5 * GIB, 32 * 1024, 1 * GIB, wake_s=0.2, park_s=0.2, cold_start_s=65.0)
TP4 = (0, 1, 2, 3)


def m(
    name: str,
    cost: ServerCost = SMALL,
    tp: int = 1,
    queued: int = 0,
    running: int = 0,
    idle_s: float = 0.0,
    rate: float = 0.0,
    slo: float = 0.1,
    step_s: float = 0.0,
    oldest_wait_s: float = 0.0,
) -> ModelDemand:
    return ModelDemand(
        name=name,
        tp_size=tp,
        cost=cost,
        tpot_slo_s=slo,
        token_rate=rate,
        queued=queued,
        running=running,
        last_active_at=NOW - idle_s,
        idle_park_s=10.0,
        step_s=step_s,
        oldest_wait_s=oldest_wait_s,
    )


def sv(model: str, gpus: tuple[int, ...], state: S = S.PARKED) -> ServerView:
    return ServerView(f"{model}@{'+'.join(map(str, gpus))}", model, gpus, state)


def cluster(
    models: list[ModelDemand], servers: list[ServerView], gib: float, n: int = 4, **params: object
) -> ClusterView:
    return ClusterView(tuple(models), tuple(servers), (int(gib * GIB),) * n, PlacementParams(**params))  # type: ignore[arg-type]


def four_small(idle_s: float = 60.0, busy_on: int | None = None) -> tuple[list[ModelDemand], list[ServerView]]:
    models = [m(f"s{g}", idle_s=idle_s, running=1 if g == busy_on else 0) for g in range(4)]
    return models, [sv(f"s{g}", (g,), S.AWAKE) for g in range(4)]


def test_tp4_wake_needs_room_on_every_gpu_and_parks_the_idle_small_server_on_each() -> None:
    # 44 GiB GPUs: the group's context, a small server awake and its context leave 34 GiB, the
    # shard needs 37 GiB (awake + KV floor) on each of its four GPUs
    small, servers = four_small()
    v = cluster([m("big", BIG, tp=4, queued=2), *small], [sv("big", TP4), *servers], gib=44)
    (act,) = decide(v, NOW).actions
    assert isinstance(act, Activation) and act.gpus == TP4
    assert act.steps == (*(Park(f"s{g}@{g}") for g in range(4)), Wake("big@0+1+2+3"), Route("big", TP4))


def test_tp4_wake_is_blocked_while_one_gpu_of_the_group_has_a_busy_small_model() -> None:
    small, servers = four_small(busy_on=2)
    v = cluster([m("big", BIG, tp=4, queued=2), *small], [sv("big", TP4), *servers], gib=44)
    d = decide(v, NOW)
    assert d.actions == () and isinstance(d.blocked[0], Blocked) and "per GPU" in d.blocked[0].reason
    # once its requests waited past the starvation guard it preempts the busy one too
    starving = m("big", BIG, tp=4, queued=2, oldest_wait_s=30.0)
    (act,) = decide(cluster([starving, *small], [sv("big", TP4), *servers], gib=44), NOW).actions
    assert isinstance(act, Activation) and Park("s2@2") in act.steps


def test_tp_group_memory_and_kv_pressure_count_on_each_gpu_it_spans_only() -> None:
    big = m("big", BIG, tp=4, running=1, rate=1000.0)
    v = cluster([big, m("s4")], [sv("big", TP4, S.AWAKE), sv("s4", (4,), S.AWAKE)], gib=80, n=5)
    led = GpuTally(v)
    for g in TP4:
        assert led.room[g] == 80 * GIB - BIG.parked_bytes - BIG.awake_bytes
        assert led.pressure[g] == big.pressure > 0
    assert led.pressure[4] == 0 and led.room[4] == 80 * GIB - SMALL.held_awake_bytes
    kvpr = decide(v, NOW).kvpr
    assert all(kvpr[g] == kvpr[0] > 0 for g in TP4) and kvpr[4] == 0


def test_tpot_guard_counts_the_tp_groups_step_on_every_gpu_and_wakes_the_small_model_off_it() -> None:
    # the 70B's 30 ms step holds each of GPUs 0-3 while it decodes: a 1B with a 30 ms TPOT SLO
    # there would see 35 ms rounds; GPU 4 has more KV pressure but no decode work
    big = m("big", BIG, tp=4, running=2, step_s=0.03)
    fast = m("fast", queued=1, slo=0.03, step_s=0.005)
    other = m("other", running=1, rate=50_000.0)
    servers = [sv("big", TP4, S.AWAKE), sv("fast", (2,)), sv("fast", (4,)), sv("other", (4,), S.AWAKE)]
    v = cluster([big, fast, other], servers, gib=80, n=5)
    led = GpuTally(v)
    for g in TP4:
        assert led.round_s[g] == 0.03 and tpot.overflow(led, (g,), fast) > 0
    assert tpot.overflow(led, (4,), fast) == 0 and led.ratio(4) > led.ratio(2)
    (act,) = decide(v, NOW).actions
    assert isinstance(act, Activation) and act.gpus == (4,)
    # without the guard the lower KV pressure of GPU 2 wins
    (act,) = decide(cluster([big, fast, other], servers, gib=80, n=5, tpot_guard=False), NOW).actions
    assert isinstance(act, Activation) and act.gpus == (2,)


def test_a_small_model_makes_room_from_its_own_gpus_neighbours_before_parking_a_tp_group() -> None:
    # GPU 1: the idle TP 4 group (idle longest) and an idle 1B; the 1B "new" needs 6 GiB there.
    # Parking the group would also empty GPUs 0, 2 and 3; parking the neighbour is enough.
    big = m("big", BIG, tp=4, idle_s=600.0)
    models = [big, m("nb", idle_s=60.0), m("new", queued=1)]
    servers = [sv("big", TP4, S.AWAKE), sv("nb", (1,), S.AWAKE), sv("new", (1,))]
    (act,) = decide(cluster(models, servers, gib=50), NOW).actions
    assert isinstance(act, Activation) and act.steps == (Park("nb@1"), Wake("new@1"), Route("new", (1,)))


def test_cold_start_of_a_tp_group_takes_the_gpus_with_room_when_no_aligned_block_has_it() -> None:
    # GPUs 0 and 2 hold busy 60 GiB servers: both aligned TP 2 blocks (0+1, 2+3) have a full
    # GPU; GPUs 1 and 3 have room for a 36 GiB shard each
    hog = ServerCost(2 * GIB, 60 * GIB, 32 * 1024, 1 * GIB, wake_s=0.5, park_s=0.5, cold_start_s=65.0)
    models = [m("tp2", BIG, tp=2, queued=1), m("h0", hog, running=1), m("h2", hog, running=1)]
    servers = [sv("h0", (0,), S.AWAKE), sv("h2", (2,), S.AWAKE)]
    (act,) = decide(cluster(models, servers, gib=80, cold_start=True), NOW).actions
    assert isinstance(act, Activation) and act.gpus == (1, 3)
    assert act.steps == (Start("tp2", (1, 3)), Route("tp2", (1, 3)))
