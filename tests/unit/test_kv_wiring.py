"""Which instances get cumem_shim and how it reaches the server: the start-up limit and virtual
range, the environment and argv of the sglang and sim engines, and the ledger's view of live
instances (fixed pools counted as non-KV memory)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from cumem_shim import plugin
from cumem_shim import settings as shim_env
from orchestrator.config import GIB, Config, parse_config
from orchestrator.engines.base import LaunchRequest, ShimLaunch
from orchestrator.engines.simulated import SimEngine
from orchestrator.env import Env
from orchestrator.kv.wiring import (
    START_LIMIT_BYTES,
    ceiling_bytes,
    kv_instances,
    shim_launch,
    shim_refusal,
    wants_shim,
)
from orchestrator.perf.cost import AWAKE_OVERHEAD_BYTES
from orchestrator.sglang.launch import SGLangEngine
from orchestrator.types import InstanceState, InstanceView


def config(*placements: dict[str, Any], mode: str = "elastic") -> Config:
    models = [
        {"name": "small", "model_path": "meta-llama/Llama-3.2-1B-Instruct",
         "placements": [placements[0]]},
        {"name": "big", "model_path": "meta-llama/Llama-3.1-8B-Instruct", "tp_size": 2,
         "placements": [{"gpus": [0, 1], "kv_pool_gb": 6}]},
    ]
    return parse_config({"mode": mode, "host": {"gpus": 2}, "models": models}, gpu_count=2)


def test_tp1_gets_the_shim_tp2_keeps_a_fixed_pool_and_static_mode_none() -> None:
    cfg = config({"gpus": [0]})
    small, big = cfg.instances
    assert wants_shim("elastic", small) and wants_shim("full", small)
    assert not wants_shim("static", small)
    assert not wants_shim("full", big) and "TP 2" in (shim_refusal(big) or "")


def test_ceiling_is_kv_pool_gb_else_the_gpu_left_beside_weights() -> None:
    with_pool = config({"gpus": [0], "kv_pool_gb": 12}).instances[0]
    assert ceiling_bytes(with_pool, with_pool_host := config({"gpus": [0]}).host) == 12 * GIB
    bare = config({"gpus": [0]}).instances[0]
    expected = 80 * GIB - bare.model.shape.weight_bytes - AWAKE_OVERHEAD_BYTES
    assert ceiling_bytes(bare, with_pool_host) == expected


@pytest.mark.parametrize(("placement", "start"), [
    ({"gpus": [0], "kv_pool_gb": 12}, START_LIMIT_BYTES),
    ({"gpus": [0], "kv_pool_gb": 12, "kv_floor_gb": 3}, 3 * GIB),  # the floor from the start
    ({"gpus": [0], "kv_pool_gb": 0.5}, GIB // 2),  # never above the ceiling
])
def test_start_limit(placement: dict[str, Any], start: int) -> None:
    cfg = config(placement)
    s = shim_launch(cfg.instances[0], cfg.host, "/tmp/x.sock", None)
    assert s.limit_bytes == start and s.virtual_kv_bytes == ceiling_bytes(cfg.instances[0],
                                                                          cfg.host)


def test_sglang_server_with_the_shim_has_its_env_and_no_kv_flag(tmp_path: Any) -> None:
    cfg = config({"gpus": [0], "kv_pool_gb": 12})
    inst = cfg.instances[0]
    ep = str(plugin.entry_point_dir(tmp_path / "ep"))
    shim = ShimLaunch("/tmp/chimera-1-2.sock", GIB, 12 * GIB, ep)
    spec = SGLangEngine(Env.read()).launch_spec(LaunchRequest(inst, cfg.host, 30001, 40001,
                                                              shim=shim))
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
    small, big = cfg.instances
    specs = {i.id: i for i in cfg.instances}
    views = [view(small.id, (0,), InstanceState.PARKED), view(big.id, (0, 1), InstanceState.AWAKE)]
    got = kv_instances(views, specs, {small.id: object()}, cfg.host)
    by = {(k.id, k.gpu): k for k in got}
    assert set(by) == {(small.id, 0), (big.id, 0), (big.id, 1)}
    s = by[small.id, 0]
    assert not s.resident and s.floor_bytes == 2 * GIB and s.ceiling_bytes == 12 * GIB
    assert s.weight_bytes == small.model.shape.weight_bytes
    # the TP 2 instance holds half its weights and half its fixed 6 GiB pool on each GPU
    b = by[big.id, 1]
    assert b.resident and b.weight_bytes == (big.model.shape.weight_bytes + 6 * GIB) // 2
    gone = kv_instances([view(small.id, (0,), InstanceState.FAILED)], specs, {}, cfg.host)
    assert gone == []


def test_parking_holds_weights_and_a_fixed_pool_without_kv_pool_gb_is_counted() -> None:
    cfg = parse_config({"mode": "elastic", "host": {"gpus": 2}, "models": [
        {"name": "small", "model_path": "meta-llama/Llama-3.2-1B-Instruct",
         "placements": [{"gpus": [0]}]},
        {"name": "big", "model_path": "meta-llama/Llama-3.1-8B-Instruct", "tp_size": 2,
         "placements": [{"gpus": [0, 1]}]}]}, gpu_count=2)
    small, big = cfg.instances
    specs = {i.id: i for i in cfg.instances}
    got = {(k.id, k.gpu): k for k in kv_instances(
        [view(small.id, (0,), InstanceState.PARKING), view(big.id, (0, 1), InstanceState.AWAKE)],
        specs, {small.id}, cfg.host)}
    s = got[small.id, 0]
    assert not s.resident and s.holds_weights
    # SGLang's default fraction of each GPU, less the weights, is the TP 2 server's pool
    assert got[big.id, 0].weight_bytes >= 0.5 * 80 * GIB - big.model.shape.weight_bytes // 2


def test_an_inherited_shim_environment_never_reaches_a_server_without_the_shim(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shim_env.SOCKET, "/tmp/someone-elses.sock")
    monkeypatch.setenv(shim_env.LIMIT_BYTES, "1")
    cfg = config({"gpus": [0]})
    big = cfg.instances[1]
    spec = SGLangEngine(Env.read()).launch_spec(LaunchRequest(big, cfg.host, 30001, 40001))
    assert not shim_env.requested(spec.env) and shim_env.LIMIT_BYTES not in spec.env
