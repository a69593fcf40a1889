"""``python -m bench.chaos``: run the chaos scenarios on the sim engine and write a report.

python -m bench.chaos                       # every scenario, bench/results/chaos-sim/
python -m bench.chaos engine-kill slowloris --after-s 15 --out /tmp/chaos
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
from pathlib import Path

from bench.chaos.report import write
from bench.chaos.scenarios import SCENARIOS, Result, Timing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    p.add_argument(
        "scenarios",
        nargs="*",
        choices=[[], *SCENARIOS],
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    p.add_argument(
        "--warmup-s", type=float, default=Timing.warmup_s, help="load before the fault (default: %(default)s)"
    )
    p.add_argument("--after-s", type=float, default=Timing.after_s, help="load after the fault (default: %(default)s)")
    p.add_argument("--workers", type=int, default=Timing.workers, help="concurrent clients (default: %(default)s)")
    p.add_argument(
        "--bound-s",
        type=float,
        default=Timing.bound_s,
        help="a request without an end by then is hung (default: %(default)s)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("bench/results/chaos-sim"), help="report folder (default: %(default)s)"
    )
    args = p.parse_args(argv)
    timing = Timing(warmup_s=args.warmup_s, after_s=args.after_s, workers=args.workers, bound_s=args.bound_s)
    names = args.scenarios or list(SCENARIOS)
    results = asyncio.run(run(names, timing))
    print(write(args.out, results, {"scenarios": names, **dataclasses.asdict(timing)}))
    print(f"report: {args.out}/chaos.json")
    return 0 if all(r.lost == 0 for r in results) else 1


async def run(names: list[str], timing: Timing) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="chimera-chaos-") as tmp:
        for name in names:
            print(f"-- {name}", file=sys.stderr, flush=True)
            results.append(await SCENARIOS[name](Path(tmp) / name, timing))
    return results


if __name__ == "__main__":
    sys.exit(main())
