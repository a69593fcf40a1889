"""Colocated decode with and without CUDA MPS (issue 17 §4): two stock SGLang servers on one GPU
share its compute by the driver's time-slicing between processes, or through the MPS daemon.

For each sharing mode (``timeslice``: no daemon; ``mps``: ``nvidia-cuda-mps-control -d`` with its
pipe and log directories under /tmp, started before the servers so that they attach at CUDA
init, and quit after them) four servers start at once with the project's own launch specs
(orchestrator.engines, as bench/shim/overhead.py does; dummy weights, a fixed KV pool each):
two Llama-3.2-1B and two Llama-3.1-8B shapes. Then, for each batch size N, closed-loop decode:
N streams per server, each sending one request after another (a short prompt, a fixed output
length with ignore_eos) for ``--phase-s`` seconds; each server alone, then each pair together:
1B+1B and 8B+8B (equal), 1B+8B (unequal). Reported per phase and server: TPOT p50/p95 and
output tokens/s; per pair: TPOT together / alone and total tokens/s together / the sum alone
would be if the GPU were not shared (and the mps / timeslice ratio of the pair's totals).

    python -m bench.gpu.mps --engine sim --phase-s 2 --batches 1,4   # CPU smoke (SIMULATED:
                                                                     # the sim engine has no MPS)
    bash bench/gpu/mps.sh                                            # on the GPU: one command

Writes mps.json and table.txt to ``--out``. Sizing the device command: two boots of four servers
at once (~100-150 s each with warm caches), 4 alone + 3 together phases per batch size, three
batch sizes of 8 s: 2 x (150 + 21 x 9) ~ 680 s is too long, so the default is two batch sizes
(2 x (150 + 14 x 9) ~ 550 s); ``--batches`` and ``--phase-s`` trade coverage for time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.client.loadgen import ClientConfig, send_one
from bench.client.prompts import COMPLETIONS
from bench.client.record import RequestRecord
from bench.report.summary import distribution
from bench.traces import BenchRequest
from orchestrator.config import parse_config
from orchestrator.engines.base import LaunchRequest, get_engine
from orchestrator.errors import EngineStartError
from orchestrator.shapes.materialize import dummy_model_dir
from orchestrator.supervisor.mps import CONTROL, BinaryControl, MpsDaemon, MpsDirs, MpsError
from orchestrator.supervisor.ports import free_ports
from orchestrator.supervisor.process import EngineProcess

SERVERS = {"1b-a": "llama-3.2-1b", "1b-b": "llama-3.2-1b", "8b-a": "llama-3.1-8b", "8b-b": "llama-3.1-8b"}
PAIRS = (("1b-a", "1b-b"), ("8b-a", "8b-b"), ("1b-a", "8b-a"))
MODES = ("timeslice", "mps")
# bench/gpu/mps.sh quits the daemon there too, should this script be cut
DIRS = MpsDirs(Path("/tmp/chimera-mps/pipe"), Path("/tmp/chimera-mps/log"), private=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu.mps", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engine", choices=("sglang", "sim"), default="sglang")
    p.add_argument("--modes", default=",".join(MODES), help="sharing modes, in order (default %(default)s)")
    p.add_argument("--batches", default="4,32", help="concurrent streams per server (default %(default)s)")
    p.add_argument("--phase-s", type=float, default=8.0, help="seconds of decode per phase")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--output", type=int, default=128, help="output tokens per request (ignore_eos)")
    p.add_argument("--kv-pool-gb", type=float, default=4.0, help="KV pool of each server")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/gpu-mps"))
    return p.parse_args(argv)


def mps_daemon(start: bool) -> str:
    """Start (``-d``) or quit the MPS control daemon, as ``up`` does (orchestrator/supervisor/
    mps.py); returns what went wrong, or ''."""
    daemon = MpsDaemon(BinaryControl(CONTROL), DIRS)
    if start:
        try:
            asyncio.run(daemon.start())
        except MpsError as exc:
            return str(exc)
        return ""
    rc, out = asyncio.run(daemon.control((), "quit\n", DIRS.env()))
    return "" if rc == 0 else f"{CONTROL} exited {rc}: {out[:300]}"


async def start_servers(args: argparse.Namespace, work: Path, mode: str) -> dict[str, EngineProcess]:
    raw = {
        "host": {"gpus": 1},
        "mode": "static",
        "models": [
            {
                "name": name,
                "model_path": shape,
                "load_format": "dummy",
                "placements": [{"gpus": [0], "kv_pool_gb": args.kv_pool_gb}],
            }
            for name, shape in SERVERS.items()
        ],
    }
    cfg = parse_config(raw, gpu_count=1)
    engine = get_engine(args.engine)
    ports = iter(free_ports(2 * len(cfg.instances)))
    procs: dict[str, EngineProcess] = {}
    for inst in cfg.instances:
        shape = inst.model.shape.name
        model_dir = str(dummy_model_dir(shape, work / "cache")) if engine.needs_model_dir else None
        spec = engine.launch_spec(LaunchRequest(inst, cfg.host, next(ports), next(ports), model_dir=model_dir))
        if mode == "mps":  # the servers attach to the daemon through its pipe directory
            spec = type(spec)(
                spec.argv, {**spec.env, **DIRS.env()}, spec.base_url, spec.served_name, spec.ready_timeout_s
            )
        procs[inst.model.name] = EngineProcess(inst.model.name, spec, work / f"{mode}-{inst.model.name}.log")
    try:
        for p in procs.values():
            await p.spawn()
        async with httpx.AsyncClient(trust_env=False) as client:
            await asyncio.gather(*(p.wait_ready(client) for p in procs.values()))
    except BaseException:
        await asyncio.gather(*(p.stop() for p in procs.values()))
        raise
    return procs


async def closed_loop(
    client: httpx.AsyncClient, proc: EngineProcess, streams: int, seconds: float, args: argparse.Namespace
) -> list[RequestRecord]:
    """``streams`` workers, each sending one request after another until ``seconds`` pass."""
    cfg = ClientConfig(proc.spec.base_url, COMPLETIONS, seed=0, ids=True, request_timeout_s=seconds + 120.0)
    t0 = time.perf_counter()
    out: list[RequestRecord] = []

    async def worker(w: int) -> None:
        i = 0
        while time.perf_counter() - t0 < seconds:
            req = BenchRequest(
                w * 100_000 + i, time.perf_counter() - t0, proc.spec.served_name, args.prompt, args.output
            )
            out.append(await send_one(client, cfg, req, t0))
            i += 1

    await asyncio.gather(*(worker(w) for w in range(streams)))
    return out


def phase_stats(recs: list[RequestRecord], wall_s: float) -> dict[str, Any]:
    ok = [r for r in recs if r.ok]
    return {
        "requests": len(recs),
        "ok": len(ok),
        "errors": sorted({r.error for r in recs if not r.ok})[:3],
        "tpot_s": distribution(r.tpot_s for r in ok if r.tpot_s is not None),
        "tokens_per_s": sum(r.output_tokens for r in ok) / wall_s if wall_s > 0 else 0.0,
    }


async def run_phase(
    client: httpx.AsyncClient, procs: dict[str, EngineProcess], names: tuple[str, ...], n: int, args: argparse.Namespace
) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = await asyncio.gather(*(closed_loop(client, procs[m], n, args.phase_s, args) for m in names))
    wall = time.perf_counter() - t0
    return {m: phase_stats(r, wall) for m, r in zip(names, res, strict=True)}


async def one_mode(args: argparse.Namespace, mode: str, batches: list[int]) -> dict[str, Any]:
    t0 = time.monotonic()
    procs = await start_servers(args, args.out / "work", mode)
    boot = time.monotonic() - t0
    print(f"{mode}: four servers up in {boot:.0f} s", flush=True)
    out: dict[str, Any] = {"boot_s": boot, "batches": {}}
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=None) as client:
            for n in batches:
                alone = {m: (await run_phase(client, procs, (m,), n, args))[m] for m in SERVERS}
                together = {f"{a}+{b}": await run_phase(client, procs, (a, b), n, args) for a, b in PAIRS}
                out["batches"][str(n)] = {"alone": alone, "together": together}
                print(f"{mode} batch {n}: done", flush=True)
    finally:
        await asyncio.gather(*(p.stop() for p in procs.values()))
    return out


def pair_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per mode, batch and pair: TPOT p50 together / alone for each side, and tokens/s."""
    rows = []
    for mode, m in doc["modes"].items():
        for n, b in m.get("batches", {}).items():
            for pair, tog in b["together"].items():
                a, c = pair.split("+")
                row: dict[str, Any] = {"mode": mode, "batch": int(n), "pair": pair}
                for side in (a, c):
                    alone, with_ = b["alone"][side]["tpot_s"]["p50"], tog[side]["tpot_s"]["p50"]
                    row[f"tpot_p50_alone_{side}"] = alone
                    row[f"tpot_p50_together_{side}"] = with_
                    row[f"slowdown_{side}"] = with_ / alone if alone and with_ else None
                row["tokens_per_s_together"] = sum(tog[s]["tokens_per_s"] for s in (a, c))
                row["tokens_per_s_alone_sum"] = sum(b["alone"][s]["tokens_per_s"] for s in (a, c))
                rows.append(row)
    totals = {(r["batch"], r["pair"], r["mode"]): r["tokens_per_s_together"] for r in rows}
    for r in rows:
        base = totals.get((r["batch"], r["pair"], "timeslice"))
        r["mps_over_timeslice"] = (
            totals[(r["batch"], r["pair"], "mps")] / base if base and (r["batch"], r["pair"], "mps") in totals else None
        )
    return rows


def table_text(doc: dict[str, Any]) -> str:
    out = io.StringIO()
    label = "SIMULATED (sim engine: no MPS, the modes differ in nothing)" if doc["simulated"] else "stock SGLang"
    out.write(f"colocated decode, {doc['output']} output tokens per request: {label}\n")
    out.write(
        f"{'mode':>9} {'batch':>5} {'pair':>9} {'TPOT p50 alone ms':>19} {'together ms':>13} "
        f"{'slowdown':>11} {'tok/s together':>14} {'sum alone':>9} {'mps/ts':>6}\n"
    )
    for r in pair_rows(doc):
        a, c = r["pair"].split("+")

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.1f}"

        def x(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        out.write(
            f"{r['mode']:>9} {r['batch']:>5} {r['pair']:>9} "
            f"{ms(r[f'tpot_p50_alone_{a}']) + ' / ' + ms(r[f'tpot_p50_alone_{c}']):>19} "
            f"{ms(r[f'tpot_p50_together_{a}']) + ' / ' + ms(r[f'tpot_p50_together_{c}']):>13} "
            f"{x(r[f'slowdown_{a}']) + ' / ' + x(r[f'slowdown_{c}']):>11} "
            f"{r['tokens_per_s_together']:>14.0f} {r['tokens_per_s_alone_sum']:>9.0f} {x(r['mps_over_timeslice']):>6}\n"
        )
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        print(f"error: unknown mode(s) {sorted(unknown)} (known: {', '.join(MODES)})", file=sys.stderr)
        return 2
    doc: dict[str, Any] = {
        "schema": "chimera-gpu-mps/1",
        "engine": args.engine,
        "simulated": args.engine == "sim",
        "servers": SERVERS,
        "pairs": [list(p) for p in PAIRS],
        "phase_s": args.phase_s,
        "prompt": args.prompt,
        "output": args.output,
        "modes": {},
    }
    rc = 0
    for mode in modes:
        daemon = mode == "mps" and args.engine == "sglang"
        if daemon and (err := mps_daemon(True)):
            doc["modes"][mode] = {"error": err}
            rc = 1
            continue
        try:
            doc["modes"][mode] = asyncio.run(one_mode(args, mode, batches))
        except EngineStartError as exc:
            doc["modes"][mode] = {"error": f"a server did not start: {exc}"}
            rc = 1
        finally:
            if daemon and (err := mps_daemon(False)):
                doc["modes"][mode]["daemon_quit_error"] = err
        (args.out / "mps.json").write_text(json.dumps(doc, indent=1))  # a cut run keeps its modes
    doc["pairs_summary"] = pair_rows(doc)
    (args.out / "mps.json").write_text(json.dumps(doc, indent=1))
    (args.out / "table.txt").write_text(table_text(doc))
    print(table_text(doc))
    return rc


if __name__ == "__main__":
    sys.exit(main())
