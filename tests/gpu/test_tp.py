"""On a host with 2 or 4 GPUs: the one-GPU suite's checks for tensor-parallel groups, with
dummy weights. TP 2: the Llama-3.1-8B shape over GPUs 0-1 beside a small model on each GPU
(elastic KV in every rank, park/wake verified per GPU, the probe after the wake). TP 4: the
Llama-3.3-70B shape over GPUs 0-3 beside the 1B shape on each GPU (wake p50 and held first
token, the issue's targets: ≤ 1.0 s and ≤ 1.2 s). Skipped where fewer GPUs exist; run with
``bash tests/gpu/device_run_tp.sh`` (docs/gpu-testing.md). Not run yet: the multi-GPU kinds
were not lent when this was written."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chimera_proc import start_chimera
from tests.gpu.conftest import ADMIN_KEY, RESULTS

pytestmark = pytest.mark.gpu
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def gpu_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML, no driver: no GPU
        return 0


def placements(big: str, tp: int, kv_pool_gb: int) -> dict[str, Any]:
    small = [
        {"name": f"small{g}", "model_path": "meta-llama/Llama-3.2-1B-Instruct", "load_format": "dummy",
         "placements": [{"gpus": [g], "on": True, "kv_pool_gb": 4}]}
        for g in range(tp)
    ]  # fmt: skip
    return {
        "mode": "full",
        "models": [
            *small,
            {
                "name": "big",
                "model_path": big,
                "tp_size": tp,
                "load_format": "dummy",
                "placements": [{"gpus": list(range(tp)), "on": True, "kv_pool_gb": kv_pool_gb}],
            },
        ],
    }


def greedy(base: str, model: str) -> str:
    r = httpx.post(
        f"{base}/v1/completions",
        json={"model": model, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


def park_wake_cycles(base: str, iid: str, n: int) -> list[dict[str, float]]:
    """Park and wake ``iid`` n times through the admin API; each park's memory is verified on
    every GPU of the group by the supervisor (a rank that did not free fails the park)."""
    out = []
    reference = greedy(base, "big")
    for _ in range(n):
        r = httpx.post(f"{base}/admin/instances/{iid}/park", headers=AUTH, timeout=300)
        assert r.status_code == 200, r.text
        m = re.search(r"parked in ([\d.]+) s, freed ([\d.]+) GiB", r.json()["result"])
        assert m, r.json()
        t0 = time.monotonic()
        r = httpx.post(f"{base}/admin/instances/{iid}/wake", headers=AUTH, timeout=300)
        assert r.status_code == 200 and r.json()["instance"]["state"] == "awake", r.text
        w = re.search(r"woken in ([\d.]+) s", r.json()["result"])
        assert w, r.json()
        assert greedy(base, "big") == reference  # the same output after every wake
        out.append({"park_s": float(m.group(1)), "freed_gib": float(m.group(2)), "wake_s": float(w.group(1)),
                    "wake_wall_s": time.monotonic() - t0})  # fmt: skip
    return out


def held_first_token(base: str, iid: str) -> float:
    """Park ``iid``, then time a request that must wake it (held by the proxy) to its answer."""
    r = httpx.post(f"{base}/admin/instances/{iid}/park", headers=AUTH, timeout=300)
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    r = httpx.post(f"{base}/v1/completions", json={"model": "big", "prompt": "hi", "max_tokens": 1}, timeout=300)
    assert r.status_code == 200, r.text
    return time.monotonic() - t0


def run_shape(tmp: Path, big: str, tp: int, kv_pool_gb: int, key: str) -> None:
    if gpu_count() < tp:
        pytest.skip(f"needs {tp} GPUs, found {gpu_count()}")
    run = start_chimera(
        tmp,
        placements(big, tp, kv_pool_gb),
        "sglang",
        awake=["big", *(f"small{g}" for g in range(tp))],
        timeout_s=900,
        env={"CHIMERA_ADMIN_KEY": ADMIN_KEY},
    )
    try:
        iid = "big@gpu" + "+".join(str(g) for g in range(tp))
        cycles = park_wake_cycles(run.base, iid, 5)
        wake = [c["wake_s"] for c in cycles]
        RESULTS[key] = {
            "cycles": cycles,
            "wake_p50_s": statistics.median(wake),
            "held_first_token_s": held_first_token(run.base, iid),
        }
        for g in range(tp):  # the small models beside the group still serve
            assert greedy(run.base, f"small{g}")
    finally:
        run.stop()


def test_tp2_8b_beside_small_models(tmp_path: Path) -> None:
    run_shape(tmp_path, "meta-llama/Llama-3.1-8B-Instruct", 2, 32, "tp2_8b")


def test_tp4_70b_beside_small_models(tmp_path: Path) -> None:
    run_shape(tmp_path, "llama-3.3-70b", 4, 64, "tp4_70b")
