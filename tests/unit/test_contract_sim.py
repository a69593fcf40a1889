"""The sim engine against SGLang's contract, so the simulator cannot drift from the real server:
its routes, its ``sglang:`` metric families and its launch flags must all exist in every
supported SGLang release (lists extracted from the wheels, orchestrator/sglang/contract/)."""

from __future__ import annotations

from functools import cache

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route
from starlette.testclient import TestClient

from orchestrator.config import parse_config
from orchestrator.engines.base import LaunchRequest
from orchestrator.engines.simulated import SimEngine
from orchestrator.sglang.api import METRICS_READ, ROUTES_USED
from orchestrator.sglang.contract import SUPPORTED_VERSIONS, Contract, load_contract
from simsglang.server import SimSettings, create_app

CONTRACTS = [load_contract(v) for v in SUPPORTED_VERSIONS]


def sim_routes() -> dict[str, set[str]]:
    app = create_app(SimSettings.from_shape("tiny-llama"))
    out: dict[str, set[str]] = {}
    for r in app.routes:
        if isinstance(r, Route):
            out.setdefault(r.path, set()).update(r.methods or ())
    return out


@cache
def sim_metric_families() -> dict[str, str]:
    """``sglang:`` families (name -> type) on the sim's /metrics after one request."""
    app = create_app(SimSettings.from_shape("tiny-llama", speed=0.0))
    with TestClient(app) as client:  # as a context manager, so the lifespan runs
        gen = client.post("/generate", json={"text": "hello", "sampling_params": {"max_new_tokens": 4}})
        assert gen.status_code == 200, gen.text
        resp = client.get("/metrics")
        assert resp.status_code == 200, resp.text
        families = text_string_to_metric_families(resp.text)
        return {f.name: f.type for f in families if f.name.startswith("sglang:")}


def test_sim_serves_every_route_chimera_uses() -> None:
    routes = sim_routes()
    missing = [f"{r.method} {r.path}" for r in ROUTES_USED if r.method not in routes.get(r.path, ())]
    assert not missing, f"the sim engine does not serve {missing}"


@pytest.mark.parametrize("contract", CONTRACTS, ids=SUPPORTED_VERSIONS)
def test_every_sim_route_exists_in_sglang(contract: Contract) -> None:
    extra = sorted(
        f"{m} {p}" for p, methods in sim_routes().items() for m in methods if m != "HEAD" and not contract.serves(p, m)
    )
    # /get_load: SGLang 0.5.17 only (removed in 0.5.23); chimera itself uses /v1/loads.
    # /sim/...: the sim's own fault injection (bench/chaos), never called by chimera.
    assert all(e.endswith(" /get_load") or " /sim/" in e for e in extra), (
        f"the sim serves {extra}, which SGLang {contract.version} does not"
    )


def test_sim_exposes_every_metric_chimera_reads() -> None:
    families = sim_metric_families()
    missing = sorted(n for n in METRICS_READ if n not in families)
    assert not missing, f"the sim's /metrics lacks {missing}"
    wrong = sorted(f"{n} is a {families[n]}" for n, k in METRICS_READ.items() if n in families and families[n] != k)
    assert not wrong, f"the sim's /metrics types differ from SGLang's: {wrong}"


@pytest.mark.parametrize("contract", CONTRACTS, ids=SUPPORTED_VERSIONS)
def test_every_sim_metric_family_exists_in_sglang(contract: Contract) -> None:
    problems = []
    for name, kind in sorted(sim_metric_families().items()):
        m = contract.metric(name)
        if m is None and name.endswith("_created"):
            problems.append(
                f"{name}: SGLang runs prometheus_client in multiprocess mode, which "
                "exposes no _created samples (prometheus_client."
                "disable_created_metrics() turns them off)"
            )
        elif m is None:
            problems.append(f"{name}: not a metric of SGLang {contract.version}")
        elif m.type != kind:
            problems.append(f"{name}: exposed as a {kind}, SGLang {contract.version} has a {m.type}")
    assert not problems, "the sim's /metrics drifts from SGLang:\n" + "\n".join(problems)


@pytest.mark.parametrize("contract", CONTRACTS, ids=SUPPORTED_VERSIONS)
def test_sim_launch_flags_are_sglang_flags(contract: Contract) -> None:
    cfg = parse_config(
        {
            "models": [
                {
                    "name": "a",
                    "model_path": "tiny-llama",
                    "load_format": "dummy",
                    "placements": [{"gpus": [0], "kv_pool_gb": 2}],
                },
                {"name": "b", "model_path": "meta-llama/Llama-3.1-8B", "tp_size": 2, "placements": [{"gpus": [0, 1]}]},
            ]
        },
        gpu_count=2,
    )
    flags: set[str] = set()
    for i, inst in enumerate(cfg.instances):
        req = LaunchRequest(instance=inst, host=cfg.host, port=30001 + i, nccl_port=40001 + i)
        argv = SimEngine().launch_spec(req).argv
        flags |= {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    missing = sorted(f for f in flags if not f.startswith("--sim-") and f not in contract.flags)
    assert not missing, f"the sim engine passes {missing}, not flags of SGLang {contract.version}"
