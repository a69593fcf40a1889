"""The optimized global decision (orchestrator/policy/placement/) equals the reference one it
replaced (tests/unit/placement_ref/) on random fleets: same actions, blocked models and KVPR per
GPU, for every parameter combination that changes the decision's path."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.perf.cost import server_cost
from orchestrator.policy.placement import place
from orchestrator.policy.placement.cluster import ClusterView, ModelDemand, PlacementParams, ServerView
from orchestrator.shapes import load_shape
from orchestrator.types import InstanceState as S
from tests.unit.placement_ref import place as ref_place

GIB = 1 << 30
SHAPES = (("llama-3.2-1b", 1), ("llama-3.1-8b", 1), ("qwen2.5-32b", 1), ("llama-3.3-70b", 2), ("qwen2.5-7b", 4))
COSTS = {(s, tp): server_cost(load_shape(s), tp) for s, tp in SHAPES}
STATES = (S.AWAKE, S.AWAKE, S.PARKED, S.PARKED, S.PARKED, S.WAKING, S.STARTING, S.STOPPED, S.PARKING, S.PENDING)


def fleet(seed: int, n_models: int, n_gpus: int, n_nodes: int, params: PlacementParams) -> ClusterView:
    """A random fleet: servers in every state, some overfull GPUs, held requests, priorities,
    activities known or not, recent moves and idle times around the park thresholds."""
    rng = random.Random(seed)
    models: list[ModelDemand] = []
    servers: list[ServerView] = []
    for i in range(n_models):
        shape, tp = rng.choice(SHAPES)
        if tp > n_gpus:
            tp = 1
            shape = "llama-3.2-1b"
        c = COSTS[(shape, tp)] if (shape, tp) in COSTS else server_cost(load_shape(shape), tp)
        name = f"m{i:03d}"
        for k in range(rng.choice((0, 1, 1, 2, 3))):
            gpus = tuple(sorted(rng.sample(range(n_gpus), tp)))
            state = rng.choice(STATES)
            servers.append(
                ServerView(
                    f"{name}#{k}",
                    name,
                    gpus,
                    state,
                    kv_used_bytes=rng.choice((0, int(c.kv_floor_bytes * 2 * rng.random()))),
                    in_flight=rng.choice((0, 0, rng.randrange(1, 6))),
                )
            )
        models.append(
            ModelDemand(
                name,
                tp,
                c,
                tpot_slo_s=rng.choice((0.01, 0.02 + 0.1 * rng.random())),
                token_rate=rng.choice((0.0, rng.expovariate(1 / 500))),
                queued=rng.choice((0, 0, rng.randrange(1, 5))),
                running=rng.choice((0, 0, rng.randrange(1, 5))),
                last_active_at=rng.choice((None, -rng.uniform(0, 120))),
                idle_park_s=rng.choice((0.0, 45.0, 10.0)),
                park_when=rng.choice(("needed", "needed", "always", "never")),
                priority=rng.choice((0, 0, 1, -1)),
                last_moved_at=rng.choice((None, -rng.uniform(0, 300))),
                oldest_wait_s=rng.choice((0.0, 12.0, 30.0, 90.0)),
                request_rate=rng.choice((0.0, 0.5, 1.0, rng.uniform(0, 8))),
                step_s=rng.choice((0.0, 0.03 * rng.random())),
                activity=rng.choice((None, rng.random(), 1.5, -0.1)),
            )
        )
    per_node = max(1, n_gpus // n_nodes)
    gpu_node = tuple(g // per_node for g in range(n_gpus)) if n_nodes > 1 else ()
    gpu_bytes = tuple(int(rng.choice((24, 40, 80)) * GIB) for _ in range(n_gpus))
    return ClusterView(tuple(models), tuple(servers), gpu_bytes, params, gpu_node)


params_st = st.builds(
    PlacementParams,
    tau=st.sampled_from((0.0, 0.3)),
    migrate=st.booleans(),
    max_migrations=st.integers(0, 3),
    migration_parks_idle=st.booleans(),
    starvation_s=st.sampled_from((10.0, 1e9)),
    starvation_max_s=st.sampled_from((60.0, 20.0, 1e9)),
    tpot_guard=st.booleans(),
    cold_start=st.booleans(),
    gpu_reserve_bytes=st.sampled_from((0, 2 * GIB)),
    candidates=st.integers(1, 8),
    max_awake_per_gpu=st.sampled_from((None, None, 1, 2)),
)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_models=st.integers(1, 40),
    n_gpus=st.integers(1, 16),
    n_nodes=st.integers(1, 4),
    params=params_st,
    now=st.sampled_from((0.0, 30.0, 500.0)),
)
def test_optimized_decision_equals_reference(
    seed: int, n_models: int, n_gpus: int, n_nodes: int, params: PlacementParams, now: float
) -> None:
    view = fleet(seed, n_models, n_gpus, n_nodes, params)
    assert place.decide(view, now) == ref_place.decide(view, now)


def starving_fleet(seed: int, n_models: int, params: PlacementParams) -> ClusterView:
    """One or two full GPUs: every model but the waiting ones awake and busy, with request
    rates above and below those of the models whose held requests waited past the guard."""
    rng = random.Random(seed)
    n_gpus = rng.choice((1, 1, 2))
    models: list[ModelDemand] = []
    servers: list[ServerView] = []
    for i in range(n_models):
        shape, tp = rng.choice(SHAPES[:3])
        c = COSTS[(shape, tp)]
        name = f"m{i:03d}"
        waiting = i < rng.choice((1, 1, 2))
        g = rng.randrange(n_gpus)
        servers.append(
            ServerView(
                f"{name}#0",
                name,
                (g,),
                S.PARKED if waiting else rng.choice((S.AWAKE, S.AWAKE, S.AWAKE, S.PARKED)),
                kv_used_bytes=int(c.kv_floor_bytes * 2 * rng.random()),
                in_flight=0 if waiting else rng.choice((0, rng.randrange(1, 6))),
            )
        )
        models.append(
            ModelDemand(
                name,
                tp,
                c,
                tpot_slo_s=0.05,
                token_rate=rng.choice((0.0, rng.expovariate(1 / 500))),
                queued=rng.randrange(1, 9) if waiting else 0,
                running=0 if waiting else rng.randrange(0, 4),
                last_active_at=-rng.uniform(0, 60),
                priority=rng.choice((0, 0, 0, 1)),
                oldest_wait_s=rng.choice((5.0, 12.0, 30.0, 90.0)) if waiting else 0.0,
                request_rate=rng.choice((0.0, 0.2, 1.0, rng.uniform(0, 4))),
            )
        )
    gpu_bytes = tuple(int(rng.choice((24, 40, 80)) * GIB) for _ in range(n_gpus))
    return ClusterView(tuple(models), tuple(servers), gpu_bytes, params)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_models=st.integers(3, 12), params=params_st)
def test_equal_where_starving_models_preempt_busy_neighbours(seed: int, n_models: int, params: PlacementParams) -> None:
    """The starvation guard's path, which the random fleets above rarely reach: full GPUs, busy
    neighbours busier and quieter than the models whose requests waited."""
    view = starving_fleet(seed, n_models, params)
    assert place.decide(view, 30.0) == ref_place.decide(view, 30.0)


def test_equal_at_microbench_scale() -> None:
    """The microbench's busy snapshot, smaller: thousands of servers through both."""
    from bench.sim.microbench import snapshot

    view = snapshot(2000, 512, seed=3, n_nodes=64)
    got, want = place.decide(view, 0.0), ref_place.decide(view, 0.0)
    assert got == want
    assert got.actions and got.blocked  # the snapshot exercises activations and blocking


def test_bad_servers_are_refused_with_a_message() -> None:
    base = fleet(1, 3, 2, 1, PlacementParams())
    m = base.models[0].name
    for gpus, msg in (((), "has no GPU"), ((0, 5), "is on GPU 5, the snapshot has 2 GPUs"), ((-1,), "is on GPU -1")):
        view = ClusterView(base.models, (ServerView("bad", m, gpus, S.AWAKE),), base.gpu_bytes)
        with pytest.raises(ValueError, match=msg):
            place.decide(view, 0.0)


def test_the_collector_is_left_as_it_was() -> None:
    """decide pauses the cyclic collector while it runs and restores it, enabled or not."""
    import gc

    view = fleet(2, 10, 4, 1, PlacementParams())
    assert gc.isenabled()
    place.decide(view, 0.0)
    assert gc.isenabled()
    gc.disable()
    try:
        place.decide(view, 0.0)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_charges_are_computed_for_models_in_use_only() -> None:
    """A parked server charges its context only: its model's charge is computed once it is woken
    or weighed, and the TPOT bound counts the models charged so far."""
    from orchestrator.policy.placement.kvpr import GpuTally

    c = COSTS[("llama-3.2-1b", 1)]
    models = (
        ModelDemand("busy", 1, c, tpot_slo_s=0.05, token_rate=100.0, step_s=0.01, activity=0.5),
        ModelDemand("idle", 1, c, tpot_slo_s=0.02, token_rate=0.0, step_s=0.03, activity=0.0),
    )
    servers = (ServerView("b", "busy", (0,), S.AWAKE), ServerView("i", "idle", (1,), S.PARKED))
    led = GpuTally(ClusterView(models, servers, (int(80 * GIB),) * 2))
    assert set(led.charges) == {"busy"}
    assert (led.charges.rest_max, led.charges.slo_min) == (0.005, 0.05)
    assert led.room[1] == 80 * GIB - c.parked_bytes  # the parked server's context is charged all the same
    led.set_state("i", S.WAKING)
    assert set(led.charges) == {"busy", "idle"}
    assert (led.charges.rest_max, led.charges.slo_min) == (0.03, 0.02)
