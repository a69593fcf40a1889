"""``python -m bench.gpu.experiment``: one system of the one-GPU headline experiment (issue 17
§2): many models on one GPU, the same requests, a rate sweep.

1. Derives the system's placements file from the set-up (bench/gpu/systems.py: static, swap,
   elastic, full) and starts ``chimera-orch up`` on it (bench/live/process.py).
2. For each rate of ``--rates``, on the same fleet, one after another: builds the trace over
   ALL the set-up's models (so every system is asked the same: ``trace_digest`` in the JSON),
   sends the requests of the models the system serves open-loop through the proxy, counts
   those of the others as misses without sending them, and records chimera's counters and
   instance states around it. Then waits ``--gap`` seconds (the last answers drain; idle
   timers run on, as they would between bursts in production).
3. Writes into --out: experiment.json (per rate: joint TTFT+TPOT attainment overall and per
   model, goodput, latencies, wakes, parks, time parked, held and shed requests; the highest
   rate at 99%; the hardware; per rate the request timeout it ran with), table.txt and run.tgz
   (requests.jsonl, chimera's and the engines' logs): three files.

Time (bench/gpu/budget.py): the run ends within ``--max-wall``. A rate runs when its arrivals, a
request timeout of at least 10 s and the stop fit in what is left; its timeout is the SLO bound
(``--request-timeout``, default: the set-up's longest joint TTFT+TPOT SLO, after which every
request has missed) cut to what is left. Rates that do not fit are skipped and listed.

Workloads: ``synthetic`` is Prism's generator (power-law popularity alpha 0.5, Gamma CV 2,
the less popular half of the models on/off with a cycle of one rate's duration, lengths in
[8, 512)); ``lmsys`` replays the LMSYS-derived 27-model trace, its models folded by rank onto
the set-up's, and ``--rates`` are then scale factors of its own rate. ``--engine des`` runs the
same set-up and trace through the discrete-event simulator instead (bench/gpu/des.py), to
compare with a run on the sim engine or the GPU: ``python -m bench.gpu.report`` does.

    python -m bench.gpu.experiment --setup A --system full --engine sim --rates 2,4 \\
        --duration 20 --out runs/exp/A-full      # on a CPU (SIMULATED)
    bash bench/gpu/experiment.sh full A          # on the GPU: one command per system
    bash bench/gpu/experiment.sh full prism18    # issue 18 on nvidia-h200-x8: LMSYS at scale 1
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shlex
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from bench.calibration import data as calibration_data
from bench.client import COMPLETIONS, ClientConfig, ClientShards, RequestRecord, make_client, run_open_loop
from bench.client.server import MetricsPoller
from bench.gpu import budget, measure
from bench.gpu.gpumem import GpuMemorySampler
from bench.gpu.systems import SYSTEMS, derive, served
from bench.live.options import positive_floats
from bench.live.process import ChimeraStartError, start_chimera
from bench.report import summarize_run, write_json
from bench.report.document import write_records
from bench.traces import BenchRequest, SyntheticSpec, TraceOptions, build_trace, describe
from orchestrator.config import Yaml12Loader, parse_config
from orchestrator.perf.calibration import CALIBRATIONS

console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)
SCHEMA = "chimera-gpu-experiment/1"
PLACEMENTS = Path(__file__).resolve().parent / "placements"
SETUPS = {
    "A": PLACEMENTS / "setup-a.yaml",
    "B": PLACEMENTS / "setup-b.yaml",
    "PRISM18": PLACEMENTS / "setup-prism18.yaml",  # issue 18: 18 models on 8 GPUs
    "PRISM9": PLACEMENTS / "setup-prism9.yaml",  # its half size: 9 models on 4 GPUs
}
TRACES = ("synthetic", "lmsys")
ALPHA, CV = 0.5, 2.0  # Prism's synthetic workload, as bench/sim/experiments.py
LENGTHS = (8, 512)  # synthetic prompt and output lengths, [lo, hi)
LMSYS_MAX_OUTPUT = 1024
# Default sweeps, four rates each so that two systems fit one device command (bench/gpu/budget.py),
# chosen to bracket each system's highest rate at 99% joint attainment: from the discrete-event
# simulator's predictions with the H200 calibration (SIMULATED, `--engine des --calibration
# h200`, docs/benchmarks.md). Set-up A (seven models, KV-bound): static 100% at rate 20 (17.4
# req/s offered), 86% at 24; full 99.5% at 22, 94% at 24 (the six-model set-up's H200 runs had
# full at 100% up to rate 36). elastic has no simulator counterpart: its sweep sits between
# static's and full's. lmsys: scale factors.
DEFAULT_RATES: dict[tuple[str, str], list[float]] = {
    ("A", "static"): [12.0, 16.0, 20.0, 24.0],
    ("A", "elastic"): [8.0, 16.0, 24.0, 32.0],
    ("A", "full"): [16.0, 24.0, 32.0, 40.0],
    ("A", "swap"): [0.05, 0.1, 0.25, 0.5],
    ("B", "static"): [1.0, 2.0, 4.0, 8.0],
    ("B", "elastic"): [1.0, 2.0, 4.0, 8.0],
    ("B", "full"): [0.25, 0.5, 1.0, 2.0],
    ("B", "swap"): [0.05, 0.1, 0.25, 0.5],
}
LMSYS_RATES = [0.5, 1.0, 2.0, 4.0]
# Issue 18's multi-GPU set-ups: the LMSYS trace at time scale 1 (its own rate, ~2.5 req/s over
# 27 models folded onto the set-up's), its first REFERENCE_DURATION_S seconds, one system per
# device command: a fleet start of up to BOOT_MULTI_GPU_S, the arrivals, the last answers and
# the stop fit the command (bench/gpu/budget.py). The rate sweep is the simulator's (§3).
REFERENCE_SETUPS = ("PRISM18", "PRISM9")
REFERENCE_RATES = [1.0]
REFERENCE_DURATION_S = 300.0


def default_trace(setup: str) -> str:
    return "lmsys" if setup in REFERENCE_SETUPS else "synthetic"


def default_rates(setup: str, system: str, trace: str) -> list[float]:
    if trace != "synthetic":
        return REFERENCE_RATES if setup in REFERENCE_SETUPS else LMSYS_RATES
    return DEFAULT_RATES.get((setup, system), DEFAULT_RATES[("A", system)])


def default_duration(setup: str, trace: str) -> float:
    return REFERENCE_DURATION_S if setup in REFERENCE_SETUPS and trace == "lmsys" else 30.0


LOG_TAIL_BYTES = 2_000_000


@dataclass(frozen=True)
class Setup:
    name: str
    raw: dict[str, Any]  # the set-up file as YAML 1.2 reads it
    models: list[str]  # every model of the set-up, file order (the trace is over all of them)
    slos: dict[str, tuple[float | None, float | None]]


def load_setup(name: str) -> Setup:
    path = SETUPS.get(name.upper(), Path(name))
    raw = yaml.load(path.read_text(), Loader=Yaml12Loader)
    cfg = parse_config(raw, source=str(path))
    return Setup(
        name.upper() if name.upper() in SETUPS else str(path),
        raw,
        [m.name for m in cfg.models],
        {m.name: (m.slo.ttft_s, m.slo.tpot_s) for m in cfg.models},
    )


def trace_for(setup: Setup, trace: str, rate: float, duration_s: float, seed: int) -> list[BenchRequest]:
    """The requests of one rate of the sweep, over every model of the set-up (file order)."""
    spec = SyntheticSpec(
        rate=rate,
        duration_s=duration_s,
        alpha=ALPHA,
        cv=CV,
        input_range=LENGTHS,
        output_range=LENGTHS,
        seed=seed,
        on_off_cycle_s=duration_s,
        off_ratio=0.5,
        on_off_fraction=0.5,
    )
    if trace == "synthetic":
        return build_trace("synthetic", TraceOptions(synthetic=spec), setup.models, setup.slos)
    opts = TraceOptions(
        synthetic=spec,
        time_scale=1.0 / rate,
        max_prompt_tokens=4096,
        max_output_tokens=LMSYS_MAX_OUTPUT,
        model_map="fold",
    )
    return build_trace(trace, opts, setup.models, setup.slos)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu.experiment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--setup", default="A", help="A, B, prism18, prism9, or a placements file (the full system)")
    p.add_argument("--system", choices=SYSTEMS, required=True)
    p.add_argument(
        "--trace", choices=TRACES, default=None, help="default: lmsys for prism18 and prism9, synthetic otherwise"
    )
    p.add_argument(
        "--rates",
        type=positive_floats,
        default=None,
        metavar="R[,R...]",
        help="synthetic: requests/s over all models; lmsys: multiples of the trace's own rate "
        "(default: the set-up's and system's sweep, DEFAULT_RATES)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of arrivals per rate (default: 30; prism18/prism9 with lmsys: 300, the trace's "
        "first 300 s at scale 1)",
    )
    p.add_argument("--gap", type=float, default=3.0, help="seconds between two rates")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--engine",
        choices=("sim", "sglang", "des"),
        default="sim",
        help="sim engine (CPU, SIMULATED), stock SGLang (GPU), or the discrete-event "
        "simulator (bench/sim, no chimera process)",
    )
    p.add_argument(
        "--calibration",
        choices=sorted(CALIBRATIONS),
        default="h100",
        help="--engine des only: the card the simulator's step times stand for (orchestrator/perf/"
        "calibration.py; h200 = fitted from the H200 set-up A run, colocated) (default %(default)s)",
    )
    p.add_argument(
        "--kv-admission",
        choices=("sglang", "reserve"),
        default="sglang",
        help="--engine des only: how the simulated engines admit requests: as stock SGLang 0.5.17 "
        "(new-token ratio, retraction; bench/sim/sglang_kv.py) or KV reserved in full at dispatch "
        "(bench/sim's experiments) (default %(default)s)",
    )
    p.add_argument(
        "--cuda-graph-max-bs",
        type=int,
        default=None,
        metavar="N",
        help="--engine des only: every server's CUDA graphs up to N (a live run's, to compare with it; "
        "default: as chimera starts each server)",
    )
    p.add_argument(
        "--fresh-fleets",
        action="store_true",
        help="--engine des only: simulate each rate from a fresh fleet whose hot set the policy wakes "
        "(the twin before 2026-12-04); default: one fleet through the sweep, started with the file's "
        "`on: true` models awake, as a live run",
    )
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/gpu-experiment"))
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="chimera's run dir and logs (default: a new folder under the temp dir)",
    )
    p.add_argument(
        "--max-wall",
        type=float,
        default=570.0,
        metavar="S",
        help="the run ends within this many seconds: rates that would not fit are "
        "skipped and listed (default %(default)s; the GPU machine cuts at 600)",
    )
    p.add_argument("--ready-timeout", type=float, default=300.0, metavar="S")
    p.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds a request may take (default: the set-up's longest joint SLO for the trace's longest "
        "output: a later answer has missed it anyway); cut per rate to what --max-wall leaves",
    )
    p.add_argument("--sim-speed", type=float, default=1.0, help="sim engine time scale")
    p.add_argument(
        "--gpu-sharing",
        choices=("timeslice", "mps"),
        default=None,
        help="host.gpu_sharing of the system's placements (default: the set-up file's): mps runs every "
        "server under the MPS daemon chimera starts (docs/operations.md); not with --engine des",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    t_start = time.monotonic()
    args = build_parser().parse_args(argv)
    command = ["python", "-m", "bench.gpu.experiment", *map(shlex.quote, argv or sys.argv[1:])]
    setup = load_setup(args.setup)
    if args.trace is None:
        args.trace = default_trace(setup.name)
    if args.duration is None:
        args.duration = default_duration(setup.name, args.trace)
    if args.rates is None:
        args.rates = default_rates(setup.name, args.system, args.trace)
    if args.request_timeout is None:
        longest = LENGTHS[1] - 1 if args.trace == "synthetic" else LMSYS_MAX_OUTPUT
        args.request_timeout = min(600.0, budget.slo_bound_s(setup.slos, longest))
    if args.engine == "des" and args.gpu_sharing is not None:
        console.print("[red]--gpu-sharing is for a live run: the simulator's colocated steps are its calibration's[/]")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.engine == "des":
        from bench.gpu import des

        doc = des.run(
            setup,
            args.system,
            args.trace,
            args.rates,
            args.duration,
            args.seed,
            trace_for,
            args.calibration,
            args.kv_admission,
            args.cuda_graph_max_bs,
            one_fleet=not args.fresh_fleets,
        )
        doc["command"] = command
        write_json(args.out / "experiment.json", doc)
        console.print(f"wrote {args.out / 'experiment.json'} (SIMULATED: discrete-event simulator)")
        return 0
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="chimera-gpu-experiment-"))
    work.mkdir(parents=True, exist_ok=True)
    placements = derive(setup.raw, args.system, args.gpu_sharing)
    cfg_path = work / "placements.yaml"
    cfg_path.write_text(yaml.safe_dump(placements, sort_keys=False))
    serving = served(setup.raw, args.system)
    env = {"CHIMERA_SIM_SPEED": f"{args.sim_speed:g}"}
    console.print(
        f"[bold]{args.system}[/] on set-up {setup.name}: {len(serving)} of "
        f"{len(setup.models)} models served; {args.engine} engine; work dir {work}"
    )
    try:
        ch = start_chimera(cfg_path, work / "chimera", engine=args.engine, env=env, ready_timeout_s=args.ready_timeout)
    except ChimeraStartError as exc:
        console.print(f"[red]chimera did not start:[/] {exc}", markup=False)
        _tar_run(args.out / "run.tgz", work, [])
        return 1
    boot_s = time.monotonic() - t_start
    console.print(f"fleet up in {boot_s:.0f} s")
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "setup": setup.name,
        "system": args.system,
        "trace": args.trace,
        "engine": args.engine,
        "provenance": calibration_data.provenance(args.engine, command),
        "served": serving,
        "unserved": [m for m in setup.models if m not in serving],
        "placements": placements,
        "duration_per_rate_s": args.duration,
        "gap_s": args.gap,
        "request_timeout_s": args.request_timeout,
        "max_wall_s": args.max_wall,
        "timing_s": {"boot": boot_s},
        "rates": [],
        "skipped_rates": [],
    }
    records: list[RequestRecord] = []
    try:
        for i, rate in enumerate(args.rates):
            left = args.max_wall - (time.monotonic() - t_start)
            timeout = budget.rate_timeout(left, args.duration, args.request_timeout)
            if timeout is None:
                doc["skipped_rates"].append(rate)
                continue
            reqs = trace_for(setup, args.trace, rate, args.duration, args.seed)
            point, recs = asyncio.run(_one_rate(ch.base, i, rate, reqs, set(serving), args, timeout))
            doc["rates"].append(point)
            records += recs
            write_json(args.out / "experiment.json", _finish(doc))  # a cut run keeps its rates
            time.sleep(args.gap)
        if doc["skipped_rates"]:
            console.print(f"[yellow]rates skipped to end within --max-wall: {doc['skipped_rates']}[/]")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - keep what was measured, and the logs
        console.print(f"[red]the sweep failed:[/] {type(exc).__name__}: {exc}", markup=False)
        doc["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:  # also on Ctrl-C: no engine may outlive the benchmark
        t_stop = time.monotonic()
        orphans = ch.stop()
        doc["orphans"] = orphans
        doc["timing_s"]["stop"] = time.monotonic() - t_stop
        doc["timing_s"]["total"] = time.monotonic() - t_start
        doc = _finish(doc)
        write_json(args.out / "experiment.json", doc)
        (args.out / "table.txt").write_text(table_text(doc))
        _tar_run(args.out / "run.tgz", work, records)
    console.print(table_text(doc), markup=False, highlight=False)
    return 1 if doc.get("error") or orphans or not doc["rates"] else 0


async def _one_rate(
    base: str,
    run: int,
    rate: float,
    reqs: list[BenchRequest],
    serving: set[str],
    args: argparse.Namespace,
    timeout_s: float,
) -> tuple[dict[str, Any], list[RequestRecord]]:
    send = [r for r in reqs if r.model in serving]
    missed = measure.unserved([r for r in reqs if r.model not in serving], run, COMPLETIONS)
    console.print(
        f"[bold]rate {rate:g}[/]: {len(reqs)} requests over {args.duration:g} s "
        f"({len(send)} sent, {len(missed)} to unserved models; request timeout {timeout_s:.0f} s)"
    )
    cfg = ClientConfig(base, COMPLETIONS, args.seed, True, timeout_s, run=run)
    async with make_client() as client, ClientShards() as shards:
        before = measure.counters((await client.get(base + "/metrics")).text)
        t0 = time.perf_counter()
        poller = MetricsPoller(client, base, t0, 1.0)
        gpu_mem = GpuMemorySampler()
        tasks = [asyncio.create_task(poller.run()), asyncio.create_task(gpu_mem.run())]
        try:
            sent = await run_open_loop(send, cfg, shards) if send else []
        finally:
            for task in tasks:
                task.cancel()
        took = time.perf_counter() - t0
        poller.snapshots.append({**(poller.snapshots[-1] if poller.snapshots else {}), "t_s": took})
        after = measure.counters((await client.get(base + "/metrics")).text)
    recs = sorted(sent + missed, key=lambda r: r.id)
    parked = measure.time_parked(poller.snapshots)
    summary = summarize_run(recs, args.duration)
    point = {
        "rate": rate,
        "label": f"{'rate' if args.trace == 'synthetic' else 'scale'} {rate:g}",
        "offered_rate_rps": len(reqs) / args.duration,
        "trace": describe(reqs, args.duration),
        "trace_digest": measure.digest(reqs),
        "sent": len(send),
        "unserved": len(missed),
        "wall_s": took,
        "request_timeout_s": timeout_s,
        **summary,
        "chimera": {
            **measure.chimera_deltas(before, after),
            "shed_client": sum(r.status == 429 for r in recs),
            "time_parked_s": sum(parked.values()),
            "time_parked_by_instance_s": parked,
            "kv_timeline": measure.kv_timeline(poller.snapshots[:-1]),
            "gpu_memory_used": gpu_mem.summary(),  # device-level: every process on GPU 0
        },
    }
    joint = summary["overall"]["attainment"]["joint"]
    used = point["chimera"]["gpu_memory_used"]
    console.print(
        f"  joint attainment {joint if joint is None else f'{joint:.3f}'}, "
        f"{point['chimera']['wakes']} wakes, {point['chimera']['held']} held, "
        f"{point['chimera']['shed_client']} shed"
        + (f"; GPU memory used: peak {used['peak_gib']} GiB, mean {used['mean_gib']} GiB" if used else "")
    )
    return point, recs


def _finish(doc: dict[str, Any]) -> dict[str, Any]:
    pts = [(p["offered_rate_rps"], p["overall"]["attainment"]["joint"]) for p in doc["rates"]]
    return {**doc, "max_rate_at_99": measure.max_rate_at(pts)}


def hardware(doc: dict[str, Any]) -> str:
    """What the numbers ran on, in words (SIMULATED unless stock SGLang on a GPU)."""
    prov = doc.get("provenance") or {}
    if doc.get("engine") == "des":
        return f"SIMULATED (discrete-event simulator, {doc.get('calibration', 'h100').upper()} model)"
    if doc.get("engine") != "sglang":
        return "SIMULATED (sim engine on a CPU)"
    gpus = "; ".join(f"{g.get('name')} (driver {g.get('driver_version')})" for g in prov.get("gpus", []))
    return f"stock SGLang {prov.get('sglang') or '?'}, {gpus or 'no GPU seen'}"


def table_text(doc: dict[str, Any]) -> str:
    out = io.StringIO()
    out.write(f"{doc['system']} on set-up {doc['setup']}, trace {doc['trace']}: {hardware(doc)}\n")
    out.write(
        f"{'rate':>8} {'offered/s':>9} {'joint':>6} {'goodput/s':>9} {'wakes':>5} "
        f"{'parked s':>8} {'held':>5} {'shed':>5} {'unserved':>8}\n"
    )
    for p in doc["rates"]:
        j, c = p["overall"]["attainment"]["joint"], p.get("chimera", {})
        out.write(
            f"{p['rate']:>8g} {p['offered_rate_rps']:>9.2f} "
            f"{'-' if j is None else f'{j:.3f}':>6} "
            f"{p['overall']['goodput']['requests_per_s']:>9.2f} {c.get('wakes', 0):>5} "
            f"{c.get('time_parked_s', 0.0):>8.0f} {c.get('held', 0):>5} "
            f"{c.get('shed_client', 0):>5} {p.get('unserved', 0):>8}\n"
        )
    out.write(f"highest rate at 99% joint attainment: {doc.get('max_rate_at_99')}\n")
    return out.getvalue()


def _tar_run(path: Path, work: Path, records: list[RequestRecord]) -> None:
    """requests.jsonl, chimera's log and the engines' (their last LOG_TAIL_BYTES each), one
    archive: the device returns few files, and two systems may share one command."""
    write_records(work / "requests.jsonl", records)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(work / "requests.jsonl", arcname="requests.jsonl")
        for log in [work / "chimera" / "chimera.log", *sorted((work / "chimera" / "engines").glob("*.log"))]:
            if log.is_file():
                data = log.read_bytes()[-LOG_TAIL_BYTES:]
                info = tarfile.TarInfo(str(log.relative_to(work)))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    sys.exit(main())
