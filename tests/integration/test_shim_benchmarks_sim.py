"""The shim's benchmarks end to end on the sim engine (short runs; their numbers are
simulated and not asserted): the overhead benchmark's two servers and the surge benchmark's two
chimera runs produce their JSON and plot, with every request answered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.shim import overhead, surge

pytestmark = pytest.mark.slow


def test_overhead_runs_every_server_on_the_same_traffic(tmp_path: Path) -> None:
    rc = overhead.main(
        ["--engine", "sim", "--block-s", "2", "--blocks", "1", "--repeats", "2", "--rate", "4", "--out", str(tmp_path)]
        + ["--variants", "shim,shim-nofill", "--warmup-s", "1.5"]
    )
    res = json.loads((tmp_path / "overhead.json").read_text())
    assert rc == 0 and res["simulated"], res["servers"]  # every request answered; else what failed
    static, shim = res["servers"]["static"], res["servers"]["shim"]
    assert static["requests"] == shim["requests"] > 0  # the same trace for both
    assert static["ok"] == static["requests"] and shim["ok"] == shim["requests"]
    assert set(res["ratio_shim_over_static"]) == {"ttft_p50", "ttft_p95", "tpot_p50", "tpot_p95"}
    # each repeat starts with another server, and has its own ratios for each variant
    assert [r["first"] for r in res["repeats"]] == ["static", "shim"]
    for kind in ("shim", "shim-nofill"):
        assert res["servers"][kind]["requests"] == static["requests"]
        for key, lim in res["spread"][kind].items():
            vals = [r["ratios"][kind][key] for r in res["repeats"]]
            assert lim == {"min": min(vals), "max": max(vals)}
        # the map trace: the pool's maps, and every answered request on one side of the split
        beside = res["beside_maps"][kind]
        assert beside["driver_calls_traced"] > 0
        assert beside["overlapped"]["requests"] + beside["clear"]["requests"] == res["servers"][kind]["ok"]
    # the warm-up: the same requests to each server first, apart from every ratio above
    warm = res["warmup"]
    assert warm["seconds"] == 1.5 and set(warm["servers"]) == {"static", "shim", "shim-nofill"}
    sizes = {k: v["requests"] for k, v in warm["servers"].items()}
    assert len(set(sizes.values())) == 1 and sizes["static"] > 0
    # the shim's own account of how its pool grew (read over its channel at the end)
    maps = res["shim_maps"]
    assert maps["ensures"] > 0 and maps["mapped_bytes"] > 0
    assert maps["adopted"] <= maps["prepared"]


def test_surge_runs_static_then_elastic_and_plots(tmp_path: Path) -> None:
    rc = surge.main(["--engine", "sim", "--warm-s", "2", "--surge-s", "4", "--cool-s", "1", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "surge.json").read_text())
    assert rc == 0 and set(res["modes"]) == {"static", "elastic"}
    assert all(sum(m["failed"].values()) == 0 for m in res["modes"].values())
    assert res["modes"]["static"]["requests"] == res["modes"]["elastic"]["requests"]
    assert any("limit_b" in row for row in res["modes"]["elastic"]["timeline"])
    assert (tmp_path / "surge.png").stat().st_size > 0
