"""The H200 calibration (orchestrator/perf/calibration.py H200, fitted by
``python -m bench.calibration.h200_multi`` from bench/results/gpu-experiment-h200-a): its
selection leaves the H100 model untouched, its step times are the colocated fits, the
simulator's "overlap" GPUs step each server at its own rate, and the fitting script reads the
engines' batch lines the way the constants say."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest

from bench.calibration import h200_multi
from bench.sim.fleet import make_model
from bench.sim.servers import GpuExec, SimReq, SimServer
from orchestrator.perf import calibration as cal
from orchestrator.perf.model import LatencyModel
from orchestrator.shapes import load_shape
from orchestrator.types import InstanceState

RESULTS = Path(__file__).resolve().parents[2] / "bench/results/gpu-experiment-h200-a"
# the runs calibration.py's H200 decode is fitted over (its provenance)
FITTED = [RESULTS.parent / f"gpu-experiment-h200-{run}" for run in ("a", "a6", "a7")]
# the H200 decode refit: the sixth runs but a7's full, held out to check it
REFIT = [RESULTS.parent / "gpu-experiment-h200-a6", RESULTS.parent / "gpu-experiment-h200-a7/static"]


def test_the_h100_stays_the_default_and_is_unchanged_by_naming_it() -> None:
    sh = load_shape("llama-3.1-8b")
    plain, named = LatencyModel(sh), LatencyModel(sh, calibration=cal.CALIBRATIONS["h100"])
    assert plain.calibration is cal.H100
    assert named.decode_time([100] * 8) == plain.decode_time([100] * 8)
    assert named.prefill_time([(512, 0)]) == plain.prefill_time([(512, 0)])
    # the H100's colocation is the form measured on the H200; the old round charges nothing here
    read = sh.weight_bytes / cal.H100.hbm_bandwidth
    assert plain.colocated_extra_s(5) == pytest.approx(5 * (cal.PER_OTHER_FIXED_S + cal.PER_OTHER_PER_READ * read))
    round_ = LatencyModel(sh, calibration=cal.CALIBRATIONS["h100-round"])
    assert round_.colocated_extra_s(5) == 0.0  # time-slicing is the simulator's round itself
    assert round_.decode_time([100] * 8) == plain.decode_time([100] * 8)


def test_the_per_other_form_is_the_least_squares_line_over_the_h200_fits() -> None:
    """PER_OTHER_FIXED_S and PER_OTHER_PER_READ: per_other_s of the four fitted shapes against one
    read of their weights at the H200's spec bandwidth; every shape within 0.3 ms of the line."""
    pts = [(load_shape(name).weight_bytes / cal.H200.hbm_bandwidth, fit.per_other_s) for name, fit in cal.H200.decode]
    assert len(pts) == 4
    mx, my = sum(x for x, _ in pts) / 4, sum(y for _, y in pts) / 4
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    assert cal.PER_OTHER_PER_READ == pytest.approx(slope, abs=0.0005)
    assert cal.PER_OTHER_FIXED_S == pytest.approx(my - slope * mx, abs=0.000001)
    for x, y in pts:
        assert abs(cal.PER_OTHER_FIXED_S + cal.PER_OTHER_PER_READ * x - y) < 0.0003
    # the unfitted shapes of the H200 (32B, 70B at TP 2) get the line, per GPU
    big = LatencyModel(load_shape("llama-3.3-70b"), 2, calibration=cal.H200)
    read = load_shape("llama-3.3-70b").weight_bytes / 2 / cal.H200.hbm_bandwidth
    assert big.colocated_extra_s(1) == pytest.approx(cal.PER_OTHER_FIXED_S + cal.PER_OTHER_PER_READ * read)


@pytest.mark.parametrize("shape", ["llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "qwen2.5-7b"])
def test_h200_steps_are_the_fitted_ones_and_far_below_the_h100_time_slicing(shape: str) -> None:
    sh = load_shape(shape)
    fit = cal.H200.decode_fit(shape)
    assert fit is not None
    h200 = LatencyModel(sh, calibration=cal.H200)
    floor = sh.weight_bytes / cal.H200.hbm_bandwidth
    assert h200.decode_time([300] * 10) == pytest.approx(max(floor, fit.base_s + 10 * fit.per_req_s))
    assert h200.colocated_extra_s(4) == pytest.approx(4 * fit.per_other_s)
    # five engines decoding: the H100 model's round holds all six steps; the H200's step is one
    h100_round = 6 * LatencyModel(sh).decode_time([300] * 10)
    assert h200.decode_time([300] * 10) + h200.colocated_extra_s(5) < 0.7 * h100_round


def test_h200_measured_tpot_range_is_reproduced() -> None:
    # the run's TPOT p50 at 5 others decoding: 1B 3-9 ms, 8B 11-31 ms (report.md)
    one = LatencyModel(load_shape("llama-3.2-1b"), calibration=cal.H200)
    eight = LatencyModel(load_shape("llama-3.1-8b"), calibration=cal.H200)
    assert 0.003 <= one.decode_time([0] * 5) + one.colocated_extra_s(5) <= 0.009
    assert 0.011 <= eight.decode_time([0] * 10) + eight.colocated_extra_s(5) <= 0.031


def _server(name: str, shape: str, calibration: cal.Calibration, outputs: list[int]) -> SimServer:
    s = SimServer(name, make_model(name, shape, calibration=calibration), (0,))
    s.state = InstanceState.AWAKE
    s.waiting = [SimReq(i, name, 0.0, 16, n) for i, n in enumerate(outputs)]
    return s


def _drain(ex: GpuExec) -> dict[str, float]:
    """Run the executor's epochs to the end; finish time of each server's last request."""
    done: dict[str, float] = {}
    t = ex.plan(0.0)
    while t is not None:
        start, finished = ex.settle(t)
        for req, at in finished:
            done[req.model] = max(done.get(req.model, 0.0), at)
        t = ex.plan(max(start, t))
    return done


def test_overlap_gpu_steps_each_server_at_its_own_rate() -> None:
    ex = GpuExec(0)
    small, big = (_server(n, sh, cal.H200, [101]) for n, sh in (("s", "llama-3.2-1b"), ("b", "llama-3.1-8b")))
    ex.servers = [small, big]
    done = _drain(ex)
    step = {s.id: s.model.lat.decode_time([0]) + s.model.lat.colocated_extra_s(1) for s in ex.servers}
    prefill = sum(s.model.lat.prefill_time([(16, 0)]) for s in ex.servers)
    # 100 decode steps each; the small one finishes first, at its own (colocated) step time
    assert done["s"] == pytest.approx(prefill + 100 * step["s"], rel=1e-6)
    # after it, the big one steps alone: its remaining steps lose the per-other cost
    first = math.floor(100 * step["s"] / step["b"] + 1e-6)
    assert done["b"] > prefill + 100 * big.model.lat.decode_time([0])
    assert done["b"] < prefill + 100 * step["b"]
    assert first < 100


def test_time_slice_gpu_keeps_one_round_for_all_servers() -> None:
    ex = GpuExec(0)
    ex.servers = [_server(n, sh, cal.H100_ROUND, [101]) for n, sh in (("s", "llama-3.2-1b"), ("b", "llama-3.1-8b"))]
    done = _drain(ex)
    assert done["s"] == pytest.approx(done["b"])  # both advance one step per shared round
    # the H100's measured form: the 1B finishes its 100 steps well before the 8B
    ex = GpuExec(0)
    ex.servers = [_server(n, sh, cal.H100, [101]) for n, sh in (("s", "llama-3.2-1b"), ("b", "llama-3.1-8b"))]
    done = _drain(ex)
    assert done["s"] < 0.6 * done["b"]


def test_fitting_script_reads_batch_lines(tmp_path: Path) -> None:
    rows = ["engine\ttime\tkind\trunning\tqueue\ttokens\tnew_tokens\tthroughput"]
    for sec in range(40):
        stamp = f"2026-12-03 11:00:{sec:02d}"
        # b decodes for the first 20 s only; a sees it in the same or the previous second
        for eng, on, others in (("a-gpu0", True, int(sec <= 20)), ("b-gpu0", sec < 20, 1)):
            if not on:
                continue
            n = 2 + sec % 5
            step = 0.002 + 0.0005 * n + 0.003 * others
            rows.append(f"{eng}\t{stamp}\tdecode\t{n}\t0\t1000\t\t{n / step:.4f}")
    for system in h200_multi.SYSTEMS:
        (tmp_path / system).mkdir()
        with gzip.open(tmp_path / system / "engine-batches.tsv.gz", "wt") as f:
            f.write("\n".join(rows) + "\n")
    setup = tmp_path / "setup.yaml"
    setup.write_text(
        "host: {gpus: 1}\nmodels:\n"
        "  - {name: a, model_path: llama-3.2-1b, placements: [{gpus: [0]}]}\n"
        "  - {name: b, model_path: llama-3.2-1b, placements: [{gpus: [0]}]}\n"
    )
    doc = h200_multi.calibrate(tmp_path, setup)
    d = doc["fits"]["llama-3.2-1b"]["decode"]
    assert d["coef"]["per_req_s"] == pytest.approx(0.0005, rel=1e-3)
    assert d["coef"]["base_s"] == pytest.approx(0.002, rel=1e-3)
    assert d["coef"]["per_other_s"] == pytest.approx(0.003, rel=1e-3)
    assert "| llama-3.2-1b |" in h200_multi.report(doc)


@pytest.mark.skipif(not (RESULTS / "full/engine-batches.tsv.gz").is_file(), reason="results not in the tree")
def test_eager_decode_factor_is_the_scripts_fit_of_the_committed_runs() -> None:
    doc = h200_multi.calibrate(FITTED, h200_multi.DEFAULT_SETUP)
    # the eager decode factor is the middle of the shapes' eager / graph step ratios
    ratios = sorted(f["eager"]["median_ratio"] for f in doc["fits"].values() if "eager" in f)
    assert len(ratios) == 3 and cal.EAGER_DECODE_FACTOR == pytest.approx(ratios[1], abs=0.005)


@pytest.mark.skipif(not (REFIT[-1] / "engine-batches.tsv.gz").is_file(), reason="results not in the tree")
def test_h200_decode_is_the_scripts_fit_of_the_sixth_runs_and_holds_out() -> None:
    doc = h200_multi.calibrate(REFIT, h200_multi.DEFAULT_SETUP)
    for shape, fit in cal.H200.decode:
        c = doc["fits"][shape]["decode"]["coef"]
        assert (fit.base_s, fit.per_req_s, fit.per_other_s) == pytest.approx(
            (c["base_s"], c["per_req_s"], c["per_other_s"]), abs=6e-6
        )
        eager = doc["fits"][shape].get("eager")
        assert fit.eager_factor == (None if eager is None else pytest.approx(eager["median_ratio"], abs=0.005))
    # the run held out of the fit: graph steps within 11%; eager steps of the 1B 1.5x the fit
    held = h200_multi.check(doc, [RESULTS.parent / "gpu-experiment-h200-a7/full"], h200_multi.DEFAULT_SETUP)
    for shape, one in held["shapes"].items():
        assert 0.89 <= one["graph"]["median_measured_over_fit"] <= 1.0, shape
    assert held["shapes"]["llama-3.2-1b"]["eager"]["median_measured_over_fit"] == pytest.approx(1.50, abs=0.01)
