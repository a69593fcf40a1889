"""bench.calibration.calibrate and its parts: the robust least squares, SGLang's scheduler log lines, the
samples taken from request records, and the mapping of fits onto the sim's constants. The
records here are built from the sim's own latency model, so a right fit gives back the
constants of orchestrator/perf/calibration.py (pure arithmetic, no clock)."""

from __future__ import annotations

import random

import pytest

from bench.calibration.calibrate import derive, fit_decode_log, metric_deltas
from bench.calibration.data import DecodeLine, parse_engine_log
from bench.calibration.fit import Fit, FitError, fit
from bench.calibration.samples import (
    Phase,
    decode_samples,
    phases,
    prefill_flops,
    prefill_samples,
)
from bench.client import RequestRecord
from orchestrator.perf import calibration as cal
from orchestrator.perf.model import LatencyModel
from orchestrator.shapes import load_shape

SHAPES = {"llama-1b": load_shape("llama-3.2-1b"), "llama-8b": load_shape("llama-3.1-8b")}


def test_fit_recovers_coefficients_and_drops_outliers() -> None:
    rng = random.Random(3)
    rows = [[1.0, float(b), float(b * rng.randint(100, 1500))] for b in (rng.randint(1, 40) for _ in range(300))]
    y = [0.002 + 1e-4 * b + 3e-8 * c for _, b, c in rows]
    for i in range(0, 300, 30):  # an idle gap inside ten intervals
        y[i] += 0.5
    f = fit(["one", "batch", "ctx"], rows, y)
    assert f.dropped == 10 and f.n == 290
    assert f["one"] == pytest.approx(0.002) and f["batch"] == pytest.approx(1e-4)
    assert f["ctx"] == pytest.approx(3e-8)
    assert f.rmse == pytest.approx(0.0, abs=1e-12) and f.r2 == pytest.approx(1.0)


def test_fit_refuses_too_few_samples_and_collinear_regressors() -> None:
    with pytest.raises(FitError, match="2 samples for 2"):
        fit(["one", "x"], [[1.0, 1.0], [1.0, 2.0]], [1.0, 2.0])
    with pytest.raises(FitError, match="'twice'"):
        fit(["one", "x", "twice"], [[1.0, x, 2 * x] for x in range(10)], list(range(10)))


def test_sglang_scheduler_log_lines() -> None:
    log = "\n".join(
        [
            "[2026-11-25 10:00:00] Decode batch. #running-req: 1, #token: 300, token usage: 0.00, "
            "gen throughput (token/s): 12.00, #queue-req: 0",
            "[2026-11-25 10:00:01] Prefill batch. #new-seq: 1, #new-token: 512, #cached-token: 0, "
            "token usage: 0.01, #running-req: 1, #queue-req: 0",
            "[2026-11-25 10:00:01] Decode batch, #running-req: 2, #token: 900, token usage: 0.01, "
            "cuda graph: True, gen throughput (token/s): 250.00, #queue-req: 0",
            "[2026-11-25 10:00:02 TP0] Decode batch [812], #running-req: 4, full token usage: 0.02, "
            "cuda graph: True, gen throughput (token/s): 800.00, #queue-req: 0",
            'INFO:     127.0.0.1:5000 - "POST /generate HTTP/1.1" 200 OK',
        ]
    )
    decode, prefills, tokens = parse_engine_log(log)
    assert (prefills, tokens) == (1, 512)
    assert [(d.running, d.kv_tokens, d.prefills_before, d.first) for d in decode] == [
        (1, 300, 0, True),
        (2, 900, 1, False),
        (4, None, 0, False),
    ]
    # the first interval began at server start, the second held a prefill: only the third counts
    assert [d.step_s for d in decode] == [None, None, pytest.approx(4 / 800)]


def test_prefill_flops_is_the_sim_models_compute() -> None:
    shape, p = SHAPES["llama-8b"], 2000
    modelled = LatencyModel(shape).prefill_time([(p, 0)])
    compute = prefill_flops(shape, p) / (cal.PEAK_BF16_FLOPS * cal.PREFILL_MFU)
    assert modelled == pytest.approx(cal.PREFILL_STEP_OVERHEAD_S + compute)


def record(i: int, model: str, sent: float, ttft: float, prompt: int, output: int, tpot: float) -> RequestRecord:
    e2e = ttft + tpot * (output - 1)
    return RequestRecord(
        id=i,
        model=model,
        route="/v1/completions",
        arrival_s=sent,
        sent_at_s=sent,
        status=200,
        ok=True,
        prompt_tokens=prompt,
        output_tokens=output,
        ttft_s=ttft,
        e2e_s=e2e,
        tpot_s=tpot,
    )


def test_isolated_prefills_give_back_the_prefill_mfu() -> None:
    rng, records = random.Random(5), []
    for i in range(40):  # one request every 10 s: never two prefills at once
        model = ("llama-1b", "llama-8b")[i % 2]
        prompt = rng.randrange(1500, 4000)  # compute-bound on both shapes
        ttft = 0.003 + LatencyModel(SHAPES[model]).prefill_time([(prompt, 0)])
        records.append(record(i, model, 10.0 * i, ttft, prompt, 8, 0.01))
    pre, dec = phases(records)
    samples = prefill_samples(pre, dec, SHAPES)
    assert {m: len(v) for m, v in samples.items()} == {"llama-1b": 20, "llama-8b": 20}
    for rows in samples.values():
        f = fit(["one", "compute"], [[x[0], x[2]] for x, _ in rows], [y for _, y in rows])
        assert 1 / f["compute"] == pytest.approx(cal.PREFILL_MFU)
        assert f["one"] == pytest.approx(0.003 + cal.PREFILL_STEP_OVERHEAD_S)


def test_overlapping_prefills_are_not_prefill_samples() -> None:
    records = [
        record(0, "llama-1b", 0.0, 0.5, 100, 8, 0.01),
        record(1, "llama-8b", 0.2, 0.5, 100, 8, 0.01),
        record(2, "llama-8b", 5.0, 0.5, 100, 8, 0.01),
    ]
    pre, dec = phases(records)
    assert {m: len(v) for m, v in prefill_samples(pre, dec, SHAPES).items()} == {"llama-8b": 1}


def test_decode_regressors_average_over_the_window() -> None:
    # a decodes over [0, 10], b over [5, 15] (same model), c over [0, 10] (other model);
    # d's prefill (300 tokens) ends at 2, inside a's window
    dec = [Phase("m", 0.0, 10.0, 100, 11), Phase("m", 5.0, 15.0, 200, 11), Phase("o", 0.0, 10.0, 50, 11)]
    pre = [
        Phase("m", -1.0, 0.0, 100, 11),
        Phase("m", 4.0, 5.0, 200, 11),
        Phase("o", -1.0, 0.0, 50, 11),
        Phase("m", 1.0, 2.0, 300, 11),
    ]
    samples = decode_samples(pre, dec)
    (x, tpot), _ = samples["m"][:2]
    one, batch, context, prefill, other_batch, other_prefill = x
    assert tpot == pytest.approx(1.0) and one == 1
    assert batch == pytest.approx(1.5)  # itself all along, b for the second half
    # a: 100 + 1.1 t over [0, 10] (105.5 on average); b: 200 + 1.1 (t - 5) over [5, 10]
    # (202.75 on average, for half of the window)
    assert context == pytest.approx(105.5 + 202.75 / 2)
    assert prefill == pytest.approx((200 + 300) / 10)  # b's and d's prefills end inside
    assert other_batch == pytest.approx(1.0) and other_prefill == 0


def test_engine_log_steps_give_back_the_sims_decode_model() -> None:
    rng, shape = random.Random(7), SHAPES["llama-8b"]
    lines = [DecodeLine(0, 0, 1.0, 0, first=True)]  # the unusable first interval
    for _ in range(200):
        running = rng.randint(1, 24)
        contexts = [rng.randint(200, 1300) for _ in range(running)]
        step = LatencyModel(shape).decode_time(contexts)
        prefills = 1 if rng.random() < 0.2 else 0  # a prefill inside: not a clean interval
        lines.append(DecodeLine(running, sum(contexts), running / step, prefills, first=False))
    f = fit_decode_log(lines)
    assert f is not None and f.names == ("one", "batch", "context_tokens")
    kv = shape.kv_bytes_per_token / (cal.HBM_BANDWIDTH * f["context_tokens"])
    assert kv == pytest.approx(cal.KV_READ_EFFICIENCY)
    assert f["one"] == pytest.approx(
        cal.DECODE_STEP_OVERHEAD_S + shape.weight_bytes / (cal.HBM_BANDWIDTH * cal.WEIGHT_READ_EFFICIENCY)
    )
    assert f["batch"] == pytest.approx(0.0, abs=1e-9)  # memory-bound: no cost per request
    assert fit_decode_log(lines[:20]) is None  # too few clean intervals: the client's fit is used


def _fit(coef: dict[str, float]) -> Fit:
    names = tuple(coef)
    return Fit(names, tuple(coef.values()), (1e-9,) * len(names), 100, 0, 0.0, 1.0, (0.0, 0.0, 0.0))


def test_decode_intercepts_of_two_sizes_give_overhead_and_weight_read_efficiency() -> None:
    decode = {}
    for m, shape in SHAPES.items():  # the sim's decode step at batch 0, and its KV term
        intercept = cal.DECODE_STEP_OVERHEAD_S + shape.weight_bytes / (cal.HBM_BANDWIDTH * cal.WEIGHT_READ_EFFICIENCY)
        coef = shape.kv_bytes_per_token / (cal.HBM_BANDWIDTH * cal.KV_READ_EFFICIENCY)
        decode[m] = ("engine log", _fit({"one": intercept, "batch": 1e-5, "context_tokens": coef}))
    prefill = {m: {"tokens": None, "flops": _fit({"one": 0.004, "compute_s_at_peak": 2.0})} for m in SHAPES}
    out = derive(SHAPES, prefill, decode, {m: 4.0 for m in SHAPES})
    assert out["DECODE_STEP_OVERHEAD_S"]["value"] == pytest.approx(cal.DECODE_STEP_OVERHEAD_S)
    assert out["WEIGHT_READ_EFFICIENCY"]["value"] == pytest.approx(cal.WEIGHT_READ_EFFICIENCY)
    assert out["KV_READ_EFFICIENCY"]["value"] == pytest.approx(cal.KV_READ_EFFICIENCY)
    assert out["PREFILL_MFU"]["value"] == pytest.approx(0.5)
    assert out["PREFILL_STEP_OVERHEAD_S"]["value"] == pytest.approx(0.004)
    assert out["DECODE_MFU"]["value"] is None  # batches of 4 are far from compute-bound
    assert "compute-bound from about" in out["DECODE_MFU"]["note"]


def test_metric_deltas_keep_labels_that_matter() -> None:
    labels = {"model_name": "m", "category": "decode"}
    before = {"i": [("sglang:forward_execution_seconds_total", labels, 1.0), ("sglang:num_running_reqs", {}, 3.0)]}
    after = {
        "i": [
            ("sglang:forward_execution_seconds_total", labels, 4.5),
            ("sglang:num_running_reqs", {}, 1.0),
            ("sglang:prompt_tokens_total", {"model_name": "m"}, 10.0),
        ]
    }
    assert metric_deltas(before, after) == {
        "i": {"sglang:forward_execution_seconds_total{category=decode}": 3.5, "sglang:prompt_tokens_total": 10.0}
    }
