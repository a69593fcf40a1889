"""What cumem_shim costs a serving engine: one model served at once on one GPU by a server
with a fixed KV pool and by servers whose pool is the shim's (same flags otherwise, the
orchestrator's own launch specs), loaded in turn with the same open-loop traffic, block after
block, the order rotating each block so drift over the run falls on all alike; ``--repeats``
runs that again. Reports TTFT and TPOT p50/p95 of each, the ratio of each shim variant to the
fixed pool per repeat and over all (target <= 1.02 in every repeat; Prism reports 1.03-1.05),
the median per-request ratio of the same requests per repeat and over all (``paired``), and the
shim's map-ahead counts (blocks prepared and adopted; blocks mapped or waited for on the
scheduler thread inside an allocation: cumem_shim/stats.py).

Variants (``--variants``, the fixed pool ``static`` always first): ``shim`` (as chimera starts
it), ``shim-nofill`` (no idle fill: the worker maps at most CHIMERA_SHIM_MAP_AHEAD_BLOCKS ahead,
beside running requests) and ``shim-fill`` (idle fill after 0.5 s). Every shim server writes a
map trace (cumem_shim/maptrace.py); ``beside_maps`` splits its requests into those whose wait for
the first token overlapped a map or unmap of its pool and the rest, each against the fixed
pool's answer to the same request.

    python -m bench.shim.overhead --engine sglang          # on the GPU host (8B shape, dummy)
    python -m bench.shim.overhead --engine sim --block-s 3 --blocks 2   # anywhere (simulated)

The shim's limit is the whole pool from the start (no ledger), so all servers admit alike and
only the shim's mapping path and allocator hooks differ. Every server has had its readiness
probe (its first allocation: the shim's map-ahead worker starts there). Before the repeats each
server also gets ``--warmup-s`` of the same traffic, unmeasured and reported apart (``warmup``),
so no server's first requests (first kernel launches at each batch size, allocator growth) fall
in a repeat. Writes ``overhead.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.client.loadgen import ClientConfig, ClientShards, run_open_loop
from bench.client.prompts import COMPLETIONS
from bench.client.record import RequestRecord
from bench.report.summary import distribution, percentile
from bench.traces import BenchRequest
from cumem_shim import maptrace
from cumem_shim import settings as shim_settings
from orchestrator.config import GIB, parse_config
from orchestrator.engines.base import LaunchRequest, ShimLaunch, get_engine
from orchestrator.errors import EngineStartError
from orchestrator.shapes.materialize import dummy_model_dir
from orchestrator.supervisor.ports import free_ports
from orchestrator.supervisor.process import EngineProcess

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BASE = "static"
# each shim variant's environment beside what the orchestrator sets
VARIANTS: dict[str, dict[str, str]] = {
    "shim": {},
    "shim-nofill": {shim_settings.IDLE_FILL_S: "0"},
    "shim-fill": {shim_settings.IDLE_FILL_S: "0.5"},
}


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
    p.add_argument(
        "--variants",
        default="shim",
        help=f"shim variants beside the fixed pool, comma-separated, of {', '.join(VARIANTS)} (default shim)",
    )
    p.add_argument(
        "--warmup-s",
        type=float,
        default=5.0,
        help="seconds of the same traffic each server gets first, unmeasured (reported apart), so "
        "no server's first requests fall in a repeat; 0 = none (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/shim-overhead")))
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names or len(set(names)) != len(names):
        p.error(f"--variants: {args.variants!r}: name each of {', '.join(VARIANTS)} at most once")
    args.kinds = (BASE, *names)
    return args


def block_trace(
    model: str, rate: float, seconds: float, prompt: int, output: int, rng: random.Random
) -> list[BenchRequest]:
    reqs, t = [], rng.expovariate(rate)
    while t < seconds:
        reqs.append(BenchRequest(len(reqs), t, model, prompt, output, source="poisson"))
        t += rng.expovariate(rate)
    return reqs


async def _servers(args: argparse.Namespace, work: Path, socks: dict[str, str]) -> dict[str, EngineProcess]:
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
    ports = iter(free_ports(2 * len(args.kinds)))
    for kind in args.kinds:
        port, nccl = next(ports), next(ports)
        shim = None
        if kind in socks:
            shim = ShimLaunch(socks[kind], pool, pool, str(_entry_points(work)), tp_size=args.tp)
        spec = engine.launch_spec(LaunchRequest(inst, cfg.host, port, nccl, model_dir=model_dir, shim=shim))
        if kind in socks:
            extra = {**VARIANTS[kind], shim_settings.MAP_TRACE: str(work / f"{kind}-maps.txt")}
            spec = dataclasses.replace(spec, env={**spec.env, **extra})
        procs[kind] = EngineProcess(kind, spec, work / f"{kind}-server.log")
    try:
        for p in procs.values():
            await p.spawn()
        async with httpx.AsyncClient(trust_env=False) as client:
            await asyncio.gather(*(p.wait_ready(client) for p in procs.values()))
    except BaseException:  # one did not start: stop the others too (they hold the GPU)
        await asyncio.gather(*(p.stop() for p in procs.values()))
        raise
    return procs


def _entry_points(work: Path) -> Path:
    from cumem_shim import plugin

    return plugin.entry_point_dir(work / "shim-plugin")


class _Clock:
    """``time.monotonic`` (the shim's trace clock) that remembers its first reading: the start
    of an open-loop run, from which its records count."""

    def __init__(self) -> None:
        self.t0: float | None = None

    def __call__(self) -> float:
        t = time.monotonic()
        if self.t0 is None:
            self.t0 = t
        return t


def block_order(kinds: Sequence[str], repeat: int, block: int, blocks: int) -> list[str]:
    """The servers in the order block ``block`` of repeat ``repeat`` loads them: rotated by one
    each block, so each takes every place equally often over len(kinds) blocks."""
    k = (repeat * blocks + block) % len(kinds)
    return [*kinds[k:], *kinds[:k]]


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    socks = {
        kind: os.path.join(tempfile.gettempdir(), f"chimera-overhead-{os.getpid()}-{i}.sock")
        for i, kind in enumerate(args.kinds[1:])
    }
    procs = await _servers(args, work, socks)
    rng = random.Random(args.seed)
    runs: list[dict[str, list[RequestRecord]]] = []
    starts: dict[tuple[str, int], float] = {}  # (server, run) -> its monotonic start
    maps: dict[str, Any] = {}
    warm: dict[str, list[RequestRecord]] = {}
    try:
        async with ClientShards(4) as shards:

            async def load(kind: str, trace: list[BenchRequest], run: int, label: str) -> list[RequestRecord]:
                """``trace`` to one server as run ``run``; its start on the monotonic clock kept."""
                cfg = ClientConfig(procs[kind].spec.base_url, COMPLETIONS, seed=run, ids=True, run=run)
                clock = _Clock()
                recs = await run_open_loop(trace, cfg, shards, now=clock)
                assert clock.t0 is not None
                starts[(kind, run)] = clock.t0
                print(f"{label} {kind:>11}: {sum(x.ok for x in recs)}/{len(recs)} ok", flush=True)
                return recs

            if args.warmup_s > 0:  # apart from the repeats (run -1): not in any ratio
                trace = block_trace("m", args.rate, args.warmup_s, args.prompt, args.output, random.Random(-1))
                for kind in args.kinds:
                    warm[kind] = await load(kind, trace, -1, "warm-up")
            for r in range(args.repeats):
                records: dict[str, list[RequestRecord]] = {k: [] for k in args.kinds}
                for b in range(args.blocks):
                    trace = block_trace("m", args.rate, args.block_s, args.prompt, args.output, rng)
                    for kind in block_order(args.kinds, r, b, args.blocks):
                        records[kind] += await load(kind, trace, r * args.blocks + b, f"repeat {r} block {b}")
                runs.append(records)
        for kind, sock in socks.items():
            maps[kind] = await _shim_counts(sock, args.tp)
    finally:
        await asyncio.gather(*(p.stop() for p in procs.values()))
    everything = {k: [x for run in runs for x in run[k]] for k in args.kinds}
    out = summarize(everything, args)
    out["warmup"] = (
        {"seconds": args.warmup_s, **{k: v for k, v in summarize(warm, args).items() if k in ("servers", "ratios")}}
        if warm
        else None
    )
    out["repeats"] = [
        {"first": block_order(args.kinds, r, 0, args.blocks)[0], "ratios": summarize(run, args)["ratios"]}
        for r, run in enumerate(runs)
    ]
    for rep, run in zip(out["repeats"], runs, strict=True):
        rep["ratio_shim_over_static"] = rep["ratios"].get("shim")
        rep["paired"] = {kind: paired(run[kind], run[BASE]) for kind in args.kinds[1:]}
    out["paired"] = {kind: paired(everything[kind], everything[BASE]) for kind in args.kinds[1:]}
    out["spread"] = {kind: spread([rep["ratios"][kind] for rep in out["repeats"]]) for kind in args.kinds[1:]}
    out["shim_maps"] = maps.get("shim")
    out["maps"] = maps
    out["beside_maps"] = {
        kind: beside_maps(everything[kind], everything[BASE], starts, kind, _trace(work, kind))
        for kind in args.kinds[1:]
    }
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


def _trace(work: Path, kind: str) -> list[tuple[str, int, float, float]]:
    path = work / f"{kind}-maps.txt"
    return maptrace.read(path) if path.exists() else []


def beside_maps(
    shim: Sequence[RequestRecord],
    base: Sequence[RequestRecord],
    starts: dict[tuple[str, int], float],
    kind: str,
    trace: Sequence[tuple[str, int, float, float]],
) -> dict[str, Any]:
    """The shim server's answered requests split by whether their wait for the first token
    (sent .. first token, on the trace's clock) overlapped a map or unmap of its pool, each with
    its TTFT percentiles and the median of its TTFT over the fixed pool's for the same request
    (same run and id). Pure."""
    spans = sorted((a, b) for _, _, a, b in trace)
    by_id = {(r.run, r.id): r for r in base if r.ok and r.ttft_s}
    groups: dict[str, list[tuple[float, float | None]]] = {"overlapped": [], "clear": []}
    for r in shim:
        if not r.ok or r.ttft_s is None or (kind, r.run) not in starts:
            continue
        lo = starts[(kind, r.run)] + r.sent_at_s
        hi = lo + r.ttft_s
        hit = any(a < hi and b > lo for a, b in spans)
        twin = by_id.get((r.run, r.id))
        ratio = r.ttft_s / twin.ttft_s if twin is not None and twin.ttft_s else None
        groups["overlapped" if hit else "clear"].append((r.ttft_s, ratio))
    out: dict[str, Any] = {"driver_calls_traced": len(trace)}
    for name, rows in groups.items():
        ratios = sorted(x for _, x in rows if x is not None)
        out[name] = {
            "requests": len(rows),
            "ttft_s": distribution(t for t, _ in rows),
            "ratio_over_static_p50": round(ratios[len(ratios) // 2], 4) if ratios else None,
        }
    return out


def paired(variant: Sequence[RequestRecord], base: Sequence[RequestRecord]) -> dict[str, Any]:
    """The same requests (same run and id: each block sends one trace to every server) answered
    by ``variant`` and by the fixed pool: the median of the per-request ratios of TTFT and of
    TPOT, and how many pairs. A ratio of two percentiles moves with where each server's slowest
    requests fell (~170 requests a repeat: its p95 is the 9th slowest); a request paired with its
    twin cancels the trace's own spread, so this is the figure a repeat resolves. Pure."""
    by_id = {(r.run, r.id): r for r in base if r.ok}
    ttft: list[float] = []
    tpot: list[float] = []
    for r in variant:
        twin = by_id.get((r.run, r.id))
        if not r.ok or twin is None:
            continue
        if r.ttft_s and twin.ttft_s:
            ttft.append(r.ttft_s / twin.ttft_s)
        if r.tpot_s and twin.tpot_s:
            tpot.append(r.tpot_s / twin.tpot_s)
    return {"pairs": len(ttft), "ttft_p50": _median(ttft), "tpot_p50": _median(tpot)}


def _median(xs: list[float]) -> float | None:
    return round(percentile(xs, 50), 4) if xs else None


def spread(ratios: list[dict[str, float | None]]) -> dict[str, dict[str, float] | None]:
    """Lowest and highest ratio of each metric over the repeats."""
    out: dict[str, dict[str, float] | None] = {}
    for key in ratios[0] if ratios else {}:
        vals = [v for r in ratios if (v := r.get(key)) is not None]
        out[key] = {"min": min(vals), "max": max(vals)} if vals else None
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
        "variants": list(args.kinds[1:]),
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
    out["ratios"] = {}
    for kind in args.kinds[1:]:
        ratio: dict[str, float | None] = {}
        for metric in ("ttft_s", "tpot_s"):
            for p in ("p50", "p95"):
                a = out["servers"][BASE][metric][p]
                b = out["servers"][kind][metric][p]
                ratio[f"{metric[:-2]}_{p}"] = round(b / a, 4) if a and b else None
        out["ratios"][kind] = ratio
    out["ratio_shim_over_static"] = out["ratios"].get("shim")
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
            f"  {kind:>11}: {s['ok']}/{s['requests']} ok  TTFT p50 {_ms(s['ttft_s']['p50'])} "
            f"p95 {_ms(s['ttft_s']['p95'])}  TPOT p50 {_ms(s['tpot_s']['p50'])} "
            f"p95 {_ms(s['tpot_s']['p95'])}"
        )
    for kind in args.kinds[1:]:
        print(f"  {kind} / static: " + ", ".join(f"{k} {v}" for k, v in res["ratios"][kind].items()))
        for r, rep in enumerate(res["repeats"]):
            pr = rep["paired"][kind]
            print(
                f"    repeat {r} ({rep['first']} first): "
                + ", ".join(f"{k} {v}" for k, v in rep["ratios"][kind].items())
                + f"; paired ({pr['pairs']}): ttft {pr['ttft_p50']}, tpot {pr['tpot_p50']}"
            )
        pa = res["paired"][kind]
        print(f"    paired over all ({pa['pairs']} requests): ttft {pa['ttft_p50']}, tpot {pa['tpot_p50']}")
        sp = res["spread"][kind]
        print("    spread over repeats: " + ", ".join(f"{k} {v['min']}-{v['max']}" for k, v in sp.items() if v))
        print(f"    map-ahead: {res['maps'].get(kind)}")
        bm = res["beside_maps"][kind]
        print(
            f"    beside maps ({bm['driver_calls_traced']} traced): "
            + "; ".join(
                f"{g} {bm[g]['requests']} req, TTFT p50 {_ms(bm[g]['ttft_s']['p50'])} "
                f"p95 {_ms(bm[g]['ttft_s']['p95'])}, / static p50 {bm[g]['ratio_over_static_p50']}"
                for g in ("overlapped", "clear")
            )
        )
    lost = {kind: s for kind, s in res["servers"].items() if s["ok"] != s["requests"]}
    for kind, s in lost.items():
        print(f"  {kind}: {s['requests'] - s['ok']} request(s) failed: {'; '.join(s['errors'])}", file=sys.stderr)
    return 1 if lost else 0


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.2f} ms"


if __name__ == "__main__":
    sys.exit(main())
