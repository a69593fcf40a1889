"""`python -m bench.gpu.experiment` end to end on the sim engine, short: set-up B (8 models on
one GPU) under static partitioning (half the models unserved) and swap-on-demand (the
max_awake_per_gpu option live), the same set-up through the discrete-event simulator, then
`python -m bench.gpu.report` over the three. Asserts what the report needs and that every
system was asked the very same requests; never speed (the CPU is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RATES = "2,6"


def _run(out: Path, system: str, engine: str) -> dict:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu.experiment",
            "--setup",
            "B",
            "--system",
            system,
            "--engine",
            engine,
            "--rates",
            RATES,
            "--duration",
            "5",
            "--gap",
            "0.5",
            "--request-timeout",
            "30",
            "--out",
            str(out / f"{engine}-{system}"),
            "--work-dir",
            str(out / f"work-{engine}-{system}"),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / f"{engine}-{system}" / "experiment.json").read_text())


def test_experiment_systems_see_the_same_requests_and_the_report_merges_them(tmp_path: Path) -> None:
    static = _run(tmp_path, "static", "sim")
    swap = _run(tmp_path, "swap", "sim")
    des = _run(tmp_path, "full", "des")
    assert sorted(static["unserved"]) == ["llama-1b-b", "llama-3b-b", "llama-8b-b", "qwen-7b-b"]
    assert swap["unserved"] == [] and swap["placements"]["scheduler"]["max_awake_per_gpu"] == 1
    for doc in (static, swap, des):
        assert [p["rate"] for p in doc["rates"]] == [2.0, 6.0]
        assert "max_rate_at_99" in doc
        for p in doc["rates"]:
            assert p["trace"]["requests"] == p["sent"] + p["unserved"] == p["overall"]["requests"]
            assert 0.0 <= p["overall"]["attainment"]["joint"] <= 1.0
            assert set(p["per_model"]) <= set(swap["served"])
            assert {"wakes", "shed_client"} <= set(p["chimera"])
    # the very same requests, whatever the system or engine
    digests = [[p["trace_digest"] for p in d["rates"]] for d in (static, swap, des)]
    assert digests[0] == digests[1] == digests[2] and digests[0][0] != digests[0][1]
    # static never sends the unserved models' requests: they are misses
    for p in static["rates"]:
        unserved = sum(p["per_model"].get(m, {}).get("requests", 0) for m in static["unserved"])
        assert unserved == p["unserved"]
        assert all(p["per_model"][m]["attainment"]["joint"] == 0.0 for m in static["unserved"] if m in p["per_model"])
        assert p["chimera"]["wakes"] == 0
    # swap-on-demand parks and wakes: one model awake at a time
    assert sum(p["chimera"]["wakes"] for p in swap["rates"]) > 0
    assert sum(p["chimera"]["time_parked_s"] for p in swap["rates"]) > 0
    assert static["provenance"]["simulated"] is True
    assert {f.name for f in (tmp_path / "sim-swap").iterdir()} == {
        "experiment.json",
        "table.txt",
        "run.tgz",
    }

    report = tmp_path / "report"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu.report",
            str(tmp_path / "sim-static"),
            str(tmp_path / "sim-swap"),
            str(tmp_path / "des-full"),
            "--out",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    md = (report / "report.md").read_text()
    assert "Set-up B, synthetic trace (live): SIMULATED (sim engine on a CPU)" in md
    assert "discrete-event simulator" in md and "full/swap" in md
    (summary,) = json.loads((report / "summary.json").read_text())
    assert set(summary["live"]["max_rate_at_99"]) == {"static", "swap"}
