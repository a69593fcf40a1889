"""orchestrator.deployment: the runtime facts derived once from a placements file, and the one
cost model that placement and the KV ledger share."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.cli import plan
from orchestrator.config import GIB, Config, parse_config
from orchestrator.deployment import (
    MAX_MEM_FRACTION_STATIC,
    MIN_POOL_BYTES,
    START_LIMIT_BYTES,
    default_mem_fraction,
    derive,
)
from orchestrator.kv.ledger import non_kv_bytes
from orchestrator.kv.wiring import kv_instances
from orchestrator.perf.cost import DEFAULT_KV_FLOOR_TOKENS, server_cost
from orchestrator.perf.model import kv_bytes_per_token_per_gpu
from orchestrator.shapes import list_shapes, load_shape
from orchestrator.types import InstanceState, InstanceView


def config(
    *models: dict[str, Any], mode: str = "elastic", gpus: int = 2, gpu_memory_gb: float = 80, **extra: Any
) -> Config:
    return parse_config(
        {"mode": mode, "host": {"gpus": gpus, "gpu_memory_gb": gpu_memory_gb}, "models": list(models), **extra},
        gpu_count=gpus,
    )


def model(name: str, shape: str = "llama-3.2-1b", tp: int = 1, **kw: Any) -> dict[str, Any]:
    kw.setdefault("placements", [{"gpus": list(range(tp))}])
    return {"name": name, "model_path": shape, "tp_size": tp, **kw}


def view(iid: str, gpus: tuple[int, ...], state: InstanceState) -> InstanceView:
    return InstanceView(iid, iid.split("@")[0], gpus, state, None)


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("shape", list_shapes())
def test_ledger_and_placement_agree_on_a_servers_non_kv_bytes(shape: str, tp: int) -> None:
    """What the global scheduler plans with (its ClusterView's cost) is what the KV ledger keeps
    off its budget, awake and parked, for every shipped shape (a GPU large enough for any)."""
    cfg = config(model("m", shape, tp, placements=[{"gpus": list(range(tp)), "kv_pool_gb": 4}]), gpu_memory_gb=400)
    dep = derive(cfg)
    (inst,) = cfg.instances
    placed = plan.cluster_view(dep, {}, 0.0).models[0].cost
    # the shim backs every TP rank: nothing of its KV is fixed
    fixed = 0
    for state, expected in (
        (InstanceState.AWAKE, placed.parked_bytes + placed.awake_bytes + fixed),
        (InstanceState.PARKED, placed.parked_bytes),
    ):
        ledger = non_kv_bytes(kv_instances([view(inst.id, inst.gpus, state)], dep))
        assert ledger == {g: expected for g in inst.gpus}, state
    # and the awake part holds this rank's weights and more (graphs, activations)
    assert placed.awake_bytes > load_shape(shape).weight_bytes // tp


def test_tp1_and_tp2_get_the_shim_and_static_mode_none() -> None:
    models = (model("small"), model("big", "llama-3.1-8b", 2, placements=[{"gpus": [0, 1], "kv_pool_gb": 6}]))
    for mode in ("elastic", "full"):
        facts = derive(config(*models, mode=mode)).instances
        assert facts["small@gpu0"].shim and facts["small@gpu0"].fixed_pool_bytes == 0
        big = facts["big@gpu0+1"]
        assert big.shim and big.shim_refusal is None and big.fixed_pool_bytes == 0
        assert big.ceiling_bytes == 3 * GIB  # kv_pool_gb over the group: the shim's ceiling per GPU
    static = derive(config(*models, mode="static"))
    assert not static.ledger and static.shimmed() == frozenset()
    assert all(f.shim_refusal is None for f in static.instances.values())  # nothing to explain


def test_ceiling_is_kv_pool_gb_else_the_gpu_left_beside_the_servers_own_cost() -> None:
    pooled = derive(config(model("m", placements=[{"gpus": [0], "kv_pool_gb": 12}]))).instances["m@gpu0"]
    assert pooled.ceiling_bytes == 12 * GIB
    bare = derive(config(model("m"))).instances["m@gpu0"]
    upper = server_cost(load_shape("llama-3.2-1b"))  # the range is sized with the upper-bound cost
    assert bare.ceiling_bytes == 80 * GIB - upper.held_awake_bytes
    # a GPU the server (nearly) fills still leaves the least pool SGLang can start with
    tight = derive(config(model("m", "llama-3.1-8b"), gpu_memory_gb=18)).instances["m@gpu0"]
    assert tight.cost.held_awake_bytes > 18 * GIB - MIN_POOL_BYTES
    assert tight.ceiling_bytes == MIN_POOL_BYTES


@pytest.mark.parametrize(
    ("placement", "start"),
    [
        ({"gpus": [0], "kv_pool_gb": 12}, START_LIMIT_BYTES),
        ({"gpus": [0], "kv_pool_gb": 12, "kv_floor_gb": 3}, 3 * GIB),  # the floor from the start
        ({"gpus": [0], "kv_pool_gb": 0.5}, GIB // 2),  # never above the ceiling
    ],
)
def test_start_limit(placement: dict[str, Any], start: int) -> None:
    f = derive(config(model("m", placements=[placement]))).instances["m@gpu0"]
    assert f.start_limit_bytes == start <= f.ceiling_bytes


@pytest.mark.parametrize(
    ("mode", "on", "starts", "serves"),
    [
        ("full", True, True, True),
        ("full", False, True, False),  # started with the others, parked once awake and idle
        ("elastic", True, True, True),
        ("elastic", False, False, False),  # started on demand only
        ("static", False, False, False),
    ],
)
def test_what_up_does_with_an_instance(mode: str, on: bool, starts: bool, serves: bool) -> None:
    f = derive(config(model("m", placements=[{"gpus": [0], "on": on}]), mode=mode)).instances["m@gpu0"]
    assert (f.starts_on_up, f.serves_on_up) == (starts, serves)
    assert f.warm_start_park == (mode == "full" and not on)


def test_model_facts_slo_defaults_on_late_and_floor() -> None:
    cfg = config(
        model(
            "strict", slo={"ttft_s": 2.0}, placements=[{"gpus": [0], "kv_floor_gb": 1}, {"gpus": [1], "kv_floor_gb": 3}]
        ),
        model("loose", "llama-3.1-8b"),
    )
    facts = derive(cfg).models
    strict, loose = facts["strict"], facts["loose"]
    assert strict.ttft_slo_s == 2.0 and strict.on_late == "shed"
    # no objective in the file: the defaults order and weigh it, it is never shed
    assert (loose.ttft_slo_s, loose.tpot_slo_s) == (
        cfg.models[1].slo.ttft_or_default,
        cfg.models[1].slo.tpot_or_default,
    )
    assert loose.on_late == "serve"
    assert (
        derive(config(model("strict", slo={"ttft_s": 2.0}), scheduler={"on_late": "serve"})).models["strict"].on_late
        == "serve"
    )
    # the model's floor is its largest placement's; without one, the default in tokens
    assert strict.cost.kv_floor_bytes == 3 * GIB
    per_token = kv_bytes_per_token_per_gpu(load_shape("llama-3.1-8b"), 1)
    assert loose.cost.kv_floor_bytes == DEFAULT_KV_FLOOR_TOKENS * per_token
    # the model's cost is its server's as started (its CUDA graphs, its pool), never above the
    # cost model's upper bound for the shape
    started = next(f for f in derive(cfg).instances.values() if f.spec.model.name == "loose")
    assert loose.cost == started.cost
    assert loose.cost.held_awake_bytes <= server_cost(load_shape("llama-3.1-8b")).held_awake_bytes


def test_fixed_pool_without_kv_pool_gb_is_the_default_fraction_less_the_weights() -> None:
    cfg = config(model("big", "llama-3.1-8b", 2), mode="static")
    f = derive(cfg).instances["big@gpu0+1"]
    weights = load_shape("llama-3.1-8b").weight_bytes
    assert f.mem_fraction_static == default_mem_fraction(cfg.models[0], cfg.host)
    assert f.fixed_pool_bytes == int(f.mem_fraction_static * 80 * GIB * 2) - weights


def test_default_mem_fraction_is_raised_for_weights_that_would_not_fit_and_capped() -> None:
    small = config(model("s"))
    assert default_mem_fraction(small.models[0], small.host) == 0.5
    huge = config(model("h", "llama-3.3-70b", 2, placements=[{"gpus": [0, 1], "on": False}]))
    share = load_shape("llama-3.3-70b").weight_bytes / 2 / (80 * GIB)
    assert share > 0.5 and default_mem_fraction(huge.models[0], huge.host) == min(MAX_MEM_FRACTION_STATIC, share + 0.1)
