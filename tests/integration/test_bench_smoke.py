"""`python -m bench.live.run` end to end on the sim engine, short: it starts chimera, replays a
synthetic trace, writes a sane report and stops chimera with no engine left. Never asserts
speed (the CPU is shared); only counts, orderings and ranges."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.report import read_records, validate

pytestmark = pytest.mark.slow

PLACEMENTS = {
    "host": {"gpus": 1},
    "models": [
        {
            "name": "small",
            "model_path": "llama-3.2-1b",
            "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
            "placements": [{"gpus": [0], "on": True, "kv_pool_gb": 4}],
        },
        {"name": "tiny", "model_path": "tiny-llama", "placements": [{"gpus": [0], "on": True}]},
    ],
}


def test_bench_run_writes_a_sane_report(tmp_path: Path) -> None:
    placements = tmp_path / "p.yaml"
    placements.write_text(yaml.safe_dump(PLACEMENTS))
    out = tmp_path / "bench"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.live.run",
            "--placements",
            str(placements),
            "--trace",
            "synthetic",
            "--rate",
            "3",
            "--duration",
            "8",
            "--alpha",
            "1",
            "--input-range",
            "8,64",
            "--output-range",
            "4,32",
            "--ttft-slo",
            "1.0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SIMULATED" in r.stderr and "no engine left running" in r.stderr
    report = json.loads((out / "report.json").read_text())
    assert validate(report) == []
    assert report["engine"]["simulated"] is True
    assert report["config"]["slos"] == {"small": [0.5, 0.05], "tiny": [1.0, None]}
    (run,) = report["runs"]
    records = read_records(out / "requests.jsonl")
    assert len(records) == run["trace"]["requests"] == run["overall"]["requests"] == 24
    assert sum(m["requests"] for m in run["per_model"].values()) == 24
    assert run["overall"]["completed"] == sum(r.ok for r in records)
    assert run["overall"]["completed"] >= 20, run["overall"]["errors"]
    for s in (run["overall"], *run["per_model"].values()):
        assert all(0.0 <= v <= 1.0 for v in s["attainment"].values() if v is not None)
        ttft = s["latency_s"]["ttft"]
        assert 0 <= ttft["p50"] <= ttft["p95"] <= ttft["p99"] <= ttft["max"]
    for r_ in records:
        if r_.ok:
            assert r_.output_tokens == r_.output_tokens_requested  # ignore_eos: exact length
            assert r_.prompt_tokens == r_.prompt_tokens_requested  # the sim counts exactly
            assert r_.ttft_s is not None and r_.e2e_s is not None and r_.ttft_s <= r_.e2e_s
    assert (out / "states.jsonl").stat().st_size > 0
    for png in ("attainment_vs_rate.png", "timeline.png", "states.png"):
        assert (out / png).stat().st_size > 1000
