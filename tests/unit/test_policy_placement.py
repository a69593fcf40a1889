"""Global scheduler scenarios on hand-built snapshots (orchestrator/policy/placement/place.py)."""

from __future__ import annotations

from dataclasses import replace

from orchestrator.perf.cost import ServerCost
from orchestrator.policy.placement.cluster import (
    Activation,
    Blocked,
    ClusterView,
    IdlePark,
    Migration,
    ModelDemand,
    Park,
    PlacementParams,
    Route,
    ServerView,
    Start,
    Wake,
)
from orchestrator.policy.placement.place import decide
from orchestrator.types import InstanceState as S

GIB = 1 << 30
COST = ServerCost(
    parked_bytes=2 * GIB,
    awake_bytes=16 * GIB,
    kv_bytes_per_token=128 * 1024,
    kv_floor_bytes=1 * GIB,
    wake_s=0.4,
    park_s=0.37,
    cold_start_s=65.0,
)
BIG = replace(COST, awake_bytes=70 * GIB)
NOW = 1000.0


def model(
    name: str,
    rate: float = 0.0,
    queued: int = 0,
    running: int = 0,
    idle_s: float | None = 0.0,
    cost: ServerCost = COST,
    **kw: object,
) -> ModelDemand:
    last = None if idle_s is None else NOW - idle_s
    return ModelDemand(
        name=name,
        tp_size=kw.pop("tp", 1),
        cost=cost,
        tpot_slo_s=0.05,  # type: ignore[arg-type]
        token_rate=rate,
        queued=queued,
        running=running,
        last_active_at=last,
        **kw,
    )  # type: ignore[arg-type]


def srv(model: str, gpus: tuple[int, ...], state: S = S.PARKED, in_flight: int = 0) -> ServerView:
    return ServerView(f"{model}@{'+'.join(map(str, gpus))}", model, gpus, state, in_flight=in_flight)


def view(models: list[ModelDemand], servers: list[ServerView], n: int = 2, **params: object) -> ClusterView:
    return ClusterView(tuple(models), tuple(servers), (80 * GIB,) * n, PlacementParams(**params))  # type: ignore[arg-type]


def test_placement__activation_wakes_on_the_lowest_kvpr_gpu() -> None:
    v = view(
        [model("a", queued=3), model("hot", rate=5000, running=4), model("cool", rate=100, running=1)],
        [srv("a", (0,)), srv("a", (1,)), srv("hot", (0,), S.AWAKE), srv("cool", (1,), S.AWAKE)],
    )
    (act,) = decide(v, NOW).actions
    assert isinstance(act, Activation) and act.gpus == (1,)
    assert act.steps == (Wake("a@1"), Route("a", (1,)))


def test_placement__activation_names_the_server_it_chose_whatever_its_order() -> None:
    v = view(
        [model("a", queued=3), model("hot", rate=5000, running=4)],
        [srv("a", (1,)), srv("a", (0,)), srv("hot", (0,), S.AWAKE)],
    )
    (act,) = decide(v, NOW).actions
    assert isinstance(act, Activation) and act.gpus == (1,)
    assert act.steps == (Wake("a@1"), Route("a", (1,)))


def test_placement__surge_moves_model_to_lowest_kvpr_gpu() -> None:
    v = view(
        [
            model("surge", rate=20000, running=8),
            model("other", rate=8000, running=4),
            model("calm", rate=200, running=1),
        ],
        [
            srv("surge", (0,), S.AWAKE),
            srv("surge", (1,)),
            srv("surge", (2,)),
            srv("other", (0,), S.AWAKE),
            srv("calm", (1,), S.AWAKE),
        ],
        n=3,
    )
    (mig,) = decide(v, NOW).actions
    assert isinstance(mig, Migration) and mig.model == "surge" and mig.gpus == (2,)
    # ordered: wake the target, move traffic when it is ready, then park the source
    assert mig.steps == (Wake("surge@2"), Route("surge", (2,)), Park("surge@0"))
    assert mig.gain > 0.3


def test_placement__no_migration_when_gain_is_below_tau() -> None:
    v = view(
        [model("a", rate=1000, running=1), model("b", rate=900, running=1)],
        [srv("a", (0,), S.AWAKE), srv("a", (1,)), srv("b", (1,), S.AWAKE)],
    )
    assert decide(v, NOW).actions == ()
    assert decide(replace(v, params=PlacementParams(migrate=False)), NOW).actions == ()


def test_placement__idle_neighbour_is_parked_to_make_room() -> None:
    v = view(
        [model("new", queued=1), model("old", idle_s=120, cost=BIG), model("older", idle_s=50)],
        [srv("new", (0,)), srv("old", (0,), S.AWAKE), srv("older", (1,), S.AWAKE)],
        n=1,
    )
    v = replace(v, servers=v.servers[:2])
    (act,) = decide(v, NOW).actions
    assert isinstance(act, Activation)
    assert act.steps == (Park("old@0"), Wake("new@0"), Route("new", (0,)))


def test_placement__busy_or_recently_used_neighbours_are_never_parked() -> None:
    for neighbour in (
        model("old", cost=BIG, running=1, idle_s=600),
        model("old", cost=BIG, idle_s=30),
        model("old", cost=BIG, idle_s=600, park_when="never"),
    ):
        v = view([model("new", queued=1), neighbour], [srv("new", (0,)), srv("old", (0,), S.AWAKE)], n=1)
        d = decide(v, NOW)
        assert d.actions == ()
        assert d.blocked and isinstance(d.blocked[0], Blocked) and d.blocked[0].model == "new"


def test_placement__tp_model_needs_room_on_every_gpu_of_its_group() -> None:
    tp_cost = replace(COST, awake_bytes=60 * GIB)
    v = view(
        [
            model("tp", queued=1, cost=tp_cost, tp=2),
            model("busy", cost=BIG, running=2),
            model("idle", cost=BIG, idle_s=100),
        ],
        [srv("tp", (0, 1)), srv("busy", (1,), S.AWAKE), srv("idle", (0,), S.AWAKE)],
    )
    assert decide(v, NOW).blocked[0].model == "tp"
    v2 = replace(v, models=(v.models[0], replace(v.models[1], running=0, last_active_at=NOW - 100), v.models[2]))
    (act,) = decide(v2, NOW).actions
    assert isinstance(act, Activation) and act.gpus == (0, 1)
    assert set(act.steps[:2]) == {Park("busy@1"), Park("idle@0")} and act.steps[2] == Wake("tp@0+1")


def test_placement__cold_start_only_when_allowed_and_on_distinct_gpus() -> None:
    tp_cost = replace(COST, awake_bytes=30 * GIB)
    models = [model("tp", queued=2, cost=tp_cost, tp=2), model("x", rate=5000, running=3)]
    v = view(models, [srv("x", (0,), S.AWAKE)], n=4)
    assert decide(v, NOW).blocked[0].reason.startswith("no parked server")
    (act,) = decide(replace(v, params=PlacementParams(cold_start=True)), NOW).actions
    assert isinstance(act, Activation) and act.gpus == (2, 3)  # the group without the hot model
    assert act.steps == (Start("tp", (2, 3)), Route("tp", (2, 3)))


def test_placement__a_waking_model_is_not_activated_again() -> None:
    v = view([model("a", queued=5)], [srv("a", (0,), S.WAKING), srv("a", (1,))])
    assert decide(v, NOW).actions == ()


def test_placement__park_when_always_parks_idle_servers_without_memory_need() -> None:
    v = view(
        [model("a", idle_s=60, park_when="always"), model("b", idle_s=60)],
        [srv("a", (0,), S.AWAKE), srv("b", (1,), S.AWAKE)],
    )
    (act,) = decide(v, NOW).actions
    assert isinstance(act, IdlePark) and act.server == "a@0" and act.steps == (Park("a@0"),)


def test_placement__kvpr_per_gpu_grows_with_the_pressure_of_awake_models() -> None:
    def ratio(rate: float) -> float:
        v = view(
            [model("a", rate=rate, running=1), model("b", rate=1000, running=1), model("c")],
            [srv("a", (0,), S.AWAKE), srv("b", (0,), S.AWAKE), srv("c", (0,))],
            n=1,
        )
        d = decide(v, NOW)
        assert not hasattr(d, "kv_limits")  # KV is the ledger's (orchestrator/kv/), not placement's
        return d.kvpr[0]

    assert 0 < ratio(1000) < ratio(3000)


def test_placement__priority_models_are_activated_first_when_room_is_short() -> None:
    v = view([model("low", queued=9), model("vip", queued=1, priority=2)], [srv("low", (0,)), srv("vip", (0,))], n=1)
    v = replace(v, gpu_bytes=(37 * GIB,))
    d = decide(v, NOW)
    assert [a.model for a in d.actions] == ["vip"] and d.blocked[0].model == "low"


def test_placement__same_snapshot_same_decision() -> None:
    v = view(
        [model(f"m{i}", rate=100 * i, queued=i % 3, running=i % 2) for i in range(8)],
        [srv(f"m{i}", (i % 3,), S.AWAKE if i % 2 else S.PARKED) for i in range(8)]
        + [srv(f"m{i}", ((i + 1) % 3,)) for i in range(8)],
        n=3,
    )
    assert decide(v, NOW) == decide(v, NOW)


def test_placement__snapshot_errors_name_the_server() -> None:
    v = view([model("a")], [srv("ghost", (0,))])
    try:
        decide(v, NOW)
    except ValueError as exc:
        assert "ghost" in str(exc)
    else:
        raise AssertionError("expected a ValueError")


def test_placement__a_starving_model_may_preempt_a_busy_lower_priority_neighbour() -> None:
    models = [model("big", queued=2, cost=BIG), model("small", rate=100, running=1)]
    servers = [srv("big", (0,)), srv("small", (0,), S.AWAKE, in_flight=1)]
    assert decide(view(models, servers, n=1), NOW).blocked  # waited little: it holds
    starving = replace(models[0], oldest_wait_s=30.0)
    (act,) = decide(view([starving, models[1]], servers, n=1), NOW).actions
    assert isinstance(act, Activation) and act.steps[0] == Park("small@0")
    assert "preempts busy small@0" in act.reason
    vip = replace(models[1], priority=1)
    assert decide(view([starving, vip], servers, n=1), NOW).blocked  # never a higher priority


def test_placement__a_starving_model_waits_longer_for_a_busier_neighbour() -> None:
    """The guard weighs a busy neighbour by its request rate: one with three times the starving
    model's requests only after three times the wait, any after ``starvation_max_s``."""
    busy = model("small", rate=100, running=1, request_rate=1.5)
    servers = [srv("big", (0,)), srv("small", (0,), S.AWAKE, in_flight=1)]

    def acts(wait_s: float, rate: float, **params: object) -> bool:
        big = replace(model("big", queued=2, cost=BIG), oldest_wait_s=wait_s, request_rate=rate)
        return bool(decide(view([big, busy], servers, n=1, **params), NOW).actions)

    assert acts(10.0, 1.5) and acts(10.0, 2.0)  # no quieter than its neighbour: the base wait
    assert not acts(10.0, 0.5) and not acts(29.0, 0.5) and acts(30.0, 0.5)  # 3x the requests: 3x
    assert not acts(59.0, 0.01) and acts(60.0, 0.01)  # 150x: the cap
    assert not acts(59.0, 0.0) and acts(60.0, 0.0)  # nothing measured yet: the cap
    assert acts(20.0, 0.01, starvation_max_s=20.0)
    assert not acts(1e6, 0.5, starvation_s=1e9)  # the guard off


def test_placement__a_starving_model_parks_the_neighbour_with_the_fewest_requests_first() -> None:
    big = replace(model("big", queued=2, cost=BIG), oldest_wait_s=30.0, request_rate=0.5)
    half = replace(COST, awake_bytes=40 * GIB)
    # "many" decodes fewer tokens (short answers) but gets more requests than "few"
    many = model("many", rate=50, running=1, cost=half, request_rate=0.4)
    few = model("few", rate=900, running=1, cost=half, request_rate=0.1)
    servers = [srv("big", (0,)), srv("many", (0,), S.AWAKE, in_flight=1), srv("few", (0,), S.AWAKE, in_flight=1)]
    v = replace(view([big, many, few], servers, n=1), gpu_bytes=(100 * GIB,))
    (act,) = decide(v, NOW).actions
    assert isinstance(act, Activation) and act.steps[0] == Park("few@0")


def test_placement__tpot_guard_keeps_a_small_model_off_a_gpu_with_slow_decode_steps() -> None:
    slow = replace(
        model("slow32b", rate=800, running=2, cost=replace(COST, awake_bytes=30 * GIB)), step_s=0.030, tpot_slo_s=0.3
    )
    small = replace(model("tiny", queued=1), step_s=0.002, tpot_slo_s=0.018)
    busy = replace(model("busy", rate=5000, running=4), step_s=0.004, tpot_slo_s=0.05)
    servers = [srv("slow32b", (0,), S.AWAKE), srv("busy", (1,), S.AWAKE), srv("tiny", (0,)), srv("tiny", (1,))]
    (act,) = decide(view([slow, small, busy], servers), NOW).actions
    assert act.gpus == (1,)  # GPU 0 has more free KV, but its rounds would take 32 ms > 18 ms
    no_guard = view([slow, small, busy], servers, tpot_guard=False)
    assert decide(no_guard, NOW).actions[0].gpus == (0,)  # Prism's KVPR alone picks GPU 0


def test_placement__tpot_overflow_triggers_a_migration_regardless_of_tau() -> None:
    slow = replace(
        model("slow", rate=10, running=1, cost=replace(COST, awake_bytes=30 * GIB)), step_s=0.030, tpot_slo_s=0.3
    )
    tiny = replace(model("tiny", rate=10, running=1), step_s=0.002, tpot_slo_s=0.018)
    servers = [srv("slow", (0,), S.AWAKE), srv("tiny", (0,), S.AWAKE), srv("tiny", (1,))]
    (mig,) = decide(view([slow, tiny], servers), NOW).actions
    assert isinstance(mig, Migration) and mig.model == "tiny" and mig.gpus == (1,)
    assert mig.steps == (Wake("tiny@1"), Route("tiny", (1,)), Park("tiny@0")) and "TPOT" in mig.reason
    cooling = replace(tiny, last_moved_at=NOW - 10)
    assert decide(view([slow, cooling], servers), NOW).actions == ()  # moved 10 s ago: stays


def test_placement__tpot_guard_counts_only_models_actively_decoding() -> None:
    small = replace(model("tiny", queued=1), step_s=0.002, tpot_slo_s=0.018)
    busy = replace(model("busy", rate=5000, running=4), step_s=0.004, tpot_slo_s=0.05)
    servers = [srv("slow32b", (0,), S.AWAKE), srv("busy", (1,), S.AWAKE), srv("tiny", (0,)), srv("tiny", (1,))]
    for activity, gpu in ((None, 1), (0.9, 1), (0.02, 0)):
        slow = replace(
            model("slow32b", rate=800, running=2, cost=replace(COST, awake_bytes=30 * GIB)),
            step_s=0.030,
            tpot_slo_s=0.3,
            activity=activity,
        )
        (act,) = decide(view([slow, small, busy], servers), NOW).actions
        # unknown or busy: its 30 ms steps would break tiny's 18 ms; decoding 2% of the time:
        # the round tiny sees is 2.6 ms on average, and GPU 0 has more free KV
        assert act.gpus == (gpu,), activity


def test_placement__a_starving_model_preempts_the_least_used_busy_neighbour_first() -> None:
    big = replace(model("big", queued=2, cost=BIG), oldest_wait_s=30.0)
    half = replace(COST, awake_bytes=40 * GIB)
    # hot has the lower KV pressure (tiny KV per token): the old order would have parked it
    hot = model("hot", rate=9000, running=3, cost=replace(half, kv_bytes_per_token=1024))
    cold = model("cold", rate=50, running=1, cost=replace(half, kv_bytes_per_token=1 << 20))
    assert hot.pressure < cold.pressure
    models = [big, hot, cold]
    servers = [srv("big", (0,)), srv("hot", (0,), S.AWAKE, in_flight=3), srv("cold", (0,), S.AWAKE, in_flight=1)]
    v = replace(view(models, servers, n=1), gpu_bytes=(100 * GIB,))
    (act,) = decide(v, NOW).actions
    assert isinstance(act, Activation) and act.steps[0] == Park("cold@0")


def test_placement__swap_limit_parks_the_awake_neighbour_even_busy_and_with_room() -> None:
    models = [model("a", queued=2), model("b", rate=100, running=3)]
    servers = [srv("a", (0,)), srv("b", (0,), S.AWAKE, in_flight=3)]
    assert decide(view(models, servers, n=1), NOW).blocked == () and decide(view(models, servers, n=1), NOW).actions[
        0
    ].steps == (Wake("a@0"), Route("a", (0,)))  # room: no park
    (act,) = decide(view(models, servers, n=1, max_awake_per_gpu=1), NOW).actions
    assert isinstance(act, Activation)
    assert act.steps == (Park("b@0"), Wake("a@0"), Route("a", (0,)))


def test_placement__swap_limit_keeps_the_most_recently_active_within_the_limit() -> None:
    models = [model("a", queued=1), model("old", idle_s=50.0), model("new", idle_s=1.0), model("never", idle_s=None)]
    servers = [srv("a", (0,)), srv("old", (0,), S.AWAKE), srv("new", (0,), S.AWAKE), srv("never", (0,), S.AWAKE)]
    (act,) = decide(view(models, servers, n=1, max_awake_per_gpu=2), NOW).actions
    assert isinstance(act, Activation)
    assert [s for s in act.steps if isinstance(s, Park)] == [Park("never@0"), Park("old@0")]


def test_placement__swap_limit_waits_while_the_gpu_wakes_another_model() -> None:
    models = [model("a", queued=1), model("b", queued=1)]
    servers = [srv("a", (0,)), srv("b", (0,), S.WAKING)]
    d = decide(view(models, servers, n=1, max_awake_per_gpu=1), NOW)
    assert d.actions == () and [b.model for b in d.blocked] == ["a"]
    assert "at most 1 awake per GPU" in d.blocked[0].reason
    # two models asking at once: the first is activated, the second waits for it
    d = decide(view(models, [srv("a", (0,)), srv("b", (0,))], n=1, max_awake_per_gpu=1), NOW)
    assert [a.model for a in d.actions] == ["a"] and [b.model for b in d.blocked] == ["b"]


def test_placement__swap_limit_is_per_gpu_and_never_parks_a_model_that_never_parks() -> None:
    models = [model("a", queued=1), model("b", rate=10, running=1), model("c", running=1)]
    servers = [srv("a", (0,)), srv("a", (1,)), srv("b", (0,), S.AWAKE), srv("c", (1,), S.AWAKE)]
    pinned = [models[0], models[1], replace(models[2], park_when="never")]
    (act,) = decide(view(pinned, servers, n=2, max_awake_per_gpu=1), NOW).actions
    assert isinstance(act, Activation) and act.gpus == (0,) and Park("b@0") in act.steps
    both = [models[0], replace(models[1], park_when="never"), pinned[2]]
    assert decide(view(both, servers, n=2, max_awake_per_gpu=1), NOW).blocked


def test_placement__swap_limit_turns_migrations_off() -> None:
    models = [model("a", rate=5000, running=4), model("hot", rate=5000, running=4)]
    servers = [srv("a", (0,), S.AWAKE), srv("a", (1,)), srv("hot", (0,), S.AWAKE)]
    assert any(isinstance(a, Migration) for a in decide(view(models, servers), NOW).actions)
    assert decide(view(models, servers, max_awake_per_gpu=1), NOW).actions == ()
