"""L2 contract tests: what chimera sends to SGLang exists in every supported release.

The lists come from the released wheels (orchestrator/sglang/contract/*.json, made by
``python -m orchestrator.sglang.contract.extract``); no SGLang install is needed.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from orchestrator.config import GIB, parse_config
from orchestrator.engines.base import LaunchRequest
from orchestrator.env import Env
from orchestrator.sglang.api import METRICS_READ, ROUTES_USED, ROUTES_USED_WITH_CUDA
from orchestrator.sglang.contract import (
    HERE,
    SUPPORTED_VERSIONS,
    Contract,
    ContractError,
    load_contract,
)
from orchestrator.sglang.launch import SGLangEngine

H100_ARGS = ("--attention-backend", "triton", "--sampling-backend", "pytorch", "--grammar-backend", "none")
CONTRACTS = [load_contract(v) for v in SUPPORTED_VERSIONS]


def flags_of(argv: tuple[str, ...]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def emitted_flags() -> set[str]:
    """Every flag SGLangEngine emits over a matrix of placements and settings."""
    out: set[str] = set()
    paths = ("tiny-llama", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct")
    for path, tp, load_format, kv_gb, kv_bytes in itertools.product(
        paths, (1, 2), ("auto", "dummy"), (None, 12.5), (None, 3 * GIB)
    ):
        placement: dict[str, Any] = {"gpus": list(range(tp))}
        if kv_gb is not None:
            placement["kv_pool_gb"] = kv_gb
        cfg = parse_config(
            {
                "models": [
                    {
                        "name": "m",
                        "model_path": path,
                        "tp_size": tp,
                        "load_format": load_format,
                        "placements": [placement],
                    },
                    {"name": "adapter", "base": "m", "adapter": "/adapters/a"},  # m starts with LoRA
                ]
            },
            gpu_count=2,
        )
        req = LaunchRequest(instance=cfg.instances[0], host=cfg.host, port=30001, nccl_port=40001, kv_bytes=kv_bytes)
        env = Env(run_dir=None, sim_speed=1.0, sim_start_delay_s=0.0, cache_dir="/tmp", sglang_extra_args=H100_ARGS)
        out.update(flags_of(SGLangEngine(env).launch_spec(req).argv))
    return out


def test_contract_files_are_well_formed_and_name_their_version() -> None:
    for version in SUPPORTED_VERSIONS:
        raw = json.loads((HERE / f"sglang-{version}.json").read_text())
        assert raw["version"] == version
        assert raw["wheel"].startswith(f"sglang-{version}-") and raw["wheel"].endswith(".whl")
        assert len(raw["sha256"]) == 64 and int(raw["sha256"], 16) >= 0
        assert raw["flags"] == sorted(set(raw["flags"]))
        assert all(f.startswith("--") for f in raw["flags"])
        assert set(raw["deprecated_flags"]) <= set(raw["flags"])
        assert len(raw["flags"]) > 400 and len(raw["routes"]) > 50 and len(raw["metrics"]) > 100
        for r in raw["routes"]:
            assert r["path"].startswith("/") and r["methods"], r
        for m in raw["metrics"]:
            assert m["name"].startswith("sglang:"), m
            assert m["type"] in {"counter", "gauge", "histogram", "summary", "info", "stateset"}
            assert not (m["type"] == "counter" and m["name"].endswith("_total")), m


def test_unknown_version_is_refused_with_the_supported_list() -> None:
    with pytest.raises(ContractError, match="0.5.17, 0.5.23"):
        load_contract("0.4.0")


@pytest.mark.parametrize("contract", CONTRACTS, ids=SUPPORTED_VERSIONS)
def test_every_flag_the_engine_emits_exists(contract: Contract) -> None:
    flags = emitted_flags()
    assert "--max-total-tokens" in flags and "--mem-fraction-static" in flags  # matrix covers both
    assert "--enable-lora" in flags and "--lora-target-modules" in flags
    missing = sorted(flags - contract.flags)
    assert not missing, f"SGLang {contract.version} has no flag(s) {missing}"
    deprecated = sorted(flags & contract.deprecated_flags)
    assert not deprecated, f"SGLang {contract.version} deprecates {deprecated}"


@pytest.mark.parametrize("contract", CONTRACTS, ids=SUPPORTED_VERSIONS)
def test_every_route_chimera_uses_is_served(contract: Contract) -> None:
    used = ROUTES_USED + ROUTES_USED_WITH_CUDA
    missing = [f"{r.method} {r.path}" for r in used if not contract.serves(r.path, r.method)]
    assert not missing, f"SGLang {contract.version} does not serve {missing}"


@pytest.mark.parametrize("contract", CONTRACTS, ids=SUPPORTED_VERSIONS)
def test_every_metric_chimera_reads_is_defined_with_its_type(contract: Contract) -> None:
    for name, kind in METRICS_READ.items():
        m = contract.metric(name)
        assert m is not None, f"SGLang {contract.version} defines no metric {name}"
        assert m.type == kind, f"SGLang {contract.version}: {name} is a {m.type}, not a {kind}"


def test_exposed_sample_names_follow_the_type() -> None:
    c = load_contract("0.5.17")

    def samples(name: str) -> tuple[str, ...]:
        m = c.metric(name)
        assert m is not None
        return m.samples

    assert samples("sglang:prompt_tokens") == ("sglang:prompt_tokens_total",)
    assert samples("sglang:num_running_reqs") == ("sglang:num_running_reqs",)
    assert "sglang:time_to_first_token_seconds_bucket" in samples("sglang:time_to_first_token_seconds")


def test_known_differences_between_the_releases_are_recorded() -> None:
    old, new = load_contract("0.5.17"), load_contract("0.5.23")
    assert old.serves("/get_load", "GET") and not new.serves("/get_load", "GET")
    assert new.serves("/ready", "GET") and not old.serves("/ready", "GET")
    assert "--cuda-graph-max-bs" in old.deprecated_flags and "--cuda-graph-max-bs" not in new.flags
    assert "--disable-cuda-graph" in old.flags & new.deprecated_flags
    assert not old.serves("/dumper/{method}", "POST")  # only with DUMPER_SERVER_PORT=reuse
