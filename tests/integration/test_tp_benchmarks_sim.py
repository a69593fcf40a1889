"""The TP 2 benchmarks of bench/gpu run end to end on the sim engine (the harness only: numbers
are SIMULATED and not asserted against the targets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gpu import tp_overhead, tp_surge

pytestmark = pytest.mark.slow


def test_tp_overhead_runs_both_tp2_servers_over_three_repeats(tmp_path: Path) -> None:
    rc = tp_overhead.main(["--engine", "sim", "--block-s", "1", "--blocks", "1", "--rate", "4", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "overhead.json").read_text())
    assert rc == 0 and res["simulated"] and res["tp"] == 2 and len(res["repeats"]) == 3
    assert [r["first"] for r in res["repeats"]] == ["static", "shim", "static"]
    assert set(res["target"]["worst"]) == {"ttft_p50", "ttft_p95", "tpot_p50", "tpot_p95"}


def test_tp_surge_runs_two_tp2_models_and_reports_the_time_to_memory(tmp_path: Path) -> None:
    rc = tp_surge.main(["--engine", "sim", "--warm-s", "2", "--surge-s", "3", "--cool-s", "1", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "surge.json").read_text())
    assert rc == 0 and res["simulated"] and res["args"]["tp"] == 2
    assert "b_limit_reaches_after_s" in res["modes"]["elastic"] and res["target"]["seconds_max"] == 1.0


def test_reached_after_counts_from_the_surge_to_90_percent_of_the_growth() -> None:
    rows = [
        {"t": 0.5, "limit_b": 1.0},
        {"t": 2.25, "limit_b": 5.0},
        {"t": 2.5, "limit_b": 9.5},
        {"t": 3.0, "limit_b": 10.0},
    ]
    assert tp_surge.reached_after_s(rows, 2.0, 4.0) == 0.5
    assert tp_surge.reached_after_s([{"t": 0.5, "limit_b": 1.0}, {"t": 2.5, "limit_b": 1.0}], 2.0, 4.0) is None
