"""Activation benchmark: park/wake cycles per model through a running chimera, and the time to
first token of a request that arrives while its model is parked (held, then served).

For each model: park it (admin API; chimera verifies the freed GPU memory), send one streaming
completion through the proxy (it is held while the model wakes), record the park time, the wake
time (chimera_wake_seconds: resume + continue + output-checking probe), the TTFT seen by the
client, and the ratio of the wake to the physical floor = weights ÷ pinned host→GPU bandwidth
(measured in the same run with torch when a GPU is present; else the H100 figure from
calibration, and every number is labelled simulated).

    CHIMERA_ADMIN_KEY=KEY python -m bench.live.activation --url http://127.0.0.1:8000 \\
        --model llama-1b --model llama-8b --cycles 5 --out activation.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.perf import calibration

PROMPT = "hello world once upon a time"


_H2D_PROBE = """
import time, torch
n = 1 << 30
host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
dev = torch.empty(n, dtype=torch.uint8, device="cuda")
best = float("inf")
for _ in range(5):
    torch.cuda.synchronize(); t = time.perf_counter()
    dev.copy_(host, non_blocking=True); torch.cuda.synchronize()
    best = min(best, time.perf_counter() - t)
print(n / best)
"""


def h2d_bandwidth_bytes_per_s() -> tuple[float, str]:
    """Pinned host→GPU copy bandwidth (1 GiB, best of 5), measured with torch in a child
    process so this process never holds a CUDA context; the calibration figure without a GPU."""
    try:
        r = subprocess.run([sys.executable, "-c", _H2D_PROBE], capture_output=True, text=True, timeout=120, check=True)
        return float(r.stdout.strip().splitlines()[-1]), "measured (torch, pinned, 1 GiB)"
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return calibration.HOST_TO_DEVICE_BW, "calibration (no CUDA/torch here)"


async def wake_sum(client: httpx.AsyncClient, url: str, model: str) -> tuple[float, float]:
    text = (await client.get(f"{url}/metrics")).text
    total = count = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name == "chimera_wake_seconds":
            for s in fam.samples:
                if s.labels.get("model") == model and s.name.endswith("_sum"):
                    total = s.value
                if s.labels.get("model") == model and s.name.endswith("_count"):
                    count = s.value
    return total, count


async def ttft(client: httpx.AsyncClient, url: str, model: str) -> tuple[float, str]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True, "ignore_eos": True}
    t0 = time.perf_counter()
    first: float | None = None
    text = []
    async with client.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            piece = chunk["choices"][0]["text"] if chunk.get("choices") else ""
            if piece and first is None:
                first = time.perf_counter() - t0
            text.append(piece)
    assert first is not None, "no token came back"
    return first, "".join(text)


async def measure(url: str, key: str, model: str, cycles: int) -> dict[str, Any]:
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=300, trust_env=False) as client:
        listed = (await client.get(f"{url}/admin/instances", headers=auth)).json()["instances"]
        inst = next(i["id"] for i in listed if i["model"] == model)
        if next(i["state"] for i in listed if i["id"] == inst) == "parked":
            await ttft(client, url, model)  # wake it first
        _, reference = await ttft(client, url, model)
        parks, freed, wakes, ttfts, same = [], [], [], [], 0
        for _ in range(cycles):
            r = await client.post(f"{url}/admin/instances/{inst}/park", headers=auth)
            r.raise_for_status()
            m = re.search(r"parked in ([\d.]+) s, freed ([\d.]+) GiB", r.json()["result"])
            assert m, r.json()
            parks.append(float(m.group(1)))
            freed.append(float(m.group(2)))
            s0, c0 = await wake_sum(client, url, model)
            first, text = await ttft(client, url, model)
            s1, c1 = await wake_sum(client, url, model)
            assert c1 == c0 + 1, "the request did not wake the model"
            wakes.append(s1 - s0)
            ttfts.append(first)
            same += text == reference
    return {
        "model": model,
        "instance": inst,
        "cycles": cycles,
        "park_s": stats(parks),
        "wake_s": stats(wakes),
        "held_ttft_s": stats(ttfts),
        "freed_gib": stats(freed),
        "identical_outputs": same,
    }


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
    return {"p50": statistics.median(xs), "p95": p95, "min": xs[0], "max": xs[-1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.live.activation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", required=True, help="chimera's proxy, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--admin-key",
        default=os.environ.get("CHIMERA_ADMIN_KEY"),
        help="the admin key chimera was started with (default: $CHIMERA_ADMIN_KEY, which keeps it out of ps)",
    )
    p.add_argument("--model", action="append", required=True, help="model name (repeatable)")
    p.add_argument(
        "--weights-gb",
        action="append",
        type=float,
        default=[],
        help="weights of each --model in GB, in the same order (for the floor)",
    )
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--simulated", action="store_true", help="label every number simulated")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    weights = {m: int(w * 1e9) for m, w in zip(a.model, a.weights_gb, strict=False)}
    if not a.admin_key:
        p.error("the admin key is needed: set CHIMERA_ADMIN_KEY (or pass --admin-key)")
    res = run(a.url, a.admin_key, a.model, a.cycles, a.simulated, a.out, weights)
    print(json.dumps(res, indent=1))
    return 0


def run(
    url: str,
    key: str,
    models: list[str],
    cycles: int,
    simulated: bool,
    out: Path | None,
    weights: dict[str, int] | None = None,
) -> dict[str, Any]:
    bw, how = h2d_bandwidth_bytes_per_s()
    results: dict[str, Any] = {"simulated": simulated, "h2d_bytes_per_s": bw, "h2d_source": how, "models": []}
    for model in models:
        r = asyncio.run(measure(url, key, model, cycles))
        if weights and model in weights:
            floor = weights[model] / bw
            r["floor_s"] = floor
            r["wake_over_floor_p50"] = r["wake_s"]["p50"] / floor
        results["models"].append(r)
        label = " (SIMULATED)" if simulated else ""
        print(
            f"{model}{label}: park p50 {r['park_s']['p50']:.3f} s, wake p50 "
            f"{r['wake_s']['p50']:.3f} s, held TTFT p50 {r['held_ttft_s']['p50']:.3f} s, "
            f"{r['identical_outputs']}/{cycles} identical",
            file=sys.stderr,
        )
    if out is not None:
        out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    sys.exit(main())
