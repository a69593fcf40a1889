"""``python -m bench.live.run``: a live benchmark of chimera.

Starts ``chimera-orch up --engine sim PLACEMENTS`` (or uses ``--url``), waits until the models
that start at ``up`` are awake, replays the trace open-loop through the proxy, writes
OUT/report.json, OUT/requests.jsonl, OUT/states.jsonl and plots, prints the table, and stops
chimera (no engine process may outlive it). Exit codes: 0 ok, 1 failure, 2 bad usage.

    python -m bench.live.run --placements placements/example.yaml --trace synthetic --rate 4 \\
        --duration 60 --out runs/bench
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.live.options import ROUTE_NAMES, add_client_args, add_trace_args, trace_points
from bench.live.process import ChimeraStartError, start_chimera
from bench.live.session import SessionSpec, run_session
from bench.traces import TraceFileError
from orchestrator.config import Config, load_config
from orchestrator.errors import ConfigError

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.live.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--placements",
        type=Path,
        help="placements file chimera is started with (with --url: only read for model order and SLOs)",
    )
    p.add_argument("--url", help="benchmark an already running chimera at this URL instead")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_trace_args(p)
    add_client_args(p)
    return p


def slos_of(cfg: Config | None) -> dict[str, tuple[float | None, float | None]]:
    return {m.name: (m.slo.ttft_s, m.slo.tpot_s) for m in cfg.models} if cfg else {}


def session_spec(
    args: argparse.Namespace, base_url: str, cfg: Config | None, engine_label: str | None, engine_how: str
) -> SessionSpec:
    config: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["mode"] = cfg.mode if cfg else None
    default = (args.ttft_slo, args.tpot_slo)
    slos = {
        m: (t if t is not None else default[0], p if p is not None else default[1])
        for m, (t, p) in slos_of(cfg).items()
    }
    return SessionSpec(
        base_url=base_url,
        trace=args.trace,
        points=trace_points(args),
        models=[m.name for m in cfg.models] if cfg else [],
        slos=slos,
        default_slo=default,
        route=ROUTE_NAMES[args.route],
        token_ids=args.token_ids,
        request_timeout_s=args.request_timeout,
        engine_label=engine_label,
        engine_how=engine_how,
        metrics_interval_s=args.metrics_interval,
        plots=not args.no_plots,
        config=config,
    )


def benchmark(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Start chimera (unless --url), run the session, stop chimera. Raises on failure."""
    cfg = load_config(args.placements) if args.placements else None
    if args.url:
        label = args.engine_label
        return run_session(
            session_spec(args, args.url.rstrip("/"), cfg, label, "--engine-label" if label else ""), out, console
        )
    assert args.placements is not None
    env = {"CHIMERA_SIM_SPEED": f"{args.sim_speed:g}"}
    console.print(
        f"starting chimera-orch up {args.placements} --engine {args.engine} (log: {out / 'chimera' / 'chimera.log'})"
    )
    ch = start_chimera(
        args.placements,
        out / "chimera",
        engine=args.engine,
        env=env,
        ready_timeout_s=args.ready_timeout,
        hold_timeout_s=args.hold_timeout,
    )
    try:
        label = args.engine_label or ("simulated" if args.engine == "sim" else None)
        how = "--engine-label" if args.engine_label else "the runner started chimera with --engine sim" if label else ""
        report = run_session(session_spec(args, ch.base, cfg, label, how), out, console)
    finally:
        orphans = ch.stop()
    if orphans:
        raise RuntimeError(f"engine processes outlived chimera and were killed: {orphans}")
    console.print(f"chimera stopped (exit code {ch.proc.returncode}), no engine left running")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.placements and not args.url:
        console.print("[red]error:[/] give --placements FILE (start chimera) or --url URL")
        return 2
    try:
        benchmark(args, args.out)
    except (ConfigError, TraceFileError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}", markup=False)
        return 2
    except ChimeraStartError as exc:
        console.print(f"[red]chimera did not start:[/] {exc}", markup=False)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; chimera stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
