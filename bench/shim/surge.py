"""Two models colocated on one GPU, and model B's load surges (the shape of Prism's Figure 6):
with elastic KV (chimera mode ``elastic``: cumem_shim + the KV ledger) B's mapped KV grows and
A's shrinks within a control period, and B serves more than it can with the GPU's KV split in
fixed halves (mode ``static``). Both modes run the same trace through chimera's proxy, one after
the other, on the same placements (only ``mode`` and the pool sizes differ).

    python -m bench.shim.surge --engine sglang          # on the GPU host (two 8B shapes)
    python -m bench.shim.surge --engine sim --warm-s 4 --surge-s 8 --cool-s 2   # simulated

``--gpu-memory-gb`` sets the GPU size the placements file declares, i.e. the memory the KV ledger
splits: smaller than the real card, it makes KV the scarce resource without a big model.
Writes ``surge.json`` and ``surge.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.client.loadgen import ClientConfig, ClientShards, run_open_loop
from bench.client.prompts import COMPLETIONS
from bench.client.record import RequestRecord
from bench.client.server import chimera_families
from bench.live.process import ChimeraStartError, start_chimera
from bench.report.summary import distribution
from bench.traces import BenchRequest
from bench.traces.request import renumber
from orchestrator.config import GIB, parse_config
from orchestrator.deployment import derive
from orchestrator.kv.ledger import Ledger, non_kv_bytes
from orchestrator.kv.wiring import kv_instances
from orchestrator.types import InstanceState, InstanceView

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MODES = ("static", "elastic")
POLL_S = 0.25
SERIES = {"chimera_kv_limit_bytes": "limit", "chimera_kv_mapped_bytes": "mapped"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.shim.surge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engine", choices=("sglang", "sim"), default="sglang")
    p.add_argument("--model", default=MODEL, help="both models' shape (dummy weights)")
    p.add_argument(
        "--gpu-memory-gb", type=float, default=48.0, help="GPU size declared in the placements file (default 48)"
    )
    p.add_argument("--modes", default=",".join(MODES), help="static,elastic (default both)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size of both models: GPUs 0..tp-1 (default 1)")
    p.add_argument("--rate-a", type=float, default=1.0, help="A's steady req/s")
    p.add_argument("--rate-b", type=float, default=1.0, help="B's req/s outside the surge")
    p.add_argument("--surge-rate-b", type=float, default=12.0, help="B's req/s in the surge")
    p.add_argument("--warm-s", type=float, default=15.0)
    p.add_argument("--surge-s", type=float, default=40.0)
    p.add_argument("--cool-s", type=float, default=10.0)
    p.add_argument("--prompt", type=int, default=2000, help="prompt tokens (default 2000)")
    p.add_argument("--output", type=int, default=400, help="output tokens (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ready-timeout-s", type=float, default=400.0)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/shim-surge")))
    return p.parse_args(argv)


def kv_budget(args: argparse.Namespace) -> int:
    """What the KV ledger splits on the GPU with both models awake (``Ledger.budget``). Static
    mode gives each model half of it."""
    cfg = parse_config(placements(args, "elastic", GIB), gpu_count=args.tp)
    views = [InstanceView(i.id, i.model.name, i.gpus, InstanceState.AWAKE, None) for i in cfg.instances]
    instances = kv_instances(views, derive(cfg))
    return Ledger({0: int(args.gpu_memory_gb * GIB)}).budget(0, non_kv_bytes(instances))


def placements(args: argparse.Namespace, mode: str, budget: int) -> dict[str, Any]:
    # kv_pool_gb is the server's pool over its TP group: ``budget`` is per GPU
    pool = (budget / 2 if mode == "static" else budget) * args.tp
    extra = {} if mode == "static" else {"kv_floor_gb": 1}
    return {
        "mode": mode,
        "host": {"gpus": args.tp, "gpu_memory_gb": args.gpu_memory_gb},
        "models": [
            {
                "name": n,
                "model_path": args.model,
                "load_format": "dummy",
                "tp_size": args.tp,
                "placements": [{"gpus": list(range(args.tp)), "kv_pool_gb": round(pool / GIB, 3), **extra}],
            }
            for n in ("a", "b")
        ],
    }


def trace(args: argparse.Namespace) -> list[BenchRequest]:
    rng = random.Random(args.seed)
    end = args.warm_s + args.surge_s + args.cool_s
    phases = {
        "a": [(0.0, end, args.rate_a)],
        "b": [
            (0.0, args.warm_s, args.rate_b),
            (args.warm_s, args.warm_s + args.surge_s, args.surge_rate_b),
            (args.warm_s + args.surge_s, end, args.rate_b),
        ],
    }
    reqs = []
    for model, spans in phases.items():
        for t0, t1, rate in spans:
            t = t0 + rng.expovariate(rate)
            while t < t1:
                reqs.append(BenchRequest(0, t, model, args.prompt, args.output, source=model))
                t += rng.expovariate(rate)
    return renumber(reqs)


class Poller:
    """Reads chimera's /metrics every POLL_S in a thread: KV limit and mapped bytes per model."""

    def __init__(self, base: str) -> None:
        self.base, self.rows, self.t0 = base, [], time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(trust_env=False, timeout=5) as c:
            while not self._stop.wait(POLL_S):
                try:
                    text = c.get(self.base + "/metrics").text
                except httpx.HTTPError:
                    continue
                row: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 3)}
                for fam in chimera_families(text):
                    key = SERIES.get(fam.name)
                    if key:
                        for s in fam.samples:
                            row[f"{key}_{s.labels['model']}"] = s.value
                self.rows.append(row)


def run_mode(args: argparse.Namespace, mode: str, budget: int, reqs: list[BenchRequest], out: Path) -> dict[str, Any]:
    path = out / f"placements-{mode}.yaml"
    path.write_text(yaml.safe_dump(placements(args, mode, budget)))
    print(f"[{mode}] starting chimera ({args.engine} engine)...", flush=True)
    t_start = time.monotonic()
    ch = start_chimera(path, out / f"run-{mode}", engine=args.engine, ready_timeout_s=args.ready_timeout_s)
    boot_s = time.monotonic() - t_start
    print(f"[{mode}] up in {boot_s:.0f} s; replaying {len(reqs)} requests", flush=True)
    try:
        with Poller(ch.base) as poll:
            records = asyncio.run(_replay(ch.base, reqs))
            time.sleep(2 * POLL_S)
    finally:
        orphans = ch.stop()
    return {"boot_s": round(boot_s, 1), "orphans": orphans, **analyse(args, records, poll.rows)}


async def _replay(base: str, reqs: list[BenchRequest]) -> list[RequestRecord]:
    async with ClientShards(4) as shards:
        return await run_open_loop(reqs, ClientConfig(base, COMPLETIONS, ids=True), shards)


def analyse(args: argparse.Namespace, records: list[RequestRecord], rows: list[dict[str, Any]]) -> dict[str, Any]:
    s0, s1 = args.warm_s, args.warm_s + args.surge_s
    b = [r for r in records if r.model == "b"]
    a = [r for r in records if r.model == "a"]
    surge_b = [r for r in b if s0 <= r.arrival_s < s1]
    timeline = token_timeline(b, step=1.0)
    # B's output tokens generated while the surge lasts (open loop: what is not served then
    # queues and is served later, so completed totals would hide the difference)
    surge_tps = sum(v for t, v in timeline if s0 <= t < s1) / (s1 - s0)
    before = [r for r in rows if r["t"] < s0 and "limit_b" in r]
    grow = None
    if before:
        base_limit = before[-1]["limit_b"]
        first = next((r["t"] for r in rows if r["t"] >= s0 and r.get("limit_b", 0) > base_limit * 1.05), None)
        grow = None if first is None else round(first - s0, 2)
    return {
        "requests": {"a": len(a), "b": len(b), "b_surge": len(surge_b)},
        "failed": {"a": sum(not r.ok for r in a), "b": sum(not r.ok for r in b)},
        "b_surge_tokens_per_s": round(surge_tps, 1),
        "b_surge_ttft_s": distribution(r.ttft_s for r in surge_b if r.ok and r.ttft_s),
        "b_surge_e2e_s": distribution(r.e2e_s for r in surge_b if r.ok and r.e2e_s),
        "a_ttft_s": distribution(r.ttft_s for r in a if r.ok and r.ttft_s),
        "a_tpot_s": distribution(r.tpot_s for r in a if r.ok and r.tpot_s),
        "b_limit_grows_after_s": grow,
        "timeline": rows,
        "b_tokens_timeline": timeline,
    }


def token_timeline(recs: list[RequestRecord], step: float = 2.0) -> list[tuple[float, float]]:
    """Output tokens per second in ``step``-second bins, each request's tokens spread evenly
    between its first token and its end."""
    bins: dict[int, float] = {}
    for r in recs:
        if not (r.ok and r.ttft_s is not None and r.e2e_s is not None and r.output_tokens):
            continue
        t0, t1 = r.sent_at_s + r.ttft_s, r.sent_at_s + r.e2e_s
        per_s = r.output_tokens / max(t1 - t0, 1e-6)
        k = int(t0 // step)
        while k * step < t1:
            lo, hi = max(t0, k * step), min(t1, (k + 1) * step)
            bins[k] = bins.get(k, 0.0) + per_s * (hi - lo)
            k += 1
    return [(k * step, round(v / step, 1)) for k, v in sorted(bins.items())]


def plot(res: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    el = res["modes"].get("elastic")
    if el:
        for m, color in (("a", "tab:blue"), ("b", "tab:orange")):
            rows = [r for r in el["timeline"] if f"mapped_{m}" in r]
            top.plot(
                [r["t"] for r in rows], [r[f"mapped_{m}"] / GIB for r in rows], color=color, label=f"{m}: mapped KV"
            )
            top.plot(
                [r["t"] for r in rows], [r[f"limit_{m}"] / GIB for r in rows], color=color, ls="--", label=f"{m}: limit"
            )
    top.axhline(res["kv_budget_bytes"] / 2 / GIB, color="grey", ls=":", label="static half")
    top.set_ylabel("GiB (elastic)")
    top.legend(fontsize=7, ncol=3, loc="upper left")
    for mode, r in res["modes"].items():
        pts = r["b_tokens_timeline"]
        bottom.plot([p[0] for p in pts], [p[1] for p in pts], label=f"B, {mode}")
    for ax in (top, bottom):
        ax.axvspan(args.warm_s, args.warm_s + args.surge_s, color="grey", alpha=0.1)
    bottom.set_ylabel("B output tokens/s")
    bottom.set_xlabel("seconds (grey: B's surge)")
    bottom.legend(fontsize=8)
    sim = " (SIMULATED)" if res["simulated"] else ""
    fig.suptitle(f"Two {res['model'].split('/')[-1]} on one GPU, B surges{sim}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        print(f"--modes: pick from {', '.join(MODES)}", file=sys.stderr)
        return 2
    budget = kv_budget(args)
    if budget < 2 * GIB:
        print(
            f"--gpu-memory-gb {args.gpu_memory_gb:g} leaves {budget / GIB:.1f} GiB of KV for two models: raise it",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    reqs = trace(args)
    res: dict[str, Any] = {
        "engine": args.engine,
        "simulated": args.engine == "sim",
        "model": args.model,
        "gpu_memory_gb": args.gpu_memory_gb,
        "kv_budget_bytes": budget,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "modes": {},
    }
    for mode in modes:
        try:
            res["modes"][mode] = run_mode(args, mode, budget, reqs, args.out)
        except ChimeraStartError as exc:
            print(f"[{mode}] chimera did not start: {exc}", file=sys.stderr)
            return 1
        r = res["modes"][mode]
        print(
            f"[{mode}] B in the surge: {r['b_surge_tokens_per_s']} output tokens/s, "
            f"TTFT p50 {r['b_surge_ttft_s']['p50']}; failed {r['failed']}; B's limit grew "
            f"{r['b_limit_grows_after_s']} s after the surge began",
            flush=True,
        )
    if {"static", "elastic"} <= set(res["modes"]):
        st, el = res["modes"]["static"], res["modes"]["elastic"]
        res["b_throughput_ratio_elastic_over_static"] = (
            round(el["b_surge_tokens_per_s"] / st["b_surge_tokens_per_s"], 3) if st["b_surge_tokens_per_s"] else None
        )
        print(f"B's surge throughput, elastic / static: {res['b_throughput_ratio_elastic_over_static']}")
    (args.out / "surge.json").write_text(json.dumps(res, indent=1))
    plot(res, args, args.out / "surge.png")
    failed = sum(sum(r["failed"].values()) for r in res["modes"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
