"""``python -m bench.calibration.h200_multi [RESULTS_DIR...]``: fit the H200 calibration
(orchestrator/perf/calibration.py ``H200``) from a multi-model run of the one-GPU experiment
(``python -m bench.gpu.experiment --engine sglang``), whose ``static/`` and ``full/`` folders
hold engine-batches.tsv.gz: every SGLang "Prefill batch" / "Decode batch" line of every
colocated engine (time, running requests, queue, tokens, throughput).

Everything is measured WHILE colocated, per model shape (orchestrator/shapes):

- decode: SGLang logs a decode line every 40 decode steps (``--decode-log-interval``); its gen
  throughput is the tokens generated since the previous line over the wall time since it, so
  one step of the batch took ``running / throughput`` seconds. Only clean intervals count: the
  previous line of that engine was a decode line (no prefill in between) at most
  ``MAX_GAP_S`` earlier (no idle time in between). Fitted per shape:
  ``step = base + per_req x running + per_other x others``, where ``others`` = how many OTHER
  engines logged a decode line in the same second or the one before. SGLang stamps its lines
  to the second, and one 40-step interval lasts 0.1-1 s, so "decoding at the same moment" is
  known to one second and no better: ``per_other`` is the interference averaged over that.
  Time-slicing (each process's kernels run alone, one after another) would add each other
  engine's own step time (4-20 ms here); overlap of one engine's CPU-side scheduling with
  another's kernels adds less. The fit says which.
- prefill: "Prefill batch" lines carry the new tokens and an input throughput over the time
  since the previous prefill line, so only back-to-back prefills (the previous line of that
  engine was a prefill in the same second) give the batch's own time: ``tokens / throughput``.
  Fitted per shape: ``prefill = base + tokens / tokens_per_s``.

A RESULTS_DIR may also be one run folder (``.../static``), to fit on some runs; ``--check
RUN...`` then reports the fit's measured / fitted step on runs held out of it.

The fits (robust least squares, bench/calibration/fit.py: outliers beyond 3.5 MADs dropped)
and their residuals go to RESULTS_DIR/calibration-h200.json and are printed; the constants are
copied by hand into calibration.py with this command as provenance (they are not read at run
time: the sim never reads the environment or result files).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.calibration.fit import Fit, FitError, fit
from orchestrator.config import load_config

SCHEMA = "chimera-h200-multi-calibration/1"
SYSTEMS = ("static", "full")
MAX_GAP_S = 2  # a decode interval longer than this spanned idle time (40 steps take <= 1 s here)
DEFAULT_RESULTS = Path("bench/results/gpu-experiment-h200-a")
DEFAULT_SETUP = Path("bench/gpu/placements/setup-a.yaml")


@dataclass(frozen=True)
class Line:
    engine: str
    second: int
    kind: str  # "decode" | "prefill"
    running: int
    new_tokens: int
    throughput: float
    eager: bool = False  # a decode batch above --cuda-graph-max-bs ("cuda graph: False")


def _second(stamp: str) -> int:
    return int(dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC).timestamp())


def read_lines(path: Path) -> list[Line]:
    """One run's engine-batches.tsv.gz, in file order (each engine's lines in log order)."""
    with gzip.open(path, "rt") as f:
        return [
            Line(
                r["engine"],
                _second(r["time"]),
                r["kind"],
                int(r["running"] or 0),
                int(r["new_tokens"] or 0),
                float(r["throughput"] or 0.0),
                r.get("graph") == "False",  # files collected before the column: unknown, graph
            )
            for r in csv.DictReader(f, delimiter="\t")
        ]


def engine_shapes(setup: Path) -> dict[str, str]:
    """Engine name (``<model>-gpu<N>``, as the run's log files are named) -> model shape."""
    cfg = load_config(setup)
    return {f"{m.name}-gpu{g}": m.shape.name for m in cfg.models for p in m.placements for g in p.gpus}


def samples(lines: list[Line], shapes: dict[str, str]) -> tuple[dict[str, list[tuple[list[float], float]]], ...]:
    """(decode, prefill, eager decode) samples per shape: decode rows [1, running, others] ->
    step seconds of batches on a CUDA graph, eager decode rows alike for the batches above the
    captured graphs (kept out of the fit: calibration.py EAGER_DECODE_FACTOR is their ratio to
    it); prefill rows [1, new tokens] -> batch seconds."""
    decoding: dict[int, set[str]] = defaultdict(set)
    for ln in lines:
        if ln.kind == "decode":
            decoding[ln.second].add(ln.engine)
    dec: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
    eager: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
    pre: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
    prev: dict[str, Line] = {}
    for ln in lines:
        before, prev[ln.engine] = prev.get(ln.engine), ln
        shape = shapes.get(ln.engine)
        if shape is None or before is None or ln.throughput <= 0 or before.kind != ln.kind:
            continue
        if ln.kind == "decode" and ln.running > 0 and ln.second - before.second <= MAX_GAP_S:
            others = len((decoding[ln.second] | decoding[ln.second - 1]) - {ln.engine})
            (eager if ln.eager else dec)[shape].append(
                ([1.0, float(ln.running), float(others)], ln.running / ln.throughput)
            )
        elif ln.kind == "prefill" and ln.new_tokens >= 16 and ln.second == before.second:
            pre[shape].append(([1.0, float(ln.new_tokens)], ln.new_tokens / ln.throughput))
    return dec, pre, eager


def _fit(names: list[str], rows: list[tuple[list[float], float]]) -> Fit | None:
    try:
        return fit(names, [x for x, _ in rows], [y for _, y in rows])
    except FitError as exc:
        print(f"  no fit of {', '.join(names)}: {exc}", file=sys.stderr)
        return None


def runs(folders: list[Path]) -> list[tuple[Path, str]]:
    """(results folder, system) of each run: a results folder stands for its static/ and full/,
    a run folder (``.../static``) for itself alone (to fit on some runs, check on others)."""
    out = []
    for f in folders:
        pairs = [(f.parent, f.name)] if f.name in SYSTEMS else [(f, s) for s in SYSTEMS]
        for folder, system in pairs:
            if not (folder / system / "engine-batches.tsv.gz").is_file():
                raise SystemExit(
                    f"error: {folder / system}/engine-batches.tsv.gz not found: give a results folder holding "
                    "static/ and full/ of a live experiment, or one of those run folders"
                )
            out.append((folder, system))
    return out


def calibrate(results: Path | list[Path], setup: Path) -> dict[str, Any]:
    """The fits over the static/ and full/ runs of one or several results folders, or over
    single run folders (of the same set-up's engine names)."""
    folders = results if isinstance(results, list) else [results]
    shapes = engine_shapes(setup)
    dec: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
    pre: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
    eag: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
    provenance = {}
    for folder, system in runs(folders):
        path = folder / system / "engine-batches.tsv.gz"
        d, p, e = samples(read_lines(path), shapes)
        for k, v in d.items():
            dec[k] += v
        for k, v in p.items():
            pre[k] += v
        for k, v in e.items():
            eag[k] += v
        exp = folder / system / "experiment.json"
        if exp.is_file():
            provenance[f"{folder.name}/{system}" if len(folders) > 1 else system] = json.loads(exp.read_text()).get(
                "provenance", {}
            )
    out: dict[str, Any] = {
        "schema": SCHEMA,
        "results": str(folders[0]) if len(folders) == 1 else [str(f) for f in folders],
        "setup": str(setup),
        "provenance": provenance,
    }
    fits: dict[str, Any] = {}
    for shape in sorted(set(dec) | set(pre)):
        one: dict[str, Any] = {}
        d = _fit(["base_s", "per_req_s", "per_other_s"], dec[shape]) if dec[shape] else None
        if d is not None:
            alone = [y - d["per_other_s"] * x[2] for x, y in dec[shape]]
            one["decode"] = {
                **d.to_json(),
                "samples": len(dec[shape]),
                "mean_running": sum(x[1] for x, _ in dec[shape]) / len(dec[shape]),
                "mean_others": sum(x[2] for x, _ in dec[shape]) / len(dec[shape]),
                "mean_step_alone_s": sum(alone) / len(alone),
            }
            if eag[shape]:  # eager steps over the graph fit at the same batch and neighbours
                ratios = sorted(
                    y / (d["base_s"] + d["per_req_s"] * x[1] + d["per_other_s"] * x[2]) for x, y in eag[shape]
                )
                one["eager"] = {"samples": len(ratios), "median_ratio": ratios[len(ratios) // 2]}
        p = _fit(["base_s", "s_per_token"], pre[shape]) if pre[shape] else None
        if p is not None:
            one["prefill"] = {**p.to_json(), "samples": len(pre[shape]), "tokens_per_s": 1.0 / p["s_per_token"]}
        fits[shape] = one
    out["fits"] = fits
    return out


def check(doc: dict[str, Any], folders: list[Path], setup: Path) -> dict[str, Any]:
    """The fit of ``doc`` against runs it did not see: per shape, the median of measured /
    predicted step over their clean intervals, on CUDA graphs and eager (an eager step as the
    fit's colocated step x its eager / graph ratio, as the simulator charges it)."""
    shapes = engine_shapes(setup)
    dec: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
    eag: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
    for folder, system in runs(folders):
        d, _, e = samples(read_lines(folder / system / "engine-batches.tsv.gz"), shapes)
        for k, v in d.items():
            dec[k] += v
        for k, v in e.items():
            eag[k] += v
    out: dict[str, Any] = {"runs": [f"{f}/{s}" for f, s in runs(folders)], "shapes": {}}
    for shape, f in doc["fits"].items():
        if "decode" not in f:
            continue
        c = f["decode"]["coef"]
        factor = f.get("eager", {}).get("median_ratio")
        one: dict[str, Any] = {}
        for kind, rows, scale in (("graph", dec[shape], 1.0), ("eager", eag[shape], factor)):
            if rows and scale is not None:
                r = sorted(
                    y / (scale * (c["base_s"] + c["per_req_s"] * x[1] + c["per_other_s"] * x[2])) for x, y in rows
                )
                one[kind] = {"samples": len(r), "median_measured_over_fit": r[len(r) // 2]}
        out["shapes"][shape] = one
    return out


def report(doc: dict[str, Any]) -> str:
    rows = [
        "| shape | decode n | base ms | per req ms | per other engine ms (t) | rmse ms | r2 | resid p5/p50/p95 ms "
        "| prefill n | base ms | tokens/s | rmse ms | eager decode n | eager / graph step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, f in doc["fits"].items():
        d, p = f.get("decode"), f.get("prefill")
        cells = [shape]
        if d:
            c, e = d["coef"], d["stderr"]
            t = c["per_other_s"] / e["per_other_s"] if e["per_other_s"] else float("inf")
            q = "/".join(f"{1000 * v:.2f}" for v in d["residual_p5_p50_p95"])
            cells += [
                f"{d['n']} (+{d['dropped_outliers']} out)",
                f"{1000 * c['base_s']:.2f}",
                f"{1000 * c['per_req_s']:.3f}",
                f"{1000 * c['per_other_s']:.2f} ({t:.1f})",
                f"{1000 * d['rmse']:.2f}",
                f"{d['r2']:.2f}",
                q,
            ]
        else:
            cells += ["-"] * 7
        if p:
            cells += [
                f"{p['n']} (+{p['dropped_outliers']} out)",
                f"{1000 * p['coef']['base_s']:.1f}",
                f"{p['tokens_per_s']:.0f}" if p["tokens_per_s"] > 0 else "none (slope <= 0: not usable)",
                f"{1000 * p['rmse']:.1f}",
            ]
        else:
            cells += ["-"] * 4
        eager = f.get("eager")
        cells += [str(eager["samples"]), f"{eager['median_ratio']:.2f}"] if eager else ["-", "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.calibration.h200_multi", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "results", nargs="*", type=Path, help=f"results folders, fitted together (default {DEFAULT_RESULTS})"
    )
    ap.add_argument("--setup", type=Path, default=DEFAULT_SETUP, help="the run's placements file (default %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="where the fit goes (default: the first results folder)")
    ap.add_argument(
        "--check",
        type=Path,
        nargs="+",
        default=[],
        metavar="RUN",
        help="results or run folders held out of the fit: the fit's measured / predicted step on them",
    )
    args = ap.parse_args(argv)
    folders = args.results or [DEFAULT_RESULTS]
    doc = calibrate(folders, args.setup)
    if args.check:
        doc["check"] = check(doc, args.check, args.setup)
    out = args.out or folders[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration-h200.json").write_text(json.dumps(doc, indent=2) + "\n")
    table = report(doc)
    if "check" in doc:
        table += "\n\nHeld out (" + ", ".join(doc["check"]["runs"]) + "): median measured / fitted step\n\n"
        table += "| shape | graph n | graph | eager n | eager |\n|---|---|---|---|---|\n"
        for shape, one in doc["check"]["shapes"].items():
            cells = [shape]
            for kind in ("graph", "eager"):
                k = one.get(kind)
                cells += [str(k["samples"]), f"{k['median_measured_over_fit']:.2f}"] if k else ["-", "-"]
            table += "| " + " | ".join(cells) + " |\n"
    (out / "calibration-h200.md").write_text(
        "# H200 calibration fit (python -m bench.calibration.h200_multi)\n\n"
        "Per shape, from the colocated engines' SGLang batch lines of static/ and full/ "
        "(1-s time stamps: 'others' = engines with a decode line in the same or the previous second). "
        "The prefill lines' input throughput spans whatever ran since the previous prefill line, so "
        "their fit is reported, not used (calibration.py takes PREFILL_MFU from the H200 trace run).\n\n" + table + "\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
