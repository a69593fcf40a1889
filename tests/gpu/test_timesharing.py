"""On a GPU host: time-sharing with stock SGLang. One instance is parked and woken 10 times
while its neighbour on the same GPU keeps serving; chimera verifies the freed memory on each
park (NVML) and the probe output on each wake; the greedy output through the proxy must not
change. Then the activation benchmark (bench/live/activation.py) for the 1B and 8B shapes."""

from __future__ import annotations

import re
import threading

import httpx
import pytest

from bench.live import activation
from orchestrator.shapes import load_shape
from tests.chimera_proc import Running
from tests.gpu.conftest import ADMIN_KEY, RESULTS, gpu_used_mib, out_dir

pytestmark = pytest.mark.gpu
AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


def greedy(base: str, model: str) -> str:
    r = httpx.post(
        f"{base}/v1/completions",
        json={"model": model, "prompt": "once upon a time", "max_tokens": 8, "temperature": 0, "ignore_eos": True},
        timeout=120,
    )
    r.raise_for_status()
    return str(r.json()["choices"][0]["text"])


def test_park_and_wake_ten_times_while_the_neighbour_serves(chimera_gpu: Running) -> None:
    base = chimera_gpu.base
    reference = greedy(base, "llama-1b")
    stop = threading.Event()
    served: list[int] = []

    def neighbour() -> None:
        while not stop.is_set():
            r = httpx.post(
                f"{base}/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 4}, timeout=60
            )
            served.append(r.status_code)

    t = threading.Thread(target=neighbour)
    t.start()
    cycles = []
    try:
        for _ in range(10):
            used_awake = gpu_used_mib()
            r = httpx.post(f"{base}/admin/instances/llama-1b@gpu0/park", headers=AUTH, timeout=120)
            assert r.status_code == 200, r.text
            m = re.search(r"parked in ([\d.]+) s, freed ([\d.]+) GiB", r.json()["result"])
            assert m, r.json()
            used_parked = gpu_used_mib()
            r = httpx.post(f"{base}/admin/instances/llama-1b@gpu0/wake", headers=AUTH, timeout=120)
            assert r.status_code == 200 and r.json()["instance"]["state"] == "awake", r.text
            w = re.search(r"woken in ([\d.]+) s", r.json()["result"])
            assert w, r.json()
            assert greedy(base, "llama-1b") == reference
            cycles.append(
                {
                    "park_s": float(m.group(1)),
                    "freed_gib": float(m.group(2)),
                    "wake_s": float(w.group(1)),
                    "gpu_used_mib_awake": used_awake,
                    "gpu_used_mib_parked": used_parked,
                }
            )
            assert float(m.group(2)) > 1.0  # weights 2.3 GiB + 8 GiB KV of the 1B shape
    finally:
        stop.set()
        t.join()
    RESULTS["park_wake_cycles_1b"] = cycles
    RESULTS["neighbour_requests"] = {"total": len(served), "ok": served.count(200)}
    assert served and all(s == 200 for s in served)


def test_activation_benchmark(chimera_gpu: Running) -> None:
    weights = {"llama-1b": load_shape("llama-3.2-1b").weight_bytes, "llama-8b": load_shape("llama-3.1-8b").weight_bytes}
    out = out_dir()
    res = activation.run(
        chimera_gpu.base,
        ADMIN_KEY,
        ["llama-1b", "llama-8b"],
        cycles=5,
        simulated=False,
        out=out / "activation.json" if out else None,
        weights=weights,
    )
    RESULTS["activation"] = res
    for m in res["models"]:
        assert m["identical_outputs"] == 5
    # every wake above went through the wake gate (mode full): those that waited for the
    # neighbours' pages say how long; none may have been abandoned for want of room
    waits: dict[str, dict[str, float]] = {}
    for line in httpx.get(f"{chimera_gpu.base}/metrics", timeout=10).text.splitlines():
        hit = re.match(r'chimera_wake_room_wait_seconds_(count|sum)\{model="([^"]+)",outcome="(\w+)"\} (\S+)', line)
        if hit:
            waits.setdefault(f"{hit[2]}/{hit[3]}", {})[hit[1]] = float(hit[4])
    RESULTS["wake_room_waits"] = waits
    assert not any(key.endswith("/timeout") for key in waits), waits
