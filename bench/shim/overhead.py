"""What cumem_shim costs a serving engine: one model served twice at once on one GPU, by a
server with a fixed KV pool and by one whose pool is the shim's (same flags otherwise, the
orchestrator's own launch specs), loaded in turn with the same open-loop traffic, block after
block (A B A B ...), so drift over the run falls on both alike; ``--repeats`` runs that again with
the other server first each time. Reports TTFT and TPOT p50/p95 of each, the ratio shim /
static per repeat and over all (target <= 1.02 in every repeat; Prism reports 1.03-1.05), and
the shim's map-ahead counts (blocks prepared and adopted; blocks mapped or waited for on the
scheduler thread inside an allocation: cumem_shim/stats.py).

    python -m bench.shim.overhead --engine sglang          # on the GPU host (8B shape, dummy)
    python -m bench.shim.overhead --engine sim --block-s 3 --blocks 2   # anywhere (simulated)

The shim's limit is the whole pool from the start (no ledger), so both servers admit alike and
only the shim's mapping path and allocator hooks differ. Writes ``overhead.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.client.loadgen import ClientConfig, ClientShards, run_open_loop
from bench.client.prompts import COMPLETIONS
from bench.client.record import RequestRecord
from bench.report.summary import distribution
from bench.traces import BenchRequest
from orchestrator.config import GIB, parse_config
from orchestrator.engines.base import LaunchRequest, ShimLaunch, get_engine
from orchestrator.errors import EngineStartError
from orchestrator.shapes.materialize import dummy_model_dir
from orchestrator.supervisor.ports import free_ports
from orchestrator.supervisor.process import EngineProcess

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
KINDS = ("static", "shim")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.shim.overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engine", choices=("sglang", "sim"), default="sglang")
    p.add_argument("--model", default=MODEL, help="model id or shipped shape (dummy weights)")
    p.add_argument("--kv-pool-gb", type=float, default=16.0, help="KV pool of each server")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size: both servers on GPUs 0..tp-1 (default 1)")
    p.add_argument("--rate", type=float, default=6.0, help="requests/s, Poisson (default 6)")
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens (default 512)")
    p.add_argument("--output", type=int, default=128, help="output tokens (default 128)")
    p.add_argument("--block-s", type=float, default=20.0, help="seconds of traffic per block")
    p.add_argument("--blocks", type=int, default=3, help="blocks per server and repeat (default 3)")
    p.add_argument(
        "--repeats", type=int, default=1, help="runs of --blocks blocks, the first server alternating (default 1)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/shim-overhead")))
    return p.parse_args(argv)


def block_trace(
    model: str, rate: float, seconds: float, prompt: int, output: int, rng: random.Random
) -> list[BenchRequest]:
    reqs, t = [], rng.expovariate(rate)
    while t < seconds:
        reqs.append(BenchRequest(len(reqs), t, model, prompt, output, source="poisson"))
        t += rng.expovariate(rate)
    return reqs


async def _servers(args: argparse.Namespace, work: Path, sock: str) -> dict[str, EngineProcess]:
    cfg = parse_config(
        {
            "host": {"gpus": args.tp},
            "mode": "static",
            "models": [
                {
                    "name": "m",
                    "model_path": args.model,
                    "load_format": "dummy",
                    "tp_size": args.tp,
                    "placements": [{"gpus": list(range(args.tp)), "kv_pool_gb": args.kv_pool_gb}],
                }
            ],
        },
        gpu_count=args.tp,
    )
    inst = cfg.instances[0]
    engine = get_engine(args.engine)
    model_dir = str(dummy_model_dir(inst.model.shape.name, work / "cache")) if engine.needs_model_dir else None
    pool = int(args.kv_pool_gb * GIB)
    procs = {}
    ports = iter(free_ports(2 * len(KINDS)))
    for kind in KINDS:
        port, nccl = next(ports), next(ports)
        shim = None
        if kind == "shim":
            shim = ShimLaunch(sock, pool, pool, str(_entry_points(work)), tp_size=args.tp)
        spec = engine.launch_spec(LaunchRequest(inst, cfg.host, port, nccl, model_dir=model_dir, shim=shim))
        procs[kind] = EngineProcess(kind, spec, work / f"{kind}-server.log")
    try:
        for p in procs.values():
            await p.spawn()
        async with httpx.AsyncClient(trust_env=False) as client:
            await asyncio.gather(*(p.wait_ready(client) for p in procs.values()))
    except BaseException:  # one did not start: stop the other too (it holds the GPU)
        await asyncio.gather(*(p.stop() for p in procs.values()))
        raise
    return procs


def _entry_points(work: Path) -> Path:
    from cumem_shim import plugin

    return plugin.entry_point_dir(work / "shim-plugin")


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    sock = os.path.join(tempfile.gettempdir(), f"chimera-overhead-{os.getpid()}.sock")
    procs = await _servers(args, work, sock)
    rng = random.Random(args.seed)
    runs: list[dict[str, list[RequestRecord]]] = []
    maps: dict[str, Any] | None = None
    try:
        async with ClientShards(4) as shards:
            for r in range(args.repeats):
                order = KINDS if r % 2 == 0 else KINDS[::-1]
                records: dict[str, list[RequestRecord]] = {k: [] for k in KINDS}
                for b in range(args.blocks):
                    trace = block_trace("m", args.rate, args.block_s, args.prompt, args.output, rng)
                    for kind in order if b % 2 == 0 else order[::-1]:
                        seed = r * args.blocks + b
                        cfg = ClientConfig(procs[kind].spec.base_url, COMPLETIONS, seed=seed, ids=True, run=seed)
                        recs = await run_open_loop(trace, cfg, shards)
                        records[kind] += recs
                        ok = sum(x.ok for x in recs)
                        print(f"repeat {r} block {b} {kind:>6}: {ok}/{len(recs)} ok", flush=True)
                runs.append(records)
        maps = await _shim_counts(sock, args.tp)
    finally:
        await asyncio.gather(*(p.stop() for p in procs.values()))
    out = summarize({k: [x for run in runs for x in run[k]] for k in KINDS}, args)
    out["repeats"] = [
        {
            "first": (KINDS if r % 2 == 0 else KINDS[::-1])[0],
            "ratio_shim_over_static": summarize(run, args)["ratio_shim_over_static"],
        }
        for r, run in enumerate(runs)
    ]
    out["spread"] = spread([r["ratio_shim_over_static"] for r in out["repeats"]])
    out["shim_maps"] = maps
    return out


async def _shim_counts(sock: str, tp: int = 1) -> dict[str, Any] | None:
    """The shim's map-ahead counts and memory at the end of the run, every TP rank's combined
    (None if it did not answer)."""
    from orchestrator.kv.client import GroupClient, ShimProtocolError, ShimUnavailable

    try:
        st = await GroupClient(sock, tp).status()
    except (ShimUnavailable, ShimProtocolError) as exc:
        print(f"shim status: {exc}", file=sys.stderr)
        return None
    return {"mapped_bytes": st.mapped_bytes, "used_tokens": st.used_tokens, **st.maps._asdict()}


def spread(ratios: list[dict[str, float | None]]) -> dict[str, dict[str, float] | None]:
    """Lowest and highest ratio of each metric over the repeats."""
    out: dict[str, dict[str, float] | None] = {}
    for key in ratios[0] if ratios else {}:
        vals = [r[key] for r in ratios if r.get(key) is not None]
        out[key] = {"min": min(vals), "max": max(vals)} if vals else None  # type: ignore[type-var]
    return out


def summarize(records: dict[str, list[RequestRecord]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "engine": args.engine,
        "model": args.model,
        "tp": args.tp,
        "rate": args.rate,
        "prompt": args.prompt,
        "output": args.output,
        "blocks": args.blocks,
        "block_s": args.block_s,
        "repeats": args.repeats,
        "servers": {},
    }
    for kind, recs in records.items():
        ok = [r for r in recs if r.ok]
        out["servers"][kind] = {
            "requests": len(recs),
            "ok": len(ok),
            "errors": sorted({r.error for r in recs if not r.ok})[:5],
            "ttft_s": distribution(r.ttft_s for r in ok if r.ttft_s is not None),
            "tpot_s": distribution(r.tpot_s for r in ok if r.tpot_s is not None),
        }
    ratio: dict[str, float | None] = {}
    for metric in ("ttft_s", "tpot_s"):
        for p in ("p50", "p95"):
            a = out["servers"]["static"][metric][p]
            b = out["servers"]["shim"][metric][p]
            ratio[f"{metric[:-2]}_{p}"] = round(b / a, 4) if a and b else None
    out["ratio_shim_over_static"] = ratio
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        res = asyncio.run(measure(args, args.out))
    except EngineStartError as exc:
        print(f"a server did not start: {exc}", file=sys.stderr)
        return 1
    res["simulated"] = args.engine == "sim"
    (args.out / "overhead.json").write_text(json.dumps(res, indent=1))
    label = " (SIMULATED: sim engine)" if res["simulated"] else ""
    print(
        f"cumem_shim overhead{label}: {args.model}, {args.rate:g} req/s, "
        f"{args.prompt}/{args.output} tokens, {args.blocks} blocks x {args.block_s:g} s each"
    )
    for kind, s in res["servers"].items():
        print(
            f"  {kind:>6}: {s['ok']}/{s['requests']} ok  TTFT p50 {_ms(s['ttft_s']['p50'])} "
            f"p95 {_ms(s['ttft_s']['p95'])}  TPOT p50 {_ms(s['tpot_s']['p50'])} "
            f"p95 {_ms(s['tpot_s']['p95'])}"
        )
    print("  shim / static: " + ", ".join(f"{k} {v}" for k, v in res["ratio_shim_over_static"].items()))
    for r, rep in enumerate(res["repeats"]):
        print(
            f"    repeat {r} ({rep['first']} first): "
            + ", ".join(f"{k} {v}" for k, v in rep["ratio_shim_over_static"].items())
        )
    print("  spread over repeats: " + ", ".join(f"{k} {v['min']}-{v['max']}" for k, v in res["spread"].items() if v))
    print(f"  shim map-ahead: {res['shim_maps']}")
    return 0 if all(s["ok"] == s["requests"] for s in res["servers"].values()) else 1


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.2f} ms"


if __name__ == "__main__":
    sys.exit(main())
