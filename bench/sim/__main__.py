"""``python -m bench.sim``: run the simulator.

    python -m bench.sim run --system chimera --mix mix58 --gpus 16 --rate 10 --duration 3600
    python -m bench.sim run --mix mix58 --gpus 18 --rate 10 --duration 3600 --pools --search 12
    python -m bench.sim run --system chimera --mix mix58 --gpus 15 --rate 10 --duration 3600 --gpu-sharing mps
    python -m bench.sim experiments [--only rate,gpus,large,ablations,timing]
    python -m bench.sim microbench          # one global decision, 1,000 x 256 GPUs; 10,000 x 4,096 (512 nodes)
    python -m bench.sim scale --models 1000 --gpus 512 --hours 1 [--system chimera] [--search LO]

Every number printed is SIMULATED (H100 model of orchestrator/perf/calibration.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.sim import experiments as ex
from bench.sim import scale as at_scale
from bench.sim.fleet import MIXES
from bench.sim.metrics import RunResult
from bench.sim.microbench import SCALES, describe, measure, measure_scale
from bench.sim.pools import PoolOptions, fewest_gpus, run_pooled
from bench.sim.report import STAMP, plots, table
from bench.sim.run import SYSTEMS
from orchestrator.config.pooled import STAGES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one simulated run")
    r.add_argument("--system", choices=SYSTEMS, default="chimera")
    r.add_argument("--mix", choices=sorted(MIXES), default="mix8")
    r.add_argument("--gpus", type=int, default=2)
    r.add_argument("--rate", type=float, default=8.0, help="requests/s over all models")
    r.add_argument("--duration", type=float, default=600.0, help="trace seconds")
    r.add_argument("--cycle", type=float, default=120.0, help="on/off cycle of the on/off models, s")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--pools", action="store_true", help="chimera with shape pools (bench/sim/pools.py)")
    r.add_argument("--pool-fraction", type=float, default=PoolOptions.fraction, help="(default: %(default)s)")
    r.add_argument(
        "--pool-servers",
        type=float,
        default=PoolOptions.servers_per_member,
        help="per pooled model (default: %(default)s)",
    )
    r.add_argument(
        "--pool-max-retarget-s",
        type=float,
        default=PoolOptions.max_retarget_s,
        help="shapes whose switch takes longer are not pooled (default: %(default)s)",
    )
    r.add_argument(
        "--pool-stage",
        choices=STAGES,
        default=PoolOptions.stage,
        help="where the pools' checkpoints wait: the switch's cost (default: %(default)s)",
    )
    r.add_argument("--search", type=int, metavar="LO", help="bisect the fewest GPUs in [LO, --gpus] at 99%% joint")
    r.add_argument(
        "--gpu-sharing",
        choices=("timeslice", "mps"),
        default="timeslice",
        help="how colocated servers' decode steps share a GPU: time-slicing, or the CUDA MPS daemon "
        "(perf/sharing.py mps_round_s, fitted on an H200); chimera places by it (default: %(default)s)",
    )
    e = sub.add_parser("experiments", help="the experiments of docs/bench-sim.md (JSON + PNG)")
    e.add_argument("--only", default="rate,gpus,large,large_low,ablations,real,timing")
    e.add_argument("--out", type=Path, default=Path("docs/img"), help="PNG folder (default: %(default)s)")
    e.add_argument(
        "--json",
        type=Path,
        default=Path("bench/sim/results.json"),
        help="results file, updated in place (default: %(default)s)",
    )
    mb = sub.add_parser(
        "microbench", help="time one global decision: 1,000 models x 256 GPUs; 10,000 x 4,096 on 512 nodes"
    )
    mb.add_argument("--scale", choices=[*SCALES, "all"], default="all", help="(default: %(default)s)")
    mb.add_argument("--repeats", type=int, default=20, help="(default: %(default)s)")
    sc = sub.add_parser("scale", help="one run at cluster scale (wall time), or --search: fewest GPUs at 99%%")
    sc.add_argument("--models", type=int, default=1000, help="(default: %(default)s)")
    sc.add_argument("--gpus", type=int, default=512, help="GPUs, or the top of --search (default: %(default)s)")
    sc.add_argument("--hours", type=float, default=1.0, help="trace length (default: %(default)s)")
    sc.add_argument("--rate", type=float, default=100.0, help="requests/s over all models (default: %(default)s)")
    sc.add_argument("--system", choices=SYSTEMS, default="chimera")
    sc.add_argument("--search", type=int, metavar="LO", help="bisect the fewest GPUs in [LO, --gpus] at 99%% joint")
    a = p.parse_args(argv)

    if a.cmd == "run":
        return _run(a)
    if a.cmd == "scale":
        if a.search is None:
            print(at_scale.describe(at_scale.run(a.system, a.models, a.gpus, a.rate, a.hours)))
        else:
            got = at_scale.fewest_gpus(a.system, a.models, a.rate, a.hours, a.search, a.gpus)
            print(f"SIMULATED {a.system}: fewest GPUs at 99% joint attainment: {got['fewest_gpus']}")
        return 0
    if a.cmd == "microbench":
        for scale in SCALES if a.scale == "all" else [a.scale]:
            print(describe(measure_scale(scale, a.repeats)))
        return 0
    return _experiments(set(a.only.split(",")), a.out, a.json)


def _run(a: argparse.Namespace) -> int:
    sp = ex.spec(a.rate, a.duration, a.cycle, a.seed)
    popts = PoolOptions(a.pool_fraction, a.pool_servers, a.pool_max_retarget_s, stage=a.pool_stage)
    if a.pools and a.system != "chimera":
        raise SystemExit("--pools is chimera's (--system chimera)")

    def one(gpus: int) -> RunResult:
        if a.pools:
            res = run_pooled(a.mix, gpus, sp, popts, sharing=a.gpu_sharing)
        else:
            res = ex.run_one(a.system, a.mix, gpus, sp, a.gpu_sharing)
        print(json.dumps({k: v for k, v in res.to_json().items() if k != "per_model"}, indent=1), flush=True)
        return res

    if a.search is None:
        one(a.gpus)
    else:
        got = fewest_gpus(lambda g: one(g).joint, a.search, a.gpus, ex.TARGET)
        pools = (" with pools" + (" (pinned)" if a.pool_stage == "pinned" else "")) if a.pools else ""
        name = f"{a.system}{pools}{' under MPS' if a.gpu_sharing == 'mps' else ''}"
        grid = ", ".join(f"{g}: {j:.2%}" for g, j in got["grid"])
        print(f"SIMULATED {name}: fewest GPUs at 99% joint attainment: {got['fewest_gpus']} ({grid})")
    if a.gpu_sharing == "mps":
        print("GPU sharing: MPS (decode rounds overlapped by perf/sharing.py mps_round_s; SIMULATED)")
    print(STAMP)
    return 0


def _experiments(only: set[str], out: Path, path: Path) -> int:
    results = json.loads(path.read_text()) if path.is_file() else {}
    t0 = time.perf_counter()
    if "rate" in only:
        print("rate sweep: mix8 on 2 GPUs")
        results["rate_sweep"] = ex.rate_sweep()
    if "gpus" in only:
        print("GPU sweep: mix18")
        results["gpu_sweep"] = ex.gpu_sweep("mix18", 9.0, 1, 18, 600.0, 120.0)
    if "large" in only:
        print("large scale: mix58, 1 hour")
        results["large_scale"] = ex.large_scale()
    if "large_low" in only:
        print("large scale, low load: mix58, 1 hour, 3 req/s")
        results["large_scale_low"] = ex.large_scale(rate=3.0)
    if "ablations" in only:
        print("ablations: mix58, 1 hour, 18 GPUs")
        results["ablations"] = ex.ablations("mix58", 10.0, 18, 3600.0, 600.0)
        print("ablations: mix58, 1 hour, 17 GPUs")
        results["ablations_17"] = ex.ablations("mix58", 10.0, 17, 3600.0, 600.0)
        print("ablations: mix8 on 2 GPUs, 28 req/s")
        results["ablations_mix8"] = ex.ablations("mix8", 28.0, 2, 600.0, 120.0)
    if "real" in only:
        print("real trace: LMSYS (27 models folded onto mix8), 2 GPUs")
        results["real_trace"] = ex.real_trace()
    if "timing" in only:
        results["timing"] = ex.timing()
        results["microbench"] = measure()
        results["microbench_cluster"] = measure_scale("cluster", repeats=5)
        print(f"timing: {results['timing']}; microbench: {results['microbench']}")
    results["stamp"] = STAMP
    path.write_text(json.dumps(results, indent=1) + "\n")
    for png in plots(results, out):
        print(f"wrote {png}")
    print(table(results))
    print(f"({time.perf_counter() - t0:.0f} s; {STAMP})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
