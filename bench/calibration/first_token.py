"""``python -m bench.calibration.first_token [RESULTS_DIR]``: fit what a real request pays for
its first token beyond the prefill (orchestrator/perf/calibration.py ``FirstToken``), from the
lowest-rate run of a multi-model run of the one-GPU experiment (RESULTS_DIR/static/
requests.jsonl.gz: every request's model, prompt, TTFT).

At low load the simulator's TTFT is the prefill alone (6-20 ms on the H200) where the real
ones are 26-126 ms at the median and ~300 ms at p99. Two costs, separated by the data:

- a per-request cost that scales with the model's colocated decode step, not with the
  prompt (TTFT hardly grows with prompt length at this load): SGLang's overlap scheduler
  takes a new request between steps (wait for the step in progress) and hands the prefill's
  token to the detokenizer one step later. Fitted as ``steps`` colocated decode steps of the
  model at batch 1 with the others decoding beside it: per model, (p25 TTFT - prefill of the
  median prompt) / that step; the median over models.
- a periodic delivery stall: first tokens of DIFFERENT engines that should have come within a
  few hundred ms of each other are released in the same instant, about every 1.3 s (stock
  engines share nothing but the GPU and the host). Fitted as a window of ``stall_s`` every
  ``period_s``: a first token due inside a window is seen at its end. ``stall_s`` = the median
  over models of p99 - p25 TTFT; the share of requests whose TTFT exceeds p25 by more than
  ``stall_s / 3`` is ``(2/3) stall_s / period_s`` under a uniform phase, which gives
  ``period_s``.

``--spread RUN_DIR...`` fits ``spread``, how much the path beyond the prefill varies from
request to request: each live run's lowest rate is replayed through the discrete-event
simulator (bench/gpu/des.py, the same trace and request ids, ``spread`` 0), each request's
real TTFT is divided by its simulated one, and the log-ratios' interquartile range / 1.349
(a normal's sigma, robust to the queued tail) is that run's sigma; the fit is the median over
the runs.

The fit is printed; the constants are copied by hand into calibration.py with this command
as provenance (the simulator never reads result files).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.config import load_config
from orchestrator.perf.calibration import H200
from orchestrator.perf.model import LatencyModel
from orchestrator.shapes import load_shape

DEFAULT_RESULTS = Path("bench/results/gpu-experiment-h200-a3")
DEFAULT_SETUP = Path("bench/gpu/placements/setup-a.yaml")


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def fit_first_token(requests: list[dict[str, Any]], shapes: dict[str, str]) -> dict[str, Any]:
    """``requests``: one run's records (model, prompt_tokens, ttft_s); ``shapes``: model ->
    shape name. Returns steps, stall_s, period_s and the per-model numbers behind them."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in requests:
        if r.get("ok") and r.get("ttft_s") is not None and r["model"] in shapes:
            by_model.setdefault(r["model"], []).append(r)
    others = len(by_model) - 1
    per: dict[str, dict[str, float]] = {}
    for m, rs in sorted(by_model.items()):
        lat = LatencyModel(load_shape(shapes[m]), 1, calibration=H200)
        ttft = [r["ttft_s"] for r in rs]
        prompt = int(statistics.median(r["prompt_tokens"] for r in rs))
        step = lat.decode_time([prompt]) + lat.colocated_extra_s(others)
        p25 = _q(ttft, 0.25)
        per[m] = {
            "n": len(rs),
            "p25_s": p25,
            "p99_s": _q(ttft, 0.99),
            "prefill_s": lat.prefill_time([(prompt, 0)]),
            "step_s": step,
            "steps": (p25 - lat.prefill_time([(prompt, 0)])) / step,
        }
    big = [m for m in per if per[m]["n"] >= 20]  # tails of a handful of requests say little
    stall = statistics.median(per[m]["p99_s"] - per[m]["p25_s"] for m in big)
    late = [r for m in big for r in by_model[m] if r["ttft_s"] > per[m]["p25_s"] + stall / 3]
    share = len(late) / sum(per[m]["n"] for m in big)
    return {
        "steps": statistics.median(p["steps"] for p in per.values()),
        "stall_s": stall,
        "period_s": (2 / 3) * stall / share if share > 0 else float("inf"),
        "models": per,
    }


def load_colocated(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run's answered records (model, prompt_tokens, sent_at_s, ttft_s, e2e_s), each with
    ``others``: how many OTHER models had a request in flight when it was sent (their servers
    busy on the shared GPU), and ``running``: its own model's requests then past their first
    token (decoding)."""
    ok = [r for r in requests if r.get("ok") and r.get("ttft_s") is not None and r.get("e2e_s") is not None]
    spans: dict[str, list[tuple[float, float, float]]] = {}
    for r in ok:
        t = r["sent_at_s"]
        spans.setdefault(r["model"], []).append((t, t + r["ttft_s"], t + r["e2e_s"]))
    out = []
    for r in ok:
        t = r["sent_at_s"]
        others = sum(1 for m, sp in spans.items() if m != r["model"] and any(a < t < e for a, _, e in sp))
        running = sum(1 for _, f, e in spans[r["model"]] if f < t < e)
        out.append({**r, "others": others, "running": running})
    return out


def fit_colocated(rows: list[dict[str, Any]], shapes: dict[str, str]) -> dict[str, float]:
    """Fit ``fixed_s``, ``steps`` and ``prefill_share`` (calibration.py ``FirstToken``) to
    TTFT = prefill x (1 + prefill_share x others) + fixed_s + steps x colocated step, over
    ``load_colocated``'s rows: least absolute deviations (the tail of queued requests does not
    pull the fit), by iteratively reweighted least squares."""
    lat = {m: LatencyModel(load_shape(s), 1, calibration=H200) for m, s in shapes.items()}
    xs: list[tuple[float, float, float]] = []
    ys: list[float] = []
    for r in rows:
        if r["model"] not in lat:
            continue
        m = lat[r["model"]]
        pf = m.prefill_time([(r["prompt_tokens"], 0)])
        step = m.decode_time([r["prompt_tokens"]] * (r["running"] + 1)) + m.colocated_extra_s(r["others"])
        xs.append((1.0, step, pf * r["others"]))
        ys.append(r["ttft_s"] - pf)
    w = [1.0] * len(ys)
    c = (0.0, 0.0, 0.0)
    for _ in range(60):
        c = _solve3(xs, ys, w)
        w = [1 / max(abs(y - sum(a * b for a, b in zip(c, x, strict=True))), 1e-4) for x, y in zip(xs, ys, strict=True)]
    return {"fixed_s": c[0], "steps": c[1], "prefill_share": c[2], "n": float(len(ys))}


def _solve3(xs: list[tuple[float, float, float]], ys: list[float], w: list[float]) -> tuple[float, float, float]:
    """Weighted least squares with three unknowns: the normal equations by Cramer's rule."""
    a = [[sum(wi * x[i] * x[j] for x, wi in zip(xs, w, strict=True)) for j in range(3)] for i in range(3)]
    b = [sum(wi * x[i] * y for x, y, wi in zip(xs, ys, w, strict=True)) for i in range(3)]

    def det(m: list[list[float]]) -> float:
        return (
            m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
        )

    d = det(a)
    cols = [[[b[i] if j == k else a[i][j] for j in range(3)] for i in range(3)] for k in range(3)]
    return (det(cols[0]) / d, det(cols[1]) / d, det(cols[2]) / d)


def spread_sigma(real: dict[int, float], sim: dict[int, float]) -> float | None:
    """The sigma of log(real / simulated TTFT) over the requests in both (by id), from the
    interquartile range (/ 1.349, a normal's); None with fewer than 8 pairs."""
    logs = [math.log(real[i] / sim[i]) for i in real.keys() & sim.keys() if real[i] > 0 and sim[i] > 0]
    if len(logs) < 8:
        return None
    return (_q(logs, 0.75) - _q(logs, 0.25)) / 1.349


def fit_spread(run_dir: Path) -> tuple[float | None, int]:
    """One live run of the one-GPU experiment (experiment.json, requests.jsonl.gz): its lowest
    rate replayed by the discrete-event simulator with the H200 calibration at ``spread`` 0;
    returns (sigma, pairs)."""
    from bench.gpu import des, experiment  # the simulator: only this fit needs it

    doc = json.loads((run_dir / "experiment.json").read_text())
    lowest = min(range(len(doc["rates"])), key=lambda i: doc["rates"][i]["rate"])
    with gzip.open(run_dir / "requests.jsonl.gz", "rt") as f:
        real = {
            r["id"]: r["ttft_s"]
            for r in map(json.loads, f)
            if r["run"] == lowest and r.get("ok") and r.get("ttft_s") is not None
        }
    cal = replace(H200, first_token=replace(H200.first_token, spread=0.0)) if H200.first_token else H200
    out: list[list[Any]] = []
    rate = doc["rates"][lowest]["rate"]
    setup = experiment.load_setup(doc["setup"])
    cmd = doc.get("provenance", {}).get("command", [])  # the live run's seed: its trace
    des.run(
        setup,
        doc["system"],
        doc["trace"],
        [rate],
        doc["duration_per_rate_s"],
        int(cmd[cmd.index("--seed") + 1]) if "--seed" in cmd else experiment.build_parser().get_default("seed"),
        experiment.trace_for,
        cal,
        records_out=out,
    )
    sim = {r.id: r.ttft_s for r in out[0] if r.ok and r.ttft_s is not None}
    return spread_sigma(real, sim), len(real.keys() & sim.keys())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.calibration.first_token", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="?", default=DEFAULT_RESULTS)
    ap.add_argument("--setup", type=Path, default=DEFAULT_SETUP)
    ap.add_argument(
        "--colocated",
        metavar="RUN",
        help="fit fixed_s, steps and prefill_share from RESULTS_DIR/RUN/requests.jsonl.gz instead "
        "(its runs given by --runs)",
    )
    ap.add_argument("--runs", default="0,1,2", help="with --colocated: the rate indices fitted (default 0,1,2)")
    ap.add_argument(
        "--spread",
        metavar="RUN_DIR",
        type=Path,
        nargs="+",
        help="fit spread from these live runs (each a bench/results/... system folder with experiment.json and "
        "requests.jsonl.gz; RESULTS_DIR is then ignored)",
    )
    args = ap.parse_args(argv)
    if args.spread:
        sigmas = []
        for d in args.spread:
            if not (d / "experiment.json").is_file() or not (d / "requests.jsonl.gz").is_file():
                print(f"error: {d} has no experiment.json and requests.jsonl.gz (a live run's folder)", file=sys.stderr)
                return 2
            sigma, n = fit_spread(d)
            print(f"{d}: {n} requests paired, sigma {'-' if sigma is None else f'{sigma:.3f}'}")
            if sigma is not None:
                sigmas.append(sigma)
        if not sigmas:
            print("error: no run had 8 requests to pair", file=sys.stderr)
            return 1
        print(f"spread={statistics.median(sigmas):.3f} (median of {len(sigmas)} runs)")
        return 0
    cfg = load_config(args.setup)
    shapes = {m.name: m.shape.name for m in cfg.models}
    if args.colocated:
        with gzip.open(args.results / args.colocated / "requests.jsonl.gz", "rt") as f:
            every = [json.loads(line) for line in f]
        rows = [x for k in map(int, args.runs.split(",")) for x in load_colocated([r for r in every if r["run"] == k])]
        fit = fit_colocated(rows, shapes)
        print(" ".join(f"{k}={v:.0f}" if k == "n" else f"{k}={v:.4f}" for k, v in fit.items()))
        return 0
    with gzip.open(args.results / "static" / "requests.jsonl.gz", "rt") as f:
        recs = [json.loads(line) for line in f]
    first = min(r["run"] for r in recs)
    out = fit_first_token([r for r in recs if r["run"] == first], shapes)
    for m, p in out["models"].items():
        print(
            f"{m:12s} n={p['n']:4.0f} p25 {p['p25_s'] * 1e3:5.0f} ms  p99 {p['p99_s'] * 1e3:5.0f} ms  "
            f"prefill {p['prefill_s'] * 1e3:4.1f} ms  step {p['step_s'] * 1e3:4.1f} ms  -> {p['steps']:.2f} steps"
        )
    print(f"steps={out['steps']:.2f} stall_s={out['stall_s']:.3f} period_s={out['period_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
