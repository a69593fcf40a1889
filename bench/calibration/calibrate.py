"""``python -m bench.calibration.calibrate REPORT_DIR``: fit the sim engine's latency constants from a live
run written by ``python -m bench.gpu.trace`` (requests.jsonl + calibration_data.json), print
the fits with their residuals, and write REPORT_DIR/calibration.json with provenance.

The sim's model (orchestrator/perf/model.py, constants in calibration.py), one GPU:

    prefill = PREFILL_STEP_OVERHEAD_S + max(FLOPs / (PEAK x PREFILL_MFU), weights / (HBM x WRE))
    decode step = DECODE_STEP_OVERHEAD_S + max(weights / (HBM x WRE),
                                               batch x FLOPs/token / (PEAK x DECODE_MFU))
                  + summed context x KV bytes/token / (HBM x KV_READ_EFFICIENCY)

What is fitted, per model (bench/calibration/samples.py says how samples are chosen):
- prefill: TTFT of isolated requests = a + P / (prefill tokens/s), and = a + FLOPs/PEAK / MFU
  -> PREFILL_MFU, PREFILL_STEP_OVERHEAD_S (a; it also holds the HTTP and tokenizer round trip
  and the wait for the decode step in progress, as the sim's constant does);
- decode step = a + b x batch (+ c x summed context where the data support it, |t| > 2): from
  SGLang's "Decode batch" log lines when there are enough clean ones, else from the clients'
  TPOT with the prefills and the other models' load as extra regressors;
- then across models: a_m = DECODE_STEP_OVERHEAD_S + weights_m / (HBM x WRE) (two models with
  different weights give both), KV_READ_EFFICIENCY = KV bytes/token / (HBM x c);
  DECODE_MFU only when batches reached the compute-bound size (they do not at a few req/s).

Constants the data cannot pin down are reported as such with the reason, never guessed.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.calibration.data import SCHEMA as DATA_SCHEMA
from bench.calibration.data import DecodeLine
from bench.calibration.fit import Fit, FitError, fit
from bench.calibration.samples import (
    DECODE_REGRESSORS,
    decode_samples,
    phases,
    prefill_samples,
)
from bench.report import read_records
from orchestrator.perf import calibration as cal
from orchestrator.shapes import ModelShape, resolve_shape

SCHEMA = "chimera-sim-calibration/1"
MIN_LOG_SAMPLES = 30  # clean "Decode batch" intervals needed to prefer the engine's own numbers
console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)


class CalibrationError(ValueError):
    """The folder is not a gpu_trace output, or holds too little to fit (fatal)."""


def load(report_dir: Path) -> tuple[dict[str, Any], list[Any]]:
    data_path, req_path = report_dir / "calibration_data.json", report_dir / "requests.jsonl"
    for p in (data_path, req_path):
        if not p.is_file():
            raise CalibrationError(f"{p} not found: REPORT_DIR must be the --out folder of python -m bench.gpu.trace")
    data = json.loads(data_path.read_text())
    if data.get("schema") != DATA_SCHEMA:
        raise CalibrationError(f"{data_path}: schema {data.get('schema')!r}, expected {DATA_SCHEMA!r}")
    return data, read_records(req_path)


def _try(names: tuple[str, ...], samples: list[tuple[list[float], float]], cols: list[int]) -> Fit | None:
    try:
        return fit([names[c] for c in cols], [[x[c] for c in cols] for x, _ in samples], [y for _, y in samples])
    except FitError as exc:
        console.print(f"  [yellow]no fit of {', '.join(names[c] for c in cols)}: {exc}[/]")
        return None


def _supported(f: Fit | None, name: str) -> bool:
    return f is not None and f[name] > 0 and abs(f.t(name)) > 2


def fit_prefill(samples: list[tuple[list[float], float]]) -> dict[str, Fit | None]:
    names = ("one", "prompt_tokens", "compute_s_at_peak", "other_batch")
    return {"tokens": _try(names, samples, [0, 1, 3]), "flops": _try(names, samples, [0, 2, 3])}


def fit_decode_client(samples: list[tuple[list[float], float]]) -> Fit | None:
    full = _try(DECODE_REGRESSORS, samples, [0, 1, 2, 3, 4, 5])
    if _supported(full, "context_tokens"):
        return full
    return _try(DECODE_REGRESSORS, samples, [0, 1, 3, 4, 5])


def fit_decode_log(lines: list[DecodeLine]) -> Fit | None:
    names = ("one", "batch", "context_tokens")
    clean = [(line, s) for line in lines if (s := line.step_s) is not None]
    samples = [([1.0, float(line.running), float(line.kv_tokens or 0)], s) for line, s in clean]
    if len(samples) < MIN_LOG_SAMPLES:
        return None
    if all(line.kv_tokens is not None for line, _ in clean):
        full = _try(names, samples, [0, 1, 2])
        if _supported(full, "context_tokens"):
            return full
    return _try(names, samples, [0, 1])


def _constant(value: float | None, current: float, source: str, note: str = "") -> dict[str, Any]:
    ok = value is not None and math.isfinite(value) and value > 0
    return {
        "value": value if ok else None,
        "current": current,
        "source": source,
        "note": note if ok else (note or "not identifiable from this run"),
    }


def derive(
    shapes: dict[str, ModelShape],
    prefill: dict[str, dict[str, Fit | None]],
    decode: dict[str, tuple[str, Fit | None]],
    max_batch: dict[str, float],
) -> dict[str, Any]:
    """calibration.py's constants from the per-model fits."""
    hbm, peak = cal.HBM_BANDWIDTH, cal.PEAK_BF16_FLOPS
    out: dict[str, Any] = {}
    mfu = {
        m: 1 / f["compute_s_at_peak"]
        for m, p in prefill.items()
        if (f := p["flops"]) is not None and f["compute_s_at_peak"] > 0
    }
    n = {m: f.n for m, p in prefill.items() if (f := p["flops"]) is not None}
    out["PREFILL_MFU"] = _constant(
        sum(mfu[m] * n[m] for m in mfu) / sum(n[m] for m in mfu) if mfu else None,
        cal.PREFILL_MFU,
        "prefill fit (TTFT vs FLOPs), sample-weighted over models",
        "per model: " + ", ".join(f"{m} {v:.3f}" for m, v in mfu.items()),
    )
    overheads = [f["one"] for p in prefill.values() if (f := p["flops"]) is not None]
    out["PREFILL_STEP_OVERHEAD_S"] = _constant(
        sum(overheads) / len(overheads) if overheads else None,
        cal.PREFILL_STEP_OVERHEAD_S,
        "prefill fit intercept, mean over models",
        "includes the HTTP/tokenizer round trip and the wait for a running decode step",
    )
    # decode intercepts: a_m = overhead + weights_m / (HBM x WRE)
    pts = [(shapes[m].weight_bytes / hbm, f["one"]) for m, (_, f) in decode.items() if f is not None and m in shapes]
    wre = overhead = None
    if len({round(w, 6) for w, _ in pts}) >= 2:
        k_fit = (
            fit(["one", "weight_read_s_at_peak"], [[1.0, w] for w, _ in pts], [a for _, a in pts])
            if len(pts) > 2
            else None
        )
        if k_fit is not None:
            overhead, k = k_fit["one"], k_fit["weight_read_s_at_peak"]
        else:
            (w1, a1), (w2, a2) = pts
            k = (a2 - a1) / (w2 - w1)
            overhead = a1 - w1 * k
        wre = 1 / k if k > 0 else None
    out["DECODE_STEP_OVERHEAD_S"] = _constant(
        overhead,
        cal.DECODE_STEP_OVERHEAD_S,
        "decode intercepts vs weights across models",
        "" if len(pts) >= 2 else "needs two models of different size",
    )
    out["WEIGHT_READ_EFFICIENCY"] = _constant(
        wre,
        cal.WEIGHT_READ_EFFICIENCY,
        "decode intercepts vs weights across models",
        "" if len(pts) >= 2 else "needs two models of different size",
    )
    kv = {
        m: shapes[m].kv_bytes_per_token / (hbm * f["context_tokens"])
        for m, (_, f) in decode.items()
        if f is not None and m in shapes and "context_tokens" in f.names and f["context_tokens"] > 0
    }
    out["KV_READ_EFFICIENCY"] = _constant(
        sum(kv.values()) / len(kv) if kv else None,
        cal.KV_READ_EFFICIENCY,
        "decode step vs summed context, mean over models",
        ("per model: " + ", ".join(f"{m} {v:.3f}" for m, v in kv.items()))
        if kv
        else "the summed-context term was not supported by the data (|t| <= 2 or negative)",
    )
    crossover = {
        m: (shapes[m].weight_bytes / (hbm * cal.WEIGHT_READ_EFFICIENCY))
        / (shapes[m].flops_per_token / (peak * cal.DECODE_MFU))
        for m in decode
    }
    out["DECODE_MFU"] = _constant(
        None,
        cal.DECODE_MFU,
        "decode step vs batch in the compute-bound regime",
        "largest mean batch "
        + ", ".join(f"{m} {max_batch.get(m, 0):.1f}" for m in decode)
        + " vs compute-bound from about "
        + ", ".join(f"{m} {v:.0f}" for m, v in crossover.items()),
    )
    per_request = {m: f["batch"] for m, (_, f) in decode.items() if f is not None}
    out["decode_seconds_per_request_in_batch"] = {
        "value": per_request,
        "current": 0.0,
        "source": "decode fit, batch slope",
        "note": "not a constant of the sim's model (memory-bound decode costs nothing per "
        "request there); a real per-request cost (sampling, scheduling) shows here",
    }
    return out


def metric_deltas(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> dict[str, dict[str, float]]:
    """Per instance: counters and histogram sums/counts that changed during the trace."""
    out: dict[str, dict[str, float]] = {}
    for inst, samples in after.items():
        old = {(n, json.dumps(lb, sort_keys=True)): v for n, lb, v in before.get(inst, [])}
        deltas: dict[str, float] = {}
        for name, labels, value in samples:
            if not name.endswith(("_total", "_sum", "_count")):
                continue
            d = value - old.get((name, json.dumps(labels, sort_keys=True)), 0.0)
            tag = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k in ("category", "mode"))
            key = f"{name}{{{tag}}}" if tag else name
            if d:
                deltas[key] = deltas.get(key, 0.0) + d
        out[inst] = deltas
    return out


def cross_checks(deltas: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """Engine-side means over the trace, from the counters' deltas: TTFT, ITL and queue time
    (SGLang's histograms), and, where SGLang exports them (SGLANG_ENABLE_METRICS_DEVICE_TIMER=1),
    prefill tokens/s and the mean decode step and batch from GPU forward time."""

    def ratio(num: float, den: float) -> float | None:
        return num / den if den else None

    def total(d: dict[str, float], prefix: str, *parts: str) -> float:
        """Sum of the series named ``prefix...`` whose key contains one of ``parts``."""
        return sum(v for k, v in d.items() if k.startswith(prefix) and (not parts or any(p in k for p in parts)))

    fwd = "sglang:forward_execution_seconds_total"
    out: dict[str, dict[str, float | None]] = {}
    for inst, d in deltas.items():
        out[inst] = {
            "ttft_mean_s": ratio(
                total(d, "sglang:time_to_first_token_seconds_sum"), total(d, "sglang:time_to_first_token_seconds_count")
            ),
            "itl_mean_s": ratio(
                total(d, "sglang:inter_token_latency_seconds_sum"), total(d, "sglang:inter_token_latency_seconds_count")
            ),
            "queue_mean_s": ratio(
                total(d, "sglang:queue_time_seconds_sum"), total(d, "sglang:queue_time_seconds_count")
            ),
            "prefill_tokens_per_s": ratio(
                total(d, "sglang:realtime_tokens_total", "prefill_compute"), total(d, fwd, "extend", "prefill")
            ),
            "decode_step_mean_s": ratio(total(d, fwd, "decode"), total(d, "sglang:cuda_graph_passes_total", "decode")),
            "decode_batch_mean": ratio(
                total(d, "sglang:realtime_tokens_total", "mode=decode"),
                total(d, "sglang:cuda_graph_passes_total", "decode"),
            ),
        }
    return out


def _fit_row(t: Table, model: str, what: str, f: Fit | None) -> None:
    if f is None:
        t.add_row(model, what, "-", "-", "-", "-")
        return
    coef = ", ".join(f"{n}={c:.4g}±{s:.2g}" for n, c, s in zip(f.names, f.coef, f.stderr, strict=True))
    p5, p50, p95 = f.residual_quantiles
    t.add_row(
        model,
        what,
        coef,
        f"{f.n} (-{f.dropped})",
        f"{f.rmse * 1000:.3f} ms",
        f"{p5 * 1000:.2f}/{p50 * 1000:.2f}/{p95 * 1000:.2f} ms",
    )


def calibrate(report_dir: Path, out: Path, command: list[str]) -> dict[str, Any]:
    data, records = load(report_dir)
    shapes = {m: resolve_shape(spec["model_path"]) for m, spec in data["models"].items()}
    pre, dec = phases(records)
    pre_samples = prefill_samples(pre, dec, shapes)
    dec_samples = decode_samples(pre, dec)
    t = Table(title="calibration fits (seconds; residuals of the samples used)")
    for col in ("model", "fit", "coefficients ± s.e.", "n (-outliers)", "rmse", "residual p5/p50/p95"):
        t.add_column(col)
    prefill: dict[str, dict[str, Fit | None]] = {}
    decode: dict[str, tuple[str, Fit | None]] = {}
    fits: dict[str, Any] = {}
    instance_of = {r.instance.replace("@", "-"): r.model for r in records if r.instance}
    logs = {
        instance_of[stem]: [DecodeLine(**d) for d in v["decode"]]
        for stem, v in data.get("engine_log", {}).items()
        if stem in instance_of
    }
    max_batch: dict[str, float] = {}
    for m in sorted(shapes):
        prefill[m] = fit_prefill(pre_samples.get(m, []))
        client = fit_decode_client(dec_samples.get(m, []))
        log_fit = fit_decode_log(logs.get(m, []))
        decode[m] = ("engine log", log_fit) if log_fit is not None else ("client TPOT", client)
        max_batch[m] = max((x[1] for x, _ in dec_samples.get(m, [])), default=0.0)
        _fit_row(t, m, "prefill: TTFT vs tokens", prefill[m]["tokens"])
        _fit_row(t, m, "prefill: TTFT vs FLOPs/peak", prefill[m]["flops"])
        _fit_row(t, m, "decode: client TPOT", client)
        _fit_row(t, m, "decode: engine log step", log_fit)
        tok = prefill[m]["tokens"]
        fits[m] = {
            "prefill_tokens": tok.to_json() if tok else None,
            "prefill_flops": (f.to_json() if (f := prefill[m]["flops"]) else None),
            "prefill_tokens_per_s": (1 / tok["prompt_tokens"] if tok and tok["prompt_tokens"] > 0 else None),
            "decode_client": client.to_json() if client else None,
            "decode_engine_log": log_fit.to_json() if log_fit else None,
            "decode_used": decode[m][0],
            "max_mean_batch": max_batch[m],
        }
    console.print(t)
    constants = derive(shapes, prefill, decode, max_batch)
    c = Table(title="sim constants (orchestrator/perf/calibration.py)")
    for col in ("constant", "fitted", "current", "source / note"):
        c.add_column(col)
    for name, v in constants.items():
        if isinstance(v["value"], dict):
            fitted = ", ".join(f"{m} {x * 1000:.3f} ms" for m, x in v["value"].items())
        else:
            fitted = "-" if v["value"] is None else f"{v['value']:.4g}"
        c.add_row(name, fitted, f"{v['current']:.4g}", v["source"] + (f"; {v['note']}" if v["note"] else ""))
    console.print(c)
    deltas = metric_deltas(data.get("metrics_before", {}), data.get("metrics_after", {}))
    checks = cross_checks(deltas)
    x = Table(title="engine-side means over the trace (SGLang's /metrics; '-' = not exported)")
    for col in ("instance", *next(iter(checks.values()), {}).keys()):
        x.add_column(col)
    for inst, row in checks.items():
        x.add_row(inst, *("-" if v is None else f"{v:.4g}" for v in row.values()))
    console.print(x)
    prov = data.get("provenance", {})
    doc = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "provenance": {
            **prov,
            "calibrate_command": command,
            "report_dir": str(report_dir),
            "samples": {
                "requests": len(records),
                "prefill": {m: len(v) for m, v in pre_samples.items()},
                "decode": {m: len(v) for m, v in dec_samples.items()},
                "engine_log_decode_lines": {m: len(v) for m, v in logs.items()},
            },
        },
        "simulated": bool(prov.get("simulated")),
        "constants": constants,
        "fits": fits,
        "engine_metric_deltas": deltas,
        "engine_cross_checks": checks,
    }
    out.write_text(json.dumps(doc, indent=1))
    label = " (SIMULATED run: this checks the fit against the sim's own constants)" if doc["simulated"] else ""
    console.print(f"wrote {out}{label}")
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.calibration.calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("report_dir", type=Path, help="the --out folder of python -m bench.gpu.trace")
    p.add_argument(
        "--out", type=Path, default=None, help="calibration JSON to write (default: REPORT_DIR/calibration.json)"
    )
    args = p.parse_args(argv)
    try:
        calibrate(
            args.report_dir,
            args.out or args.report_dir / "calibration.json",
            ["python", "-m", "bench.calibration.calibrate", *map(shlex.quote, argv or sys.argv[1:])],
        )
    except CalibrationError as exc:
        console.print(f"[red]error:[/] {exc}", markup=False)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
