"""How cumem_shim reaches the server (the environment and argv of the sglang and sim engines)
and the ledger's view of live instances (fixed pools counted as non-KV memory). Which instances
get the shim, their ceilings and start-up limits: tests/unit/test_deployment.py."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest

from cumem_shim import plugin
from cumem_shim import settings as shim_env
from orchestrator.config import GIB, Config, parse_config
from orchestrator.deployment import derive
from orchestrator.engines.base import LaunchRequest, ShimLaunch
from orchestrator.engines.simulated import SimEngine
from orchestrator.env import Env
from orchestrator.kv.wiring import kv_instances
from orchestrator.sglang.launch import SGLangEngine
from orchestrator.types import InstanceState, InstanceView


def config(*placements: dict[str, Any], mode: str = "elastic") -> Config:
    models = [
        {"name": "small", "model_path": "meta-llama/Llama-3.2-1B-Instruct", "placements": [placements[0]]},
        {
            "name": "big",
            "model_path": "meta-llama/Llama-3.1-8B-Instruct",
            "tp_size": 2,
            "placements": [{"gpus": [0, 1], "kv_pool_gb": 6}],
        },
    ]
    return parse_config({"mode": mode, "host": {"gpus": 2}, "models": models}, gpu_count=2)


def test_sglang_server_with_the_shim_has_its_env_and_no_kv_flag(tmp_path: Any) -> None:
    cfg = config({"gpus": [0], "kv_pool_gb": 12})
    inst = cfg.instances[0]
    ep = str(plugin.entry_point_dir(tmp_path / "ep"))
    shim = ShimLaunch("/tmp/chimera-1-2.sock", GIB, 12 * GIB, ep)
    spec = SGLangEngine(Env.read()).launch_spec(LaunchRequest(inst, cfg.host, 30001, 40001, shim=shim))
    assert "--max-total-tokens" not in spec.argv and "--mem-fraction-static" not in spec.argv
    env = spec.env
    assert shim_env.requested(env)
    got = shim_env.read(env)  # what the plugin will read inside the server
    assert (got.socket, got.limit_bytes, got.virtual_kv_bytes) == (shim.socket, GIB, 12 * GIB)
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths[0] == ep and any(os.path.isdir(os.path.join(p, "cumem_shim")) for p in paths)
    # without the shim: the fixed pool flag, and nothing of the shim's
    plain = SGLangEngine(Env.read()).launch_spec(LaunchRequest(inst, cfg.host, 30001, 40001))
    assert "--max-total-tokens" in plain.argv and not shim_env.requested(plain.env)


def test_sim_server_with_the_shim_sizes_its_pool_by_the_virtual_range() -> None:
    cfg = config({"gpus": [0], "kv_pool_gb": 12})
    inst = cfg.instances[0]
    shim = ShimLaunch("/tmp/chimera-1-3.sock", GIB, 12 * GIB)
    spec = SimEngine().launch_spec(LaunchRequest(inst, cfg.host, 30001, 40001, shim=shim))
    tokens = int(spec.argv[spec.argv.index("--max-total-tokens") + 1])
    assert tokens == 12 * GIB // inst.model.shape.kv_bytes_per_token
    assert shim_env.read(spec.env).limit_bytes == GIB


def view(iid: str, gpus: tuple[int, ...], state: InstanceState) -> InstanceView:
    return InstanceView(iid, iid.split("@")[0], gpus, state, None)


def test_ledger_view_counts_fixed_pools_and_skips_gone_instances() -> None:
    cfg = config({"gpus": [0], "kv_pool_gb": 12, "kv_floor_gb": 2})
    dep = derive(cfg)
    small, big = cfg.instances
    views = [view(small.id, (0,), InstanceState.PARKED), view(big.id, (0, 1), InstanceState.AWAKE)]
    by = {(k.id, k.gpu): k for k in kv_instances(views, dep)}
    assert set(by) == {(small.id, 0), (big.id, 0), (big.id, 1)}
    s = by[small.id, 0]
    assert not s.resident and s.floor_bytes == 2 * GIB and s.ceiling_bytes == 12 * GIB
    assert s.awake_bytes == dep.instances[small.id].cost.held_awake_bytes  # no fixed pool
    # the TP 2 instance is shim-backed on both GPUs: its awake cost, its shard's token bytes
    b = by[big.id, 1]
    assert b.resident and b.awake_bytes == dep.instances[big.id].cost.held_awake_bytes
    assert b.token_bytes == big.model.shape.kv_bytes_per_token // 2 and b.ceiling_bytes == 3 * GIB
    assert kv_instances([view(small.id, (0,), InstanceState.FAILED)], dep) == []


def test_parking_holds_weights_and_a_fixed_pool_without_kv_pool_gb_is_counted() -> None:
    cfg = parse_config(
        {
            "mode": "static",
            "host": {"gpus": 2},
            "models": [
                {"name": "small", "model_path": "meta-llama/Llama-3.2-1B-Instruct", "placements": [{"gpus": [0]}]},
                {
                    "name": "big",
                    "model_path": "meta-llama/Llama-3.1-8B-Instruct",
                    "tp_size": 2,
                    "placements": [{"gpus": [0, 1]}],
                },
            ],
        },
        gpu_count=2,
    )
    small, big = cfg.instances
    dep = derive(cfg)
    got = {
        (k.id, k.gpu): k
        for k in kv_instances(
            [view(small.id, (0,), InstanceState.PARKING), view(big.id, (0, 1), InstanceState.AWAKE)], dep
        )
    }
    s = got[small.id, 0]
    assert not s.resident and s.holds_weights
    # mode static: SGLang's default fraction of each GPU, less the weights, is the TP 2 server's pool: counted
    # beside its runtime (context, graphs, activations)
    runtime = dep.instances[big.id].cost.held_awake_bytes - big.model.shape.weight_bytes // 2
    assert got[big.id, 0].awake_bytes >= 0.5 * 80 * GIB + runtime


def test_an_inherited_shim_environment_never_reaches_a_server_without_the_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shim_env.SOCKET, "/tmp/someone-elses.sock")
    monkeypatch.setenv(shim_env.LIMIT_BYTES, "1")
    cfg = config({"gpus": [0]})
    big = cfg.instances[1]
    spec = SGLangEngine(Env.read()).launch_spec(LaunchRequest(big, cfg.host, 30001, 40001))
    assert not shim_env.requested(spec.env) and shim_env.LIMIT_BYTES not in spec.env


def test_a_tp_sim_server_sizes_its_pool_by_the_virtual_range_of_each_gpu() -> None:
    """The virtual range is per GPU (each rank reserves it for its shard): a TP 2 sim pool holds
    as many tokens as a shard's bytes per token fit in it, so the shim's capacity times the
    ledger's per-GPU token bytes is the ceiling, not half of it."""
    cfg = config({"gpus": [0]})
    big = cfg.instances[1]
    facts = derive(cfg).instances[big.id]
    shim = ShimLaunch("/tmp/chimera-1-4.sock", GIB, facts.ceiling_bytes, tp_size=2)
    spec = SimEngine().launch_spec(LaunchRequest(big, cfg.host, 30001, 40001, shim=shim))
    tokens = int(spec.argv[spec.argv.index("--max-total-tokens") + 1])
    assert tokens == facts.ceiling_bytes // facts.cost.kv_bytes_per_token
    assert facts.ceiling_bytes - facts.cost.kv_bytes_per_token < tokens * facts.cost.kv_bytes_per_token


def test_a_wake_that_waits_for_room_counts_its_weights() -> None:
    """Parked with its wake due (control/plans.py WakeGate): no KV of its own yet (limit 0), but
    its weights count, so the ledger shrinks its neighbours before the wake."""
    cfg = config({"gpus": [0]}, mode="full")
    dep = derive(cfg)
    small = cfg.instances[0]
    parked = view(small.id, (0,), InstanceState.PARKED)
    (k,) = kv_instances([parked], dep)
    assert not k.resident and not k.holds_weights and not k.wake_due
    (due,) = kv_instances([replace(parked, wake_due=True)], dep)
    assert not due.resident and due.holds_weights and due.wake_due
