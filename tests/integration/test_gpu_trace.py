"""`python -m bench.gpu.trace --engine sim` end to end on the CPU, short, then
`python -m bench.calibration.calibrate` on its output: the six files exist and are consistent, the
calibration names its provenance. Never asserts speed (the CPU is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.calibration.data import SCHEMA as DATA_SCHEMA
from bench.gpu.trace import FILES, MODELS
from bench.report import read_records, validate

pytestmark = pytest.mark.slow


def test_gpu_trace_on_the_sim_then_calibrate(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu.trace",
            "--engine",
            "sim",
            "--duration",
            "8",
            "--rate",
            "6",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # six: the GPU returns 8

    report = json.loads((out / "report.json").read_text())
    assert validate(report) == [] and report["engine"]["simulated"] is True
    assert report["config"]["mode"] == "full" and report["config"]["duration_s"] == 8
    (run,) = report["runs"]
    records = read_records(out / "requests.jsonl")
    assert len(records) == run["overall"]["requests"] == 48
    assert {r.model for r in records} == {n for n, _, _ in MODELS}
    assert run["overall"]["completed"] >= 40, run["overall"]["errors"]
    for rec in records:
        if rec.ok:  # token-id prompts and ignore_eos: exact lengths on any engine
            assert rec.prompt_tokens == rec.prompt_tokens_requested
            assert rec.output_tokens == rec.output_tokens_requested
            assert 128 <= rec.prompt_tokens < 1024 and 64 <= rec.output_tokens < 256
            assert rec.ttft_s is not None and rec.tpot_s is not None

    data = json.loads((out / "calibration_data.json").read_text())
    assert data["schema"] == DATA_SCHEMA and data["orphans"] == []
    assert data["provenance"]["simulated"] is True and data["provenance"]["command"][:3] == [
        "python",
        "-m",
        "bench.gpu.trace",
    ]
    instances = {f"{n}@gpu0" for n, _, _ in MODELS}
    assert set(data["metrics_before"]) == set(data["metrics_after"]) == instances
    assert set(data["engine_log"]) == {i.replace("@", "-") for i in instances}
    assert "SIMULATED" in (out / "table.txt").read_text()
    assert "llama-8b-gpu0.log" in (out / "logs.txt").read_text()
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"

    c = subprocess.run(
        [sys.executable, "-m", "bench.calibration.calibrate", str(out)], capture_output=True, text=True, timeout=120
    )
    assert c.returncode == 0, c.stderr[-3000:]
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["simulated"] is True
    prov = cal["provenance"]
    assert prov["calibrate_command"][:3] == ["python", "-m", "bench.calibration.calibrate"]
    assert prov["samples"]["requests"] == 48 and prov["created"] and "gpus" in prov
    assert set(cal["constants"]) >= {
        "PREFILL_MFU",
        "PREFILL_STEP_OVERHEAD_S",
        "DECODE_STEP_OVERHEAD_S",
        "WEIGHT_READ_EFFICIENCY",
        "KV_READ_EFFICIENCY",
        "DECODE_MFU",
    }
    for name, const in cal["constants"].items():
        assert "current" in const and "source" in const, name
    for fits in cal["fits"].values():
        assert fits["decode_client"] is not None and fits["decode_client"]["n"] > 0
    # engine-side counters moved by exactly the requests that reached the engines
    sent = sum(d["sglang:num_requests_total"] for d in cal["engine_metric_deltas"].values())
    assert sent == sum(r.status == 200 for r in records)
