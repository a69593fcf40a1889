"""Fast fleet start: the absolute memory a server is started with (orchestrator/deployment.py
``start_mem``), the SGLang flags it becomes, the footprint check and the start-up phases read
from an engine log."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import GIB, parse_config
from orchestrator.config.spec import flag_int
from orchestrator.deployment import (
    EXPECTED_TOKENS_PER_SEQUENCE,
    MAX_CUDA_GRAPH_MAX_BS,
    MIN_CUDA_GRAPH_MAX_BS,
    REQUEST_SLOTS_PER_GRAPH_BS,
    cuda_graph_max_bs,
    derive,
    kv_share,
)
from orchestrator.engines.base import LaunchRequest
from orchestrator.env import Env
from orchestrator.perf.cost import server_cost
from orchestrator.perf.model import request_slots
from orchestrator.sglang.launch import SGLangEngine, kv_bytes_per_token_group
from orchestrator.shapes import load_shape
from orchestrator.supervisor.memory import MemoryReading, overshoot
from orchestrator.supervisor.phases import PHASES, LogFollower, StartupRecord

SHAPES = ("llama-3.1-8b", "qwen2.5-7b", "llama-3.2-3b", "llama-3.2-1b")


def fleet(mode: str, gpu_memory_gb: float = 80, kv: float = 2) -> Any:
    return parse_config(
        {
            "mode": mode,
            "host": {"gpus": 1, "gpu_memory_gb": gpu_memory_gb},
            "models": [
                {
                    "name": f"m{i}",
                    "model_path": s,
                    "load_format": "dummy",
                    "placements": [{"gpus": [0], "kv_pool_gb": kv}],
                }
                for i, s in enumerate(SHAPES)
            ],
        },
        gpu_count=1,
    )


def _launch(f: Any, host: Any) -> LaunchRequest:
    """The launch request of an instance as the supervisor makes it (no shim)."""
    return LaunchRequest(
        instance=f.spec,
        host=host,
        port=30001,
        nccl_port=40001,
        max_total_tokens=f.max_total_tokens,
        mem_fraction_static=f.launch_mem_fraction,
        cuda_graph_max_bs=f.cuda_graph_max_bs,
        max_running_requests=f.max_running_requests,
    )


def flag(argv: tuple[str, ...], name: str) -> str:
    assert argv.count(name) == 1, f"{name} appears {argv.count(name)} times"
    return argv[argv.index(name) + 1]


def test_a_fixed_pool_is_given_in_tokens_with_a_fraction_that_holds_beside_the_others() -> None:
    for gpu_gb in (80.0, 141.0):
        dep = derive(fleet("static", gpu_gb))
        for f in dep.instances.values():
            assert f.max_total_tokens == 2 * GIB // kv_bytes_per_token_group(f.spec.model)
            frac = f.launch_mem_fraction
            assert frac is not None and not f.start_alone
            # SGLang's profile, worst case: the others' whole budgets loaded before its second
            # reading, its own pool, graphs and activations not yet; on a card of the file's size
            # or larger, rest = after - before * (1 - frac) still covers the pool
            others = sum(o.start_budget_bytes for o in dep.instances.values() if o is not f)
            assert others + f.start_budget_bytes <= dep.gpu_bytes  # the deployment fits
            for card in (dep.gpu_bytes, 2 * dep.gpu_bytes):
                before = card - f.cost.parked_bytes
                after = before - f.spec.model.shape.weight_bytes - others
                assert after - before * (1 - frac) >= f.fixed_pool_bytes


def test_the_budget_is_computed_from_the_file_not_the_card() -> None:
    small, large = derive(fleet("static", 80)), derive(fleet("static", 141))
    for iid, f in small.instances.items():
        assert f.start_budget_bytes == large.instances[iid].start_budget_bytes  # same pools
        assert f.start_budget_bytes == f.cost.held_awake_bytes + 2 * GIB
        assert f.launch_mem_fraction is not None and large.instances[iid].launch_mem_fraction is not None
        assert f.launch_mem_fraction < large.instances[iid].launch_mem_fraction


def test_with_the_shim_no_kv_flag_and_the_start_limit_is_the_budget() -> None:
    dep = derive(fleet("elastic"))
    for f in dep.instances.values():
        assert f.shim and f.max_total_tokens is None and f.launch_mem_fraction is None
        assert f.start_budget_bytes == f.cost.held_awake_bytes + f.start_limit_bytes


def test_serial_starts_make_every_instance_start_alone() -> None:
    assert all(f.start_alone for f in derive(fleet("static"), serial_starts=True).instances.values())
    assert not any(f.start_alone for f in derive(fleet("static")).instances.values())


def test_cuda_graph_batch_sizes_follow_the_expected_concurrency() -> None:
    assert cuda_graph_max_bs(0) == MIN_CUDA_GRAPH_MAX_BS
    assert cuda_graph_max_bs(100 * EXPECTED_TOKENS_PER_SEQUENCE) == 128  # 100 sequences
    assert cuda_graph_max_bs(20 * EXPECTED_TOKENS_PER_SEQUENCE) == MIN_CUDA_GRAPH_MAX_BS == 32
    assert cuda_graph_max_bs(10**9) == MAX_CUDA_GRAPH_MAX_BS
    # four 60 GB pools fit only a larger GPU beside their weights (check_static_pools)
    small, big = derive(fleet("static", 300, kv=1)), derive(fleet("static", 300, kv=60))
    assert small.instances["m0@gpu0"].cuda_graph_max_bs < big.instances["m0@gpu0"].cuda_graph_max_bs


def _shapes_on_one_gpu(mode: str, gpu_gb: float, on: tuple[bool, ...] = (True,) * 4) -> Any:
    return parse_config(
        {
            "mode": mode,
            "host": {"gpus": 1, "gpu_memory_gb": gpu_gb},
            "models": [
                {"name": f"m{i}", "model_path": s, "load_format": "dummy", "placements": [{"gpus": [0], "on": o}]}
                for i, (s, o) in enumerate(zip(SHAPES, on, strict=True))
            ],
        },
        gpu_count=1,
    )


def test_shim_graphs_follow_the_kv_left_beside_the_gpus_other_servers() -> None:
    upper = {s: server_cost(load_shape(s)) for s in SHAPES}  # the cost kv_share counts
    # the four shapes on 64 GB: their weights and runtimes leave ~10 GiB, shared four ways
    dep = derive(_shapes_on_one_gpu("elastic", 64))
    left = 64 * GIB - sum(c.held_awake_bytes for c in upper.values())
    assert 0 < left < 16 * GIB
    for f in dep.instances.values():
        assert f.shim
        per_token = f.cost.kv_bytes_per_token
        assert f.cuda_graph_max_bs == cuda_graph_max_bs(max(f.floor_bytes, left // 4) // per_token)
        # sized from the virtual range shared four ways, as before: never smaller
        assert f.cuda_graph_max_bs <= cuda_graph_max_bs(f.ceiling_bytes // 4 // per_token)
    # and smaller for the shapes whose share is not at SGLang's own default already
    assert any(
        f.cuda_graph_max_bs < cuda_graph_max_bs(f.ceiling_bytes // 4 // f.cost.kv_bytes_per_token)
        for f in dep.instances.values()
    )
    # alone on an 80 GB GPU a 1B expects ~70 GiB of KV: SGLang's own default
    alone = derive(
        parse_config(
            {
                "mode": "elastic",
                "host": {"gpus": 1, "gpu_memory_gb": 80},
                "models": [
                    {"name": "m", "model_path": "llama-3.2-1b", "load_format": "dummy", "placements": [{"gpus": [0]}]}
                ],
            },
            gpu_count=1,
        )
    )
    assert alone.instances["m@gpu0"].cuda_graph_max_bs == MAX_CUDA_GRAPH_MAX_BS
    # mode full, one server awake and three started only to be parked: those count with their
    # context alone, and the KV is the awake one's
    full = derive(_shapes_on_one_gpu("full", 64, (True, False, False, False)))
    share = kv_share({i: replace(f, cost=upper[f.spec.model.shape.name]) for i, f in full.instances.items()}, 64 * GIB)
    parked = sum(c.parked_bytes for s, c in upper.items() if s != SHAPES[0])
    assert share == {0: 64 * GIB - upper[SHAPES[0]].held_awake_bytes - parked}


@pytest.mark.parametrize("mode", ["static", "elastic"])
def test_the_launch_carries_the_deployment_s_absolute_memory(mode: str) -> None:
    cfg = fleet(mode)
    dep = derive(cfg)
    f = dep.instances["m0@gpu0"]
    req = _launch(f, cfg.host)
    if mode == "elastic":
        from orchestrator.engines.base import ShimLaunch

        req = LaunchRequest(**{**req.__dict__, "shim": ShimLaunch("/tmp/s.sock", GIB, 10 * GIB)})
    argv = SGLangEngine(Env.read()).launch_spec(req).argv
    assert flag(argv, "--cuda-graph-max-bs") == str(f.cuda_graph_max_bs)
    if mode == "static":
        assert flag(argv, "--max-total-tokens") == str(f.max_total_tokens)
        assert flag(argv, "--mem-fraction-static") == f"{f.launch_mem_fraction:.3f}"
    else:  # the shim's virtual range sizes the pool: no KV flag at all
        assert "--max-total-tokens" not in argv and "--mem-fraction-static" not in argv
    assert flag(argv, "--max-running-requests") == str(f.max_running_requests)


def test_overshoot_counts_only_beyond_the_slack_and_only_per_process() -> None:
    budget = 20 * GIB
    assert overshoot(budget, MemoryReading(budget + 100 * 2**20, True)) == 0
    assert overshoot(budget, MemoryReading(budget + 2 * GIB, True)) == 2 * GIB
    assert overshoot(budget, MemoryReading(budget + 2 * GIB, False)) is None  # others in it


def test_phases_follow_the_log_marks_and_add_up(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    log.write_text("an earlier start: Load weight end. elapsed=1 s\n")
    follower = LogFollower.at_end(log)
    rec = StartupRecord("a@gpu0", "a", t0=100.0)
    rec.marks["spawned"] = 100.5
    with open(log, "a") as f:
        f.write("[2026] Load weight begin. avail mem=70 GB\n[2026] Load weight e")
    follower.poll(110.0)
    with open(log, "a") as f:  # the line completes later; a renamed graph line still matches
        f.write(
            "nd. elapsed=3 s\nKV Cache is allocated. #tokens: 8192\nCapture target decode CUDA graph end. elapsed=9 s\n"
        )
    follower.poll(113.0)
    rec.marks.update(follower.seen)
    rec.marks.update(ready=130.0, probed=131.0)
    ph = rec.phases()
    assert ph == {
        "spawn": 0.5,
        "init": 9.5,
        "weights": 3.0,
        "kv": 0.0,
        "graphs": 0.0,
        "ready": 17.0,
        "probe": 1.0,
        "total": 31.0,
        "first_park": None,
    }
    assert sum(v for k, v in ph.items() if k in dict(PHASES) and v is not None) == ph["total"]


def test_a_missing_mark_leaves_its_phase_empty_and_the_next_counts_from_the_last_seen() -> None:
    rec = StartupRecord("a@gpu0", "a", t0=0.0, marks={"spawned": 1.0, "weights_end": 5.0, "ready": 9.0, "probed": 10.0})
    ph = rec.phases()
    assert ph["init"] is None and ph["weights"] == 4.0 and ph["kv"] is None
    assert ph["ready"] == 4.0 and ph["total"] == 10.0


@pytest.mark.parametrize("mode", ["static", "elastic"])
def test_servers_get_request_slots_for_their_graphs_not_sglangs_thousands(mode: str) -> None:
    """SGLang derives a pool's request slots from its size (2,048-4,096 rows of the model's whole
    context, allocated at start; from a shim's virtual range up to twice a fixed pool's). The
    deployment passes those of the KV the server is sized for, at most 8x its graphs' largest
    batch, and charges the req_to_token pool of the slots passed."""
    dep = derive(_shapes_on_one_gpu(mode, 64))
    for f in dep.instances.values():
        shape = f.spec.model.shape
        assert f.pool_tokens is not None and f.max_running_requests is not None
        sglangs = request_slots(f.pool_tokens, shape.max_context)
        assert f.max_running_requests == min(sglangs, REQUEST_SLOTS_PER_GRAPH_BS * f.cuda_graph_max_bs)
        if mode == "static":  # SGLang keeps them within half a fixed pool: the figure passed is in force
            assert f.max_running_requests <= f.pool_tokens // 2
        # charged the slots it is started with, below what SGLang would have derived
        assert f.cost == server_cost(
            shape, 1, f.cost.kv_floor_bytes, f.cuda_graph_max_bs, f.pool_tokens, f.max_running_requests
        )
        derived = server_cost(shape, 1, f.cost.kv_floor_bytes, f.cuda_graph_max_bs, f.pool_tokens)
        assert f.cost.held_awake_bytes <= derived.held_awake_bytes
    # the 1B alone on its GPU is sized for thousands of sequences: SGLang's figure bounds it
    one_b = next(f for f in dep.instances.values() if f.spec.model.shape.name == "llama-3.2-1b")
    assert one_b.cuda_graph_max_bs == MAX_CUDA_GRAPH_MAX_BS
    assert one_b.max_running_requests == min(2048, request_slots(one_b.pool_tokens or 0, 131072))


@pytest.mark.parametrize("mode", ["static", "elastic"])
def test_a_models_own_graphs_and_slots_win_and_are_charged(mode: str) -> None:
    """engine_args that set --cuda-graph-max-bs or --max-running-requests win over chimera's
    figures (they come last on the command line): the deployment passes the same values and
    charges their graphs and req_to_token pool, not the ones it would have chosen."""
    raw: dict[str, Any] = {
        "mode": mode,
        "host": {"gpus": 1, "gpu_memory_gb": 80},
        "models": [
            {
                "name": "m",
                "model_path": "llama-3.1-8b",
                "load_format": "dummy",
                "engine_args": [
                    "--max-running-requests",
                    "512",
                    "--cuda-graph-max-bs=64",
                    "--max-running-requests=1024",
                ],
                "placements": [{"gpus": [0], "kv_pool_gb": 20}],
            }
        ],
    }
    f = derive(parse_config(raw, gpu_count=1)).instances["m@gpu0"]
    assert f.cuda_graph_max_bs == 64  # not the 256 a lone server gets
    assert f.pool_tokens is not None
    want = 1024 if mode == "elastic" else min(1024, f.pool_tokens // 2)
    assert f.max_running_requests == want
    shape = f.spec.model.shape
    assert f.cost == server_cost(shape, 1, f.cost.kv_floor_bytes, 64, f.pool_tokens, want)
    argv = SGLangEngine(Env.read()).launch_spec(_launch(f, parse_config(raw, gpu_count=1).host)).argv
    # chimera passes the model's own values; argparse keeps the last one, the same
    assert flag(argv, "--cuda-graph-max-bs") == "64" and "--cuda-graph-max-bs=64" in argv
    assert argv[argv.index("--max-running-requests") + 1] == str(want)  # chimera's, before the model's
    assert argv[-1] == "--max-running-requests=1024"


def test_flag_int_reads_a_flag_as_argparse_keeps_it() -> None:
    spec = parse_config(
        {
            "host": {"gpus": 1},
            "models": [
                {
                    "name": "m",
                    "model_path": "llama-3.2-1b",
                    "load_format": "dummy",
                    "engine_args": [
                        "--max-running-requests",
                        "8",
                        "--context-length=4096",
                        "--max-running-requests=16",
                    ],
                    "placements": [{"gpus": [0]}],
                }
            ],
        },
        gpu_count=1,
    ).models[0]
    assert flag_int(spec.engine_args, "--max-running-requests") == 16  # the last one
    assert flag_int(spec.engine_args, "--context-length") == 4096
    assert flag_int(spec.engine_args, "--cuda-graph-max-bs") is None
    assert flag_int(spec.engine_args, "--max-running") is None  # a prefix is not the flag


@pytest.mark.parametrize("mode", ["static", "elastic"])
def test_the_sim_engine_is_started_with_the_same_graphs_and_slots(mode: str) -> None:
    """The sim engine takes the deployment's --cuda-graph-max-bs (a larger decode batch runs
    eagerly, as in SGLang) and, with the shim, its --max-running-requests."""
    from orchestrator.engines.base import ShimLaunch
    from orchestrator.engines.simulated import SimEngine
    from simsglang.__main__ import build_parser

    cfg = fleet(mode)
    f = derive(cfg).instances["m0@gpu0"]
    req = LaunchRequest(
        instance=f.spec,
        host=cfg.host,
        port=30001,
        nccl_port=40001,
        shim=ShimLaunch("/tmp/s.sock", GIB, 10 * GIB) if mode == "elastic" else None,
        max_total_tokens=f.max_total_tokens,
        cuda_graph_max_bs=f.cuda_graph_max_bs,
        max_running_requests=f.max_running_requests,
    )
    argv = SimEngine().launch_spec(req).argv
    args = build_parser().parse_args(list(argv[3:]))  # after `python -m simsglang`
    assert args.cuda_graph_max_bs == f.cuda_graph_max_bs
    assert args.max_running_requests == f.max_running_requests
    assert args.max_running_requests is not None  # every server: its slots (deployment.max_running_requests)
