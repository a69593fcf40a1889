"""``python -m bench.live.pools``: one GPU serves many more models than it has servers: a shape
pool of 8B servers re-targeted among ``--models`` same-shape models (a handful of distinct
checkpoints, the others reusing them under their own names) and one 8B base server with
``--adapters`` LoRA adapters. SIMULATED on the sim engine at the calibrated H100 speed (the
default); ``--engine sglang`` runs it on a real GPU against stock SGLang (bench/gpu/many.sh), with
real-size checkpoints (bench/gpu/checkpoints.py) and PEFT adapter files (bench/gpu/adapters.py),
and one chimera for every skew (a start takes minutes there; on the sim each skew starts afresh).

For each popularity skew (Zipf exponent; 0 = uniform) chimera is started afresh, requests arrive
open-loop (Poisson, ``--rate`` per second for ``--duration`` seconds; half to pooled models,
half to adapters, each family's model drawn by Zipf rank), every request is a streamed chat
completion, and the report gives per family: answered, errors, TTFT p50/p99 and attainment
(answered with TTFT within ``--ttft-slo`` seconds), and the pool's re-targets. Writes
OUT/pools.json and prints a table. Costs are the sim's (orchestrator/perf): a re-target reads
the weights at the calibrated disk bandwidth; adapter loads are modelled (simsglang/lora.py).

    python -m bench.live.pools --out runs/pools --duration 60 --rate 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.live.process import Chimera, start_chimera
from orchestrator.config.pooled import STAGES
from orchestrator.shapes import shape_dir

SHAPE = "llama-3.1-8b"


def checkpoints(out: Path, distinct: int) -> list[str]:
    """``distinct`` same-shape checkpoint directories (config.json only: the sim reads no
    weights; a GPU run writes real safetensors, bench/gpu/pools.sh)."""
    paths = []
    for i in range(distinct):
        d = out / "ckpt" / f"ft-{i}"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(shape_dir(SHAPE) / "config.json", d / "config.json")
        paths.append(str(d))
    return paths


def aliases(ckpt_dir: Path, distinct: int, paths: int) -> list[str]:
    """``paths`` checkpoint directories over ``distinct`` real ones: ``ft-<k>`` for k <
    ``distinct`` as written, and for k >= ``distinct`` a directory of hard links to the files of
    ``ft-<k mod distinct>`` (no disk; chimera sees another model path: a switch between two of
    them loads weights, though the same ones). Disk: 64 GB on the lent machine, 16 GB an 8B."""
    out = []
    for k in range(paths):
        src, dst = ckpt_dir / f"ft-{k % distinct}", ckpt_dir / f"ft-{k}"
        if k >= distinct and not dst.is_dir():
            dst.mkdir()
            for f in src.iterdir():
                if f.is_file():
                    os.link(f, dst / f.name)
        out.append(str(dst))
    return out


def placements(
    paths: list[str],
    models: int,
    adapters: int,
    pool_servers: int,
    ttft_slo: float,
    base_path: str = SHAPE,
    adapter_dir: str = "/adapters",
    gpu_memory_gb: float = 80,
    stage: str | None = None,
    stage_checkpoints: int | None = None,
) -> dict[str, Any]:
    """Model ``m<i>`` uses checkpoint ``i % len(paths)`` (so m0, m8, m16... share ft-0)."""
    slo = {"ttft_s": ttft_slo}
    pool: dict[str, Any] = {"name": "p8b", "servers": [{"gpus": [0]} for _ in range(pool_servers)]}
    if stage is not None:  # host RAM for ``stage_checkpoints`` of them (16 GB each for an 8B)
        pool |= {"stage": stage, "stage_gb": 17 * (stage_checkpoints or len(paths))}
    base = {"name": "base", "model_path": base_path, "placements": [{"gpus": [0]}]}
    return {
        "mode": "full",
        "host": {"gpus": 1, "gpu_memory_gb": gpu_memory_gb},
        "scheduler": {"on_late": "serve"},  # every request is answered, late or not
        "models": [
            base | {"lora": {"max_loras_per_batch": 8}},
            *({"name": f"m{i}", "model_path": paths[i % len(paths)], "pool": "p8b", "slo": slo} for i in range(models)),
            *({"name": f"a{i}", "base": "base", "adapter": f"{adapter_dir}/a{i}", "slo": slo} for i in range(adapters)),
        ],
        "pools": [pool],
    }


def zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, n + 1)]


def start(
    placements_file: Path,
    run_dir: Path,
    hold_timeout_s: float,
    speed: float = 1.0,
    weights_gbps: float = 0.0,
    engine: str = "sim",
) -> Chimera:
    env = {"CHIMERA_SIM_SPEED": f"{speed:g}", "CHIMERA_SIM_WEIGHTS_GBPS": f"{weights_gbps:g}"}
    return start_chimera(
        placements_file,
        run_dir,
        engine=engine,
        env=env,
        hold_timeout_s=hold_timeout_s,
        awake=("base", "m0"),
        settle_all=False,
        ready_timeout_s=180.0 if engine == "sim" else 550.0,
    )


async def one(client: httpx.AsyncClient, base: str, model: str, t_sched: float, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"request for {model} at {t_sched:.3f}"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    t0 = time.monotonic()
    ttft: float | None = None
    status = 0
    try:
        async with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
            status = r.status_code
            async for line in r.aiter_lines():
                if ttft is None and line.startswith("data: ") and '"content"' in line:
                    ttft = time.monotonic() - t0
    except httpx.HTTPError as exc:
        return {"model": model, "status": 0, "ttft": None, "error": type(exc).__name__}
    return {"model": model, "status": status, "ttft": ttft, "e2e": time.monotonic() - t0}


async def drive(
    base: str, rate: float, duration: float, skew: float, models: int, adapters: int, seed: int
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    pooled, lora = [f"m{i}" for i in range(models)], [f"a{i}" for i in range(adapters)]
    wp, wa = zipf_weights(models, skew), zipf_weights(adapters, skew)
    tasks = []
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(600.0), limits=limits) as client:
        t_start, t = time.monotonic(), 0.0
        while True:
            t += rng.expovariate(rate)
            if t > duration:
                break
            await asyncio.sleep(max(0.0, t_start + t - time.monotonic()))
            model = rng.choices(pooled, wp)[0] if rng.random() < 0.5 else rng.choices(lora, wa)[0]
            tasks.append(asyncio.create_task(one(client, base, model, t, 16)))
        return list(await asyncio.gather(*tasks))


def quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summarize(results: list[dict[str, Any]], slo: float) -> dict[str, Any]:
    out = {}
    for fam, prefix in (("pooled", "m"), ("adapters", "a")):
        rs = [r for r in results if r["model"].startswith(prefix)]
        ok = [r for r in rs if r["status"] == 200]
        ttfts = [r["ttft"] if r["ttft"] is not None else r["e2e"] for r in ok]  # empty answer: its end
        out[fam] = {
            "requests": len(rs),
            "answered": len(ok),
            "errors": len(rs) - len(ok),
            "empty_answers": sum(1 for r in ok if r["ttft"] is None),
            "ttft_p50_s": quantile(ttfts, 0.5),
            "ttft_p99_s": quantile(ttfts, 0.99),
            "attainment": (sum(1 for x in ttfts if x <= slo) / len(rs)) if rs else None,
            "distinct_models": len({r["model"] for r in rs}),
        }
    return out


def counters(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "chimera_retargets":
            for s in fam.samples:
                if s.name == "chimera_retargets_total":
                    out[f"retargets_{s.labels['outcome']}"] = out.get(f"retargets_{s.labels['outcome']}", 0) + s.value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.live.pools", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", type=int, default=50)
    p.add_argument("--checkpoints", type=int, default=8, help="distinct checkpoints the models share")
    p.add_argument(
        "--paths", type=int, help="sglang: model paths over them (hard links; default --checkpoints), >= servers + 1"
    )
    p.add_argument("--adapters", type=int, default=500)
    p.add_argument("--pool-servers", type=int, default=2)
    p.add_argument("--rate", type=float, default=4.0, help="requests per second (all models)")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--skews", default="0,0.8,1.2", help="Zipf exponents, comma-separated")
    p.add_argument("--ttft-slo", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--weights-gbps", type=float, default=0.0, help="re-target read bandwidth (0: the calibrated disk's 2.5 GB/s)"
    )
    p.add_argument("--sim-speed", type=float, default=1.0, help="1: the calibrated H100's timing; less: faster (CI)")
    p.add_argument("--engine", choices=("sim", "sglang"), default="sim")
    p.add_argument("--ckpt-dir", type=Path, help="sglang: real checkpoints ft-0.. (bench/gpu/checkpoints.py)")
    p.add_argument("--adapter-dir", type=Path, help="sglang: PEFT adapters a0.. (bench/gpu/adapters.py)")
    p.add_argument("--stage", choices=STAGES, help="the pool's staging (default: none)")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    real = a.engine == "sglang"
    if real and (a.ckpt_dir is None or a.adapter_dir is None):
        p.error("--engine sglang needs --ckpt-dir and --adapter-dir (bench/gpu/many.sh writes both)")
    if real:
        paths = aliases(a.ckpt_dir, a.checkpoints, a.paths or a.checkpoints)
        extra = {"base_path": paths[0], "adapter_dir": str(a.adapter_dir), "stage_checkpoints": a.checkpoints}
    else:
        paths, extra = checkpoints(a.out, a.checkpoints), {}
    cfg = placements(
        paths, a.models, a.adapters, a.pool_servers, a.ttft_slo, gpu_memory_gb=a.gpu_memory_gb, stage=a.stage, **extra
    )
    cfg_file = a.out / "placements.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    label = "SIMULATED (sim engine, calibrated H100 costs; not a GPU measurement)"
    report: dict[str, Any] = {
        "label": "GPU: stock SGLang on the lent machine (bench/gpu/many.sh)" if real else label,
        "setup": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items() if k != "out"}
        | {"shape": SHAPE, "gpu": "one 80 GB GPU-equivalent" if not real else f"{a.gpu_memory_gb:g} GB of one GPU"},
        "shared_weights": {
            f"ft-{i}": [f"m{j}" for j in range(a.models) if j % len(paths) % a.checkpoints == i]
            for i in range(a.checkpoints)
        },
        "model_paths": {f"m{j}": paths[j % len(paths)] for j in range(a.models)},
        "runs": [],
    }
    ch: Chimera | None = None
    try:
        for skew in (float(x) for x in a.skews.split(",")):
            if ch is None or not real:  # the sim starts afresh per skew; a GPU run once
                t0 = time.monotonic()
                run_dir = a.out / ("gpu" if real else f"skew-{skew:g}")
                ch = start(cfg_file, run_dir, 600, a.sim_speed, a.weights_gbps, a.engine)
                report.setdefault("start_s", []).append(time.monotonic() - t0)
            before = counters(ch.base)
            results = asyncio.run(drive(ch.base, a.rate, a.duration, skew, a.models, a.adapters, a.seed))
            after = counters(ch.base)
            run = {"skew": skew, **summarize(results, a.ttft_slo)}
            run |= {k: v - before.get(k, 0.0) for k, v in after.items()}
            with open(a.out / f"requests-skew-{skew:g}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in results)
            if not real:
                ch.stop()
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
    finally:
        if ch is not None:
            ch.stop()
    (a.out / "pools.json").write_text(json.dumps(report, indent=2))
    print(f"\n{report['label']}")
    head = ("skew", "family", "req", "ok", "err", "p50 s", "p99 s", "attain", "models")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (5, 9, 5, 5, 4, 7, 7, 7, 6), strict=True)))
    for run in report["runs"]:
        for fam in ("pooled", "adapters"):
            r = run[fam]
            fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
            print(
                f"{run['skew']:>5g} {fam:>9} {r['requests']:>5} {r['answered']:>5} {r['errors']:>4} "
                f"{fmt(r['ttft_p50_s']):>7} {fmt(r['ttft_p99_s']):>7} {fmt(r['attainment']):>7} "
                f"{r['distinct_models']:>6}"
            )
        print(f"      re-targets ok {run.get('retargets_ok', 0):g}, failed {run.get('retargets_failed', 0):g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
