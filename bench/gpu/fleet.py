"""``python -m bench.gpu.fleet``: how long ``up`` takes for N servers on one GPU, per phase,
against one server's boot measured in the same run (issue 17 §1, "Fast fleet start").

1. Boots the first model alone (``chimera-orch up`` on a one-model placements file) and times
   it: the wall from launching chimera to the model awake, and the per-phase record the
   supervisor writes (``startup.json``: spawn, init, weights, KV, graphs, ready, probe).
2. Boots all N models on GPU 0 at once (servers sharing a GPU start concurrently) and times
   the same way.
3. Writes, in --out (the GPU machine returns at most eight files; this leaves three):
   fleet.json (both runs: wall, per-instance phases, GPU budget against measured footprint,
   the ratio fleet ÷ single against the target of 1.5), table.txt (the same as a table) and
   logs.txt (tails of chimera's and the engines' logs).

The models are shipped shapes with dummy weights (no download), mixed sizes, each with a
``kv_pool_gb`` small enough that their budgets fit in ``--gpu-memory-gb`` (80 by default: an
H200 stands for an 80 GB H100; every budget is computed from that figure, not from the card).
Mode static by default: fixed pools, started with ``--max-total-tokens`` and the fraction that
holds beside the others (orchestrator/deployment.py); ``--mode elastic`` runs the shim path.

    python -m bench.gpu.fleet --engine sglang --out "$OUT"                        # on the GPU
    python -m bench.gpu.fleet --engine sim --sim-start-delay 2 --out runs/fleet   # on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from bench.calibration.data import provenance
from bench.live.process import ChimeraStartError, start_chimera

console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)
# Six of mixed shapes; their start budgets (context, weights, graphs, activations, 1 GiB of KV)
# come to ~76 GiB, within 80.
DEFAULT_MODELS = ("llama-3.1-8b", "qwen2.5-7b", "llama-3.2-3b", "llama-3.2-1b", "llama-3.2-1b", "llama-3.2-1b")
TARGET_RATIO = 1.5  # issue 17: up of 6 servers <= 1.5x the slowest single server's boot
FILES = ("fleet.json", "table.txt", "logs.txt")
PHASES = ("spawn", "init", "weights", "kv", "graphs", "ready", "probe", "total")
LOG_TAIL_BYTES = 40_000


def placements(shapes: list[str], mode: str, gpu_memory_gb: float, kv_pool_gb: float) -> dict[str, Any]:
    return {
        "mode": mode,
        "host": {"gpus": 1, "gpu_memory_gb": gpu_memory_gb},
        "models": [
            {
                "name": f"m{i}-{shape}",
                "model_path": shape,
                "load_format": "dummy",
                "placements": [{"gpus": [0], "on": True, "kv_pool_gb": kv_pool_gb}],
            }
            for i, shape in enumerate(shapes)
        ],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu.fleet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engine", choices=("sglang", "sim"), default="sglang")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/fleet"))
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--mode", choices=("static", "elastic"), default="static")
    p.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="shapes, comma-separated; the first one also boots alone"
    )
    p.add_argument("--gpu-memory-gb", type=float, default=80.0)
    p.add_argument("--kv-pool-gb", type=float, default=1.0, help="each model's KV pool")
    p.add_argument(
        "--max-wall",
        type=float,
        default=560.0,
        metavar="S",
        help="both boots end within this many seconds (the GPU machine cuts at 600)",
    )
    p.add_argument(
        "--sim-start-delay",
        type=float,
        default=2.0,
        metavar="S",
        help="simulated boot of each sim server (sim engine only)",
    )
    p.add_argument(
        "--serial", action="store_true", help="CHIMERA_SERIAL_STARTS=1: the fleet starts one server at a time"
    )
    return p


def boot(name: str, cfg: dict[str, Any], work: Path, args: argparse.Namespace, timeout_s: float) -> dict[str, Any]:
    """``up`` on ``cfg``; the wall until every model is awake and the supervisor's records."""
    run = work / name
    run.mkdir(parents=True, exist_ok=True)
    path = run / "placements.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {"CHIMERA_SIM_START_DELAY_S": f"{args.sim_start_delay:g}", "CHIMERA_SIM_SPEED": "0"}
    if args.serial:
        env["CHIMERA_SERIAL_STARTS"] = "1"
    t = time.monotonic()
    ch = start_chimera(path, run, engine=args.engine, env=env, ready_timeout_s=timeout_s)
    wall = time.monotonic() - t
    try:
        records = json.loads((run / "engines" / "startup.json").read_text())
    finally:
        orphans = ch.stop()
    return {"wall_s": round(wall, 3), "instances": records, "orphans": orphans}


def overshoots(run: dict[str, Any]) -> list[str]:
    out = []
    for iid, r in run["instances"].items():
        budget, measured = r.get("budget_bytes"), r.get("measured_bytes")
        if budget and measured and r.get("per_process") and measured > budget:
            out.append(f"{iid}: {measured / 2**30:.2f} GiB > budget {budget / 2**30:.2f} GiB")
    return out


def table(result: dict[str, Any]) -> str:
    head = f"{'run':7} {'instance':28} " + " ".join(f"{p:>8}" for p in PHASES) + f" {'budget':>8} {'measured':>9}"
    lines = [head, "-" * len(head)]
    for run in ("single", "fleet"):
        for iid, r in result[run]["instances"].items():
            ph = r["phases_s"]
            cells = " ".join(f"{ph[p]:8.1f}" if ph.get(p) is not None else f"{'-':>8}" for p in PHASES)
            gib = [f"{(r.get(k) or 0) / 2**30:.1f}" for k in ("budget_bytes", "measured_bytes")]
            lines.append(f"{run:7} {iid:28} {cells} {gib[0]:>8} {gib[1]:>9}")
    lines += [
        "",
        f"single boot: {result['single']['wall_s']:.1f} s; up of "
        f"{len(result['fleet']['instances'])}: {result['fleet']['wall_s']:.1f} s; ratio "
        f"{result['ratio']:.2f} (target <= {TARGET_RATIO})" + ("" if result["ratio"] <= TARGET_RATIO else "  MISSED"),
    ]
    lines += [f"OVER BUDGET {o}" for o in result["overshoots"]] or ["no instance over its budget"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    t_start = time.monotonic()
    args = build_parser().parse_args(argv)
    shapes = [s for s in args.models.split(",") if s]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="chimera-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "engine": {"name": args.engine, "simulated": args.engine == "sim"},
        "config": {
            "mode": args.mode,
            "models": shapes,
            "gpu_memory_gb": args.gpu_memory_gb,
            "kv_pool_gb": args.kv_pool_gb,
            "serial": args.serial,
            "sim_start_delay_s": args.sim_start_delay if args.engine == "sim" else None,
        },
        "target_ratio": TARGET_RATIO,
        "provenance": provenance(args.engine, ["python", "-m", "bench.gpu.fleet", *(argv or sys.argv[1:])]),
    }
    rc = 0
    try:
        for name, models in (("single", shapes[:1]), ("fleet", shapes)):
            left = args.max_wall - (time.monotonic() - t_start)
            console.print(
                f"[bold]fleet[/]: {name}: {len(models)} server(s) on GPU 0 ({args.engine}, limit {left:.0f} s)"
            )
            cfg = placements(models, args.mode, args.gpu_memory_gb, args.kv_pool_gb)
            result[name] = boot(name, cfg, work, args, max(10.0, left))
            console.print(f"  {name}: up in {result[name]['wall_s']:.1f} s")
    except ChimeraStartError as exc:
        console.print(f"[red]boot failed[/]: {exc}")
        result["error"] = str(exc)[-3000:]
        rc = 1
    if "fleet" in result:
        result["ratio"] = round(result["fleet"]["wall_s"] / result["single"]["wall_s"], 3)
        result["overshoots"] = overshoots(result["single"]) + overshoots(result["fleet"])
        text = table(result)
        (args.out / "table.txt").write_text(text)
        console.print(text)
        rc = rc or (1 if result["overshoots"] else 0)
    (args.out / "fleet.json").write_text(json.dumps(result, indent=1))
    _write_logs(args.out / "logs.txt", work)
    return rc


def _write_logs(path: Path, work: Path) -> None:
    parts = []
    for log in sorted(work.glob("*/chimera.log")) + sorted(work.glob("*/engines/*.log")):
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - LOG_TAIL_BYTES))
            parts.append(f"===== {log.relative_to(work)} =====\n{f.read().decode(errors='replace')}")
    path.write_text("\n".join(parts))


if __name__ == "__main__":
    sys.exit(main())
