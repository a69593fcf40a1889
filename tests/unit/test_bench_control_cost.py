"""bench/live/control_cost.py runs end to end: every release of both paths reaches the loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bench.live import control_cost


def test_both_paths_are_measured_per_level(tmp_path: Path) -> None:
    rows = asyncio.run(control_cost.measure(40, [1, 4]))
    assert [r["concurrency"] for r in rows] == [1, 4]
    assert all(r["direct_us"] > 0 and r["channel_us"] > 0 for r in rows)
    assert control_cost.main(["--requests", "8", "--levels", "2", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["concurrency"] == 2
