"""Command-line options shared by ``bench.live.run`` and ``bench.live.modes``: the trace, the client,
and how chimera is started."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from bench.client.prompts import CHAT, COMPLETIONS, GENERATE
from bench.traces import TRACES, SyntheticSpec, TraceOptions, default_traces_dir

ROUTE_NAMES = {"chat": CHAT, "completions": COMPLETIONS, "generate": GENERATE}


def positive_floats(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 2 or 2,4,8") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive numbers")
    return vals


def token_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO,HI like 8,512") from None
    if lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= LO <= HI")
    return lo, hi


def add_trace_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument(
        "--trace",
        choices=TRACES,
        default="synthetic",
        help="synthetic (Prism's generator) or a replay of a shared trace "
        "(docs/bench-live.md lists columns and model mapping; default: %(default)s)",
    )
    g.add_argument(
        "--duration",
        type=float,
        default=60.0,
        help="seconds of arrivals (replays: of replayed time, after --time-scale)",
    )
    g.add_argument(
        "--rate",
        type=positive_floats,
        default=[2.0],
        metavar="R[,R...]",
        help="synthetic: requests/s over all models; several values = a sweep",
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=2.1,
        help="power-law popularity exponent (model k of N gets ((k+1)/N)^a - "
        "(k/N)^a of the requests; > 1 favours later models; default: %(default)s, "
        "as Prism's benchmark)",
    )
    g.add_argument("--cv", type=float, default=1.0, help="CV of Gamma inter-arrival gaps")
    g.add_argument(
        "--input-range",
        type=token_range,
        default=(8, 512),
        metavar="LO,HI",
        help="uniform prompt tokens in [LO, HI) (synthetic, servegen)",
    )
    g.add_argument(
        "--output-range",
        type=token_range,
        default=(8, 512),
        metavar="LO,HI",
        help="uniform output tokens in [LO, HI) (synthetic, servegen)",
    )
    g.add_argument("--seed", type=int, default=42)
    g.add_argument(
        "--on-off-cycle",
        type=float,
        default=0.0,
        metavar="S",
        help="synthetic on/off phases: cycle length in seconds (0 = off)",
    )
    g.add_argument("--off-ratio", type=float, default=0.5)
    g.add_argument(
        "--on-off-fraction",
        type=float,
        default=0.0,
        help="fraction of the models (the last ones) that follow on/off phases",
    )
    g.add_argument(
        "--time-scale",
        type=positive_floats,
        default=[1.0],
        metavar="T[,T...]",
        help="multiply arrival times (0.5 = twice as fast); several = a sweep",
    )
    g.add_argument("--replication", type=int, default=1, help="send every request N times")
    g.add_argument(
        "--sample", type=float, default=1.0, help="keep each request with this probability (ServeGen: scales its rates)"
    )
    g.add_argument(
        "--trace-start", type=float, default=0.0, metavar="S", help="replays: start this many trace seconds in"
    )
    g.add_argument("--max-prompt-tokens", type=int, default=None)
    g.add_argument("--max-output-tokens", type=int, default=None)
    g.add_argument(
        "--model-map",
        choices=("fold", "top"),
        default="fold",
        help="multi-model traces: rank r -> placements model r mod N (fold) or keep only the top N trace models (top)",
    )
    g.add_argument("--traces-dir", type=Path, default=default_traces_dir())
    g.add_argument("--slo-scale", type=float, default=1.0, help="multiply every model's SLO from the placements file")
    g.add_argument(
        "--ttft-slo",
        type=float,
        default=None,
        metavar="S",
        help="TTFT SLO (s) for models whose placements entry has none",
    )
    g.add_argument(
        "--tpot-slo",
        type=float,
        default=None,
        metavar="S",
        help="TPOT SLO (s) for models whose placements entry has none",
    )


def add_client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("client and chimera")
    g.add_argument(
        "--route",
        choices=tuple(ROUTE_NAMES),
        default="completions",
        help="API route the requests use (default: %(default)s)",
    )
    g.add_argument(
        "--token-ids", action="store_true", help="send prompts as token ids (exact counts on real SGLang; not chat)"
    )
    g.add_argument("--request-timeout", type=float, default=600.0, metavar="S")
    g.add_argument(
        "--engine",
        choices=("sim", "sglang", "auto"),
        default="sim",
        help="engine of the chimera the benchmark starts (default: %(default)s)",
    )
    g.add_argument(
        "--sim-speed", type=float, default=1.0, help="sim engine time scale (CHIMERA_SIM_SPEED; 1 = calibrated H100)"
    )
    g.add_argument(
        "--engine-label", default=None, help="say which engine served (default: the engine started, or a probe)"
    )
    g.add_argument("--ready-timeout", type=float, default=180.0, metavar="S")
    g.add_argument("--hold-timeout", type=float, default=300.0, metavar="S", help="chimera's --hold-timeout-s")
    g.add_argument(
        "--metrics-interval",
        type=float,
        default=0.5,
        metavar="S",
        help="how often chimera's /metrics is polled for the state timeline",
    )
    g.add_argument("--no-plots", action="store_true")


def trace_points(args: argparse.Namespace) -> list[tuple[str, TraceOptions]]:
    """(label, options) of each run: one, or a sweep over --rate or --time-scale."""
    if len(args.rate) > 1 and len(args.time_scale) > 1:
        raise SystemExit("error: sweep over --rate or over --time-scale, not both")
    if len(args.rate) > 1 and args.trace != "synthetic":
        raise SystemExit("error: --rate sets the synthetic trace's rate; sweep a replay with --time-scale")
    base = TraceOptions(
        synthetic=SyntheticSpec(
            rate=args.rate[0],
            duration_s=args.duration,
            alpha=args.alpha,
            cv=args.cv,
            input_range=args.input_range,
            output_range=args.output_range,
            seed=args.seed,
            on_off_cycle_s=args.on_off_cycle,
            off_ratio=args.off_ratio,
            on_off_fraction=args.on_off_fraction,
        ),
        traces_dir=args.traces_dir,
        start_s=args.trace_start,
        time_scale=args.time_scale[0],
        replication=args.replication,
        sample=args.sample,
        max_prompt_tokens=args.max_prompt_tokens,
        max_output_tokens=args.max_output_tokens,
        model_map=args.model_map,
        slo_scale=args.slo_scale,
    )
    if len(args.rate) > 1:
        return [(f"rate {r:g}", replace(base, synthetic=replace(base.synthetic, rate=r))) for r in args.rate]
    if len(args.time_scale) > 1:
        return [(f"time-scale {t:g}", replace(base, time_scale=t)) for t in args.time_scale]
    label = f"rate {args.rate[0]:g}" if args.trace == "synthetic" else f"time-scale {args.time_scale[0]:g}"
    return [(label, base)]
