"""argv and environment of the ``sglang`` engine for several placements (no SGLang needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import GIB, Config, InstanceSpec, parse_config
from orchestrator.engines.base import LaunchRequest, LaunchSpec, get_engine
from orchestrator.env import Env
from orchestrator.errors import ConfigError
from orchestrator.sglang.detect import cuda_gpu_count, sglang_available
from orchestrator.sglang.launch import SGLangEngine, kv_bytes_per_token_group
from orchestrator.shapes import shape_dir

H100_ARGS = "--attention-backend triton --sampling-backend pytorch --grammar-backend none"


def config(*models: dict[str, Any], gpus: int = 4) -> Config:
    return parse_config({"models": list(models), "host": {"gpus": gpus}}, gpu_count=gpus)


def model(name: str, path: str, gpus: list[int], **extra: Any) -> dict[str, Any]:
    placement = {"gpus": gpus, **extra.pop("placement", {})}
    return {"name": name, "model_path": path, "tp_size": len(gpus), "placements": [placement], **extra}


def spec(
    inst: InstanceSpec,
    cfg: Config,
    port: int = 30001,
    nccl: int = 40001,
    kv_bytes: int | None = None,
    engine: SGLangEngine | None = None,
) -> LaunchSpec:
    req = LaunchRequest(instance=inst, host=cfg.host, port=port, nccl_port=nccl, kv_bytes=kv_bytes)
    return (engine or SGLangEngine(Env.read())).launch_spec(req)


def flag(argv: tuple[str, ...], name: str) -> str:
    assert argv.count(name) == 1, f"{name} appears {argv.count(name)} times in {argv}"
    return argv[argv.index(name) + 1]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHIMERA_SGLANG_ARGS", raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/should-not-leak")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")


def test_tp1_placement_argv_and_env() -> None:
    cfg = config(model("tiny", "tiny-llama", [1], load_format="dummy"))
    s = spec(cfg.instances[0], cfg)
    assert s.argv[:3] == (sys.executable, "-m", "sglang.launch_server")
    assert flag(s.argv, "--model-path") == str(shape_dir("tiny-llama"))
    assert flag(s.argv, "--served-model-name") == "tiny"
    assert flag(s.argv, "--host") == "127.0.0.1"
    assert flag(s.argv, "--port") == "30001"
    assert flag(s.argv, "--tp-size") == "1"
    assert flag(s.argv, "--base-gpu-id") == "0"
    assert flag(s.argv, "--nccl-port") == "40001"
    assert flag(s.argv, "--load-format") == "dummy"
    for f in ("--enable-metrics", "--enable-memory-saver", "--enable-weights-cpu-backup", "--sleep-on-idle"):
        assert f in s.argv
    assert s.env["CUDA_VISIBLE_DEVICES"] == "1"
    assert s.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "PROMETHEUS_MULTIPROC_DIR" not in s.env
    assert s.env["TMS_RETAIN_CPU_BACKUP"] == "1" and s.env["PYTHONUNBUFFERED"] == "1"
    assert "SGLANG_ENABLE_TP_MEMORY_INBALANCE_CHECK" not in s.env  # one GPU: nothing to balance
    assert s.base_url == "http://127.0.0.1:30001"
    assert s.served_name == "tiny"
    assert s.ready_timeout_s == 600


def test_tp2_placement_pins_both_gpus_and_disables_the_balance_check() -> None:
    cfg = config(model("big", "meta-llama/Llama-3.1-8B-Instruct", [3, 1], load_format="dummy"))
    s = spec(cfg.instances[0], cfg)
    assert s.env["CUDA_VISIBLE_DEVICES"] == "3,1"  # rank 0 on GPU 3, rank 1 on GPU 1
    assert flag(s.argv, "--tp-size") == "2"
    assert flag(s.argv, "--base-gpu-id") == "0"
    assert s.env["SGLANG_ENABLE_TP_MEMORY_INBALANCE_CHECK"] == "0"
    assert flag(s.argv, "--model-path") == str(shape_dir("llama-3.1-8b"))


def test_kv_bytes_from_the_ledger_sets_max_total_tokens() -> None:
    cfg = config(model("m", "meta-llama/Llama-3.1-8B", [0], placement={"kv_pool_gb": 1}))
    inst = cfg.instances[0]
    per_token = inst.model.shape.kv_bytes_per_token  # 131072 B for Llama-3.1-8B
    s = spec(inst, cfg, kv_bytes=10 * GIB)
    assert flag(s.argv, "--max-total-tokens") == str(10 * GIB // per_token)  # ledger wins
    assert "--mem-fraction-static" not in s.argv


def test_kv_pool_gb_is_gib_and_counts_the_whole_tp_group() -> None:
    cfg = config(model("m", "meta-llama/Llama-3.1-8B", [0, 1], placement={"kv_pool_gb": 20}))
    inst = cfg.instances[0]
    s = spec(inst, cfg)
    assert flag(s.argv, "--max-total-tokens") == str(20 * GIB // 131072)
    assert "--mem-fraction-static" not in s.argv


def test_kv_heads_replicated_beyond_their_count_cost_more_per_token() -> None:
    cfg = config(model("m", "tiny-llama", [0, 1, 2, 3], load_format="dummy"))
    m = cfg.models[0]  # 4 KV heads on 4 ranks: one head each, nothing replicated
    assert kv_bytes_per_token_group(m) == m.shape.kv_bytes_per_token
    wide = parse_config({"models": [model("w", "tiny-llama", list(range(8)))]}, gpu_count=8)
    w = wide.models[0]
    assert kv_bytes_per_token_group(w) == 2 * w.shape.kv_bytes_per_token  # 8 ranks, 4 heads


def test_no_size_falls_back_to_a_fraction_that_fits_the_weights() -> None:
    cfg = config(
        model("small", "meta-llama/Llama-3.2-1B", [0]),
        model("huge", "meta-llama/Llama-3.3-70B-Instruct", [0, 1], placement={"on": False}),
    )
    small = spec(cfg.instances[0], cfg)
    assert flag(small.argv, "--mem-fraction-static") == "0.500"
    assert "--max-total-tokens" not in small.argv
    huge = spec(cfg.instances[1], cfg, port=30002, nccl=40002)
    frac = float(flag(huge.argv, "--mem-fraction-static"))  # ~66 GiB of weights per 80 GB GPU
    assert 0.9 >= frac > cfg.models[1].shape.weight_bytes / 2 / (80 * GIB)


def test_model_path_is_kept_unless_dummy_weights_of_a_known_shape() -> None:
    cfg = config(
        model("real", "meta-llama/Llama-3.1-8B-Instruct", [0]),
        model("dir", str(shape_dir("qwen2.5-7b")), [1], load_format="dummy"),
    )
    real = spec(cfg.instances[0], cfg)
    assert flag(real.argv, "--model-path") == "meta-llama/Llama-3.1-8B-Instruct"
    assert "--load-format" not in real.argv
    d = spec(cfg.instances[1], cfg, port=30002, nccl=40002)
    assert flag(d.argv, "--model-path") == str(shape_dir("qwen2.5-7b"))


def test_local_directory_with_dummy_weights_is_passed_as_given(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(json.loads((shape_dir("tiny-llama") / "config.json").read_text())))
    cfg = config(model("mine", str(tmp_path), [0], load_format="dummy"))
    assert flag(spec(cfg.instances[0], cfg).argv, "--model-path") == str(tmp_path)


def test_engine_args_and_global_extra_args_are_appended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIMERA_SGLANG_ARGS", H100_ARGS + " --log-level 'warning'")
    cfg = config(
        model(
            "m",
            "tiny-llama",
            [0],
            load_format="dummy",
            engine_args=["--chunked-prefill-size", "4096", "--log-level", "info"],
        )
    )
    s = spec(cfg.instances[0], cfg, engine=SGLangEngine())  # reads the environment itself
    tail = s.argv[-12:]
    assert tail == (
        "--attention-backend",
        "triton",
        "--sampling-backend",
        "pytorch",
        "--grammar-backend",
        "none",
        "--log-level",
        "warning",
        "--chunked-prefill-size",
        "4096",
        "--log-level",
        "info",
    )


def test_prefill_graphs_are_off_unless_the_model_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(model("m", "tiny-llama", [0], load_format="dummy"))
    assert s_argv_count(spec(cfg.instances[0], cfg), "--disable-prefill-cuda-graph") == 1
    for own in (["--cuda-graph-max-bs-prefill", "512"], ["--cuda-graph-backend-prefill=breakable"]):
        cfg = config(model("m", "tiny-llama", [0], load_format="dummy", engine_args=own))
        assert s_argv_count(spec(cfg.instances[0], cfg), "--disable-prefill-cuda-graph") == 0, own
    monkeypatch.setenv("CHIMERA_SGLANG_ARGS", "--cuda-graph-max-bs-prefill 256")  # every model's
    cfg = config(model("m", "tiny-llama", [0], load_format="dummy"))
    assert s_argv_count(spec(cfg.instances[0], cfg, engine=SGLangEngine()), "--disable-prefill-cuda-graph") == 0


def s_argv_count(s: LaunchSpec, name: str) -> int:
    return s.argv.count(name)


def test_managed_flags_in_passthrough_args_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(model("m", "tiny-llama", [0], engine_args=["--port=1234"]))
    with pytest.raises(ConfigError, match=r"m\.engine_args: --port is set by chimera"):
        spec(cfg.instances[0], cfg)
    monkeypatch.setenv("CHIMERA_SGLANG_ARGS", "--tp-size 2")
    cfg = config(model("m", "tiny-llama", [0]))
    with pytest.raises(ConfigError, match="CHIMERA_SGLANG_ARGS: --tp-size"):
        spec(cfg.instances[0], cfg, engine=SGLangEngine())


def test_bad_quoting_in_chimera_sglang_args_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIMERA_SGLANG_ARGS", "--log-level 'warning")
    with pytest.raises(ValueError, match="CHIMERA_SGLANG_ARGS"):
        Env.read()


def test_colocated_instances_get_distinct_ports_and_the_same_gpu() -> None:
    cfg = config(model("a", "tiny-llama", [0]), model("b", "meta-llama/Llama-3.2-1B", [0]))
    specs = [spec(inst, cfg, port=30001 + i, nccl=40001 + i) for i, inst in enumerate(cfg.instances)]
    assert len({flag(s.argv, "--nccl-port") for s in specs}) == 2
    assert len({flag(s.argv, "--port") for s in specs}) == 2
    assert {s.env["CUDA_VISIBLE_DEVICES"] for s in specs} == {"0"}


def test_get_engine_returns_the_sglang_engine() -> None:
    assert get_engine("sglang").name == "sglang"


def test_detection_never_raises_on_a_cpu_host() -> None:
    assert isinstance(sglang_available(), bool)
    assert cuda_gpu_count() >= 0
