"""``python -m bench.gpu.trace``: the live trace on one GPU (issue 7, "On the H100"), and the
data a calibration of the sim engine needs (``python -m bench.calibration.calibrate OUT`` fits it).

1. Writes a placements file: the Llama-3.2-1B and Llama-3.1-8B shapes (dummy weights) as two
   stock SGLang servers on GPU 0, both ``on: true``, ``mode`` full; starts ``chimera-orch up``
   (bench/live/process.py) and waits until both are awake, printing their states as they change.
2. Scrapes the engines' ``sglang:*`` series through chimera's /metrics.
3. Replays a seeded synthetic trace (Prism's generator, bench/traces) open-loop through the
   proxy: streaming /v1/completions, token-id prompts (exact prompt lengths on any engine),
   fixed output lengths (bench/live/session.py, bench/client).
4. Scrapes /metrics again, reads the engines' "Decode batch" / "Prefill batch" log lines
   (bench/calibration/data.py), writes the files, then stops chimera (no engine may outlive
   it) and adds what the stop found to calibration_data.json and logs.txt.
5. The files, exactly six in --out (the GPU machine returns at most eight):
   report.json, requests.jsonl (per request: prompt/output tokens, TTFT, TPOT, ITL, E2E),
   table.txt, timeline.png, calibration_data.json (metrics before/after, log samples,
   provenance: GPU, driver, SGLang, command, date), logs.txt (tails of chimera's and the
   engines' logs). Everything else (chimera's run dir) stays in --work-dir.

Time: the whole run must end within --max-wall seconds (the GPU machine cuts a command at
600 s). Two SGLang boots take ~60-100 s each there; if they take longer, the trace is
shortened to fit and the report says so (config.duration_planned_s vs duration_s).

    python -m bench.gpu.trace --engine sglang --out "$OUT"                 # on the H100
    python -m bench.gpu.trace --engine sim --duration 20 --out runs/gpu-trace   # on a CPU
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console

from bench.calibration import data as calibration_data
from bench.client import COMPLETIONS
from bench.live.options import token_range
from bench.live.process import ChimeraStartError, start_chimera
from bench.live.session import SessionSpec, run_session
from bench.report import print_report, read_records, write_json
from bench.traces import SyntheticSpec, TraceOptions

console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)
MODELS = (  # (name, model path, KV pool GB): tests/gpu/conftest.py's shapes and pools
    ("llama-1b", "meta-llama/Llama-3.2-1B-Instruct", 8),
    ("llama-8b", "meta-llama/Llama-3.1-8B-Instruct", 16),
)
# After the trace: the last answers (<= --request-timeout; ~3 s for a 256-token 8B answer on
# the H100), a scrape, the files, the plot, chimera's stop (6 s for three servers on the H100).
TAIL_S = 30.0
MIN_TRACE_S = 20.0
FILES = ("report.json", "requests.jsonl", "table.txt", "timeline.png", "calibration_data.json", "logs.txt")
LOG_TAIL_BYTES = 60_000  # per log in logs.txt


def placements(mode: str, engine: str, decode_log_interval: int) -> dict[str, Any]:
    # SGLang logs a "Decode batch" line every --decode-log-interval decode steps (default 40):
    # more often = more, shorter samples of the step time (calibration_data.py).
    args = ["--decode-log-interval", str(decode_log_interval)] if engine == "sglang" else []
    return {
        "mode": mode,
        "models": [
            {
                "name": name,
                "model_path": path,
                "load_format": "dummy",
                "engine_args": args,
                "placements": [{"gpus": [0], "on": True, "kv_pool_gb": kv}],
            }
            for name, path, kv in MODELS
        ],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu.trace", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--engine",
        choices=("sglang", "sim"),
        default="sglang",
        help="stock SGLang on a GPU host, or the sim engine on a CPU (SIMULATED)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or "runs/gpu-trace"),
        help="folder of the six result files (default: $OUT, else runs/gpu-trace)",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="chimera's run dir and logs (default: a new folder under the temp dir)",
    )
    p.add_argument("--mode", choices=("static", "elastic", "full"), default="full")
    g = p.add_argument_group("trace (Prism's synthetic generator)")
    g.add_argument("--duration", type=float, default=300.0, help="seconds of arrivals")
    g.add_argument("--rate", type=float, default=6.0, help="requests/s over both models")
    g.add_argument(
        "--alpha", type=float, default=1.0, help="power-law popularity exponent (1 = an even split between the models)"
    )
    g.add_argument("--cv", type=float, default=1.0, help="CV of Gamma inter-arrival gaps")
    g.add_argument(
        "--input-range",
        type=token_range,
        default=(128, 1024),
        metavar="LO,HI",
        help="uniform prompt tokens in [LO, HI)",
    )
    g.add_argument(
        "--output-range", type=token_range, default=(64, 256), metavar="LO,HI", help="uniform output tokens in [LO, HI)"
    )
    g.add_argument("--seed", type=int, default=42)
    g.add_argument(
        "--ttft-slo",
        type=float,
        default=1.0,
        metavar="S",
        help="TTFT objective for the report's attainment (not given to chimera)",
    )
    g.add_argument(
        "--tpot-slo",
        type=float,
        default=0.1,
        metavar="S",
        help="TPOT objective for the report's attainment (not given to chimera)",
    )
    g = p.add_argument_group("time and engines")
    g.add_argument(
        "--max-wall",
        type=float,
        default=540.0,
        metavar="S",
        help="the whole run ends within this many seconds (default %(default)s)",
    )
    g.add_argument(
        "--ready-timeout",
        type=float,
        default=None,
        metavar="S",
        help="boot limit (default: --max-wall minus the trace's minimum and tail)",
    )
    g.add_argument("--request-timeout", type=float, default=60.0, metavar="S")
    g.add_argument(
        "--decode-log-interval", type=int, default=10, help="SGLang's --decode-log-interval (sglang engine only)"
    )
    g.add_argument("--sim-speed", type=float, default=1.0, help="sim engine time scale (1 = the calibrated H100)")
    return p


def main(argv: list[str] | None = None) -> int:
    t_start = time.monotonic()
    args = build_parser().parse_args(argv)
    command = ["python", "-m", "bench.gpu.trace", *map(shlex.quote, argv or sys.argv[1:])]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="chimera-gpu-trace-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = placements(args.mode, args.engine, args.decode_log_interval)
    cfg_path = work / "placements.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    ready_timeout = args.ready_timeout or args.max_wall - TAIL_S - MIN_TRACE_S
    env = {"CHIMERA_SIM_SPEED": f"{args.sim_speed:g}"}
    console.print(
        f"[bold]gpu trace[/]: {args.engine} engine, work dir {work}, results in "
        f"{args.out}; booting {len(MODELS)} servers (limit {ready_timeout:.0f} s)"
    )

    def progress(states: dict[str, str]) -> None:
        shown = ", ".join(f"{n} {states.get(n, '?')}" for n, _, _ in MODELS)
        console.print(f"  t={time.monotonic() - t_start:5.0f} s  {shown}", highlight=False)

    try:
        ch = start_chimera(
            cfg_path, work / "chimera", engine=args.engine, env=env, ready_timeout_s=ready_timeout, progress=progress
        )
    except ChimeraStartError as exc:
        console.print(f"[red]chimera did not start:[/] {exc}", markup=False)
        _write_logs(args.out / "logs.txt", work)
        return 1
    boot_s = time.monotonic() - t_start
    left = args.max_wall - boot_s - TAIL_S
    duration = min(args.duration, max(MIN_TRACE_S, left))
    if duration < args.duration:
        console.print(
            f"[yellow]boots took {boot_s:.0f} s: trace shortened from "
            f"{args.duration:g} s to {duration:.0f} s to end within --max-wall "
            f"{args.max_wall:g} s[/]"
        )
    spec = _session(args, ch.base, duration, boot_s)
    data: dict[str, Any] | None = None
    try:
        with httpx.Client(trust_env=False) as http:
            before = calibration_data.scrape_sglang(http, ch.base)
            t_trace = time.monotonic()
            report = run_session(spec, work / "session", console)
            trace_s = time.monotonic() - t_trace
            after = calibration_data.scrape_sglang(http, ch.base)
        collected = {
            "schema": calibration_data.SCHEMA,
            "provenance": calibration_data.provenance(args.engine, command),
            "placements": cfg,
            "models": {n: {"model_path": p, "tp_size": 1} for n, p, _ in MODELS},
            "timing_s": {"boot": boot_s, "trace": trace_s},
            "metrics_before": before,
            "metrics_after": after,
            "engine_log": calibration_data.engine_logs(work / "chimera" / "engines"),
            "orphans": None,
        }  # known once chimera has stopped
        # written before the stop: a stop that outlasts the GPU machine's limit loses nothing
        _write_results(args.out, work, report, collected)
        data = collected
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - keep the logs of a failed run
        console.print(f"[red]the trace failed:[/] {type(exc).__name__}: {exc}", markup=False)
    finally:  # also on Ctrl-C: no engine may outlive the benchmark
        orphans = ch.stop()
        _write_logs(args.out / "logs.txt", work)
    if data is None:
        return 1
    data["orphans"] = orphans
    data["timing_s"]["total"] = time.monotonic() - t_start
    write_json(args.out / "calibration_data.json", data)
    if orphans:
        console.print(f"[red]engine processes outlived chimera and were killed: {orphans}[/]")
        return 1
    console.print(
        f"done in {time.monotonic() - t_start:.0f} s; fit the sim with: "
        f"python -m bench.calibration.calibrate {args.out}"
    )
    return 0


def _session(args: argparse.Namespace, base: str, duration: float, boot_s: float) -> SessionSpec:
    opts = TraceOptions(
        synthetic=SyntheticSpec(
            rate=args.rate,
            duration_s=duration,
            alpha=args.alpha,
            cv=args.cv,
            input_range=args.input_range,
            output_range=args.output_range,
            seed=args.seed,
        )
    )
    slo = (args.ttft_slo, args.tpot_slo)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return SessionSpec(
        base_url=base,
        trace="synthetic",
        points=[(f"rate {args.rate:g}", opts)],
        models=[n for n, _, _ in MODELS],
        slos={n: slo for n, _, _ in MODELS},
        default_slo=slo,
        route=COMPLETIONS,
        token_ids=True,
        request_timeout_s=args.request_timeout,
        engine_label="simulated" if args.engine == "sim" else "sglang",
        engine_how=f"python -m bench.gpu.trace --engine {args.engine} started chimera",
        metrics_interval_s=1.0,
        plots=False,
        config={
            **config,
            "duration_planned_s": args.duration,
            "duration_s": duration,
            "boot_s": boot_s,
            "mode": args.mode,
        },
    )


def _write_results(out: Path, work: Path, report: dict[str, Any], data: dict[str, Any]) -> None:
    session = work / "session"
    records = read_records(session / "requests.jsonl")
    write_json(out / "report.json", report)
    (out / "requests.jsonl").write_bytes((session / "requests.jsonl").read_bytes())
    write_json(out / "calibration_data.json", data)
    text = Console(file=io.StringIO(), width=170, record=True)
    prov = data["provenance"]
    gpus = "; ".join(f"{g.get('name')} (driver {g.get('driver_version')})" for g in prov["gpus"]) or "no GPU"
    text.print(
        f"{'SIMULATED (sim engine on a CPU)' if prov['simulated'] else 'stock SGLang'}"
        f" {prov['sglang'] or '-'}, {gpus}, {prov['created']}\n{' '.join(prov['command'])}"
    )
    print_report(report, text)
    (out / "table.txt").write_text(text.export_text())
    try:
        from bench.report import plots

        plots.timelines(records, report["engine"], out / "timeline.png")
    except ImportError as exc:  # matplotlib: an optional dependency of the benchmarks
        console.print(f"[yellow]no plot: {exc} (pip install matplotlib)[/]")
    _write_logs(out / "logs.txt", work)
    console.print(f"wrote {', '.join(f for f in FILES if (out / f).exists())} to {out}")


def _write_logs(path: Path, work: Path) -> None:
    """The tails of chimera's log and of every engine log, one after the other."""
    parts = []
    for log in [work / "chimera" / "chimera.log", *sorted((work / "chimera" / "engines").glob("*.log"))]:
        if log.is_file():
            tail = log.read_bytes()[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
            parts.append(f"===== {log.relative_to(work)} (last {LOG_TAIL_BYTES} bytes) =====\n{tail}\n")
    path.write_text("".join(parts) or "(no logs)\n")


if __name__ == "__main__":
    sys.exit(main())
