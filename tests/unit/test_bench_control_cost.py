"""bench/live/control_cost.py runs end to end: every release of the three paths reaches the loop
(the third from a worker in a child process); bench/live/proxies.py's CPU by role."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bench.live import control_cost


def test_both_paths_are_measured_per_level(tmp_path: Path) -> None:
    rows = asyncio.run(control_cost.measure(40, [1, 4]))
    assert [r["concurrency"] for r in rows] == [1, 4]
    assert all(r["direct_us"] > 0 and r["channel_us"] > 0 and r["control_side_us"] > 0 for r in rows)
    assert control_cost.main(["--requests", "8", "--levels", "2", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["concurrency"] == 2


def test_proxies_cpu_is_split_by_role_with_the_busiest_process() -> None:
    from bench.live.proxies import cores_by_role

    roles = {1: "control", 2: "workers", 3: "workers", 4: "engines"}
    before = {1: 10.0, 2: 1.0, 3: 1.0, 4: 5.0}
    after = {1: 12.0, 2: 2.5, 3: 1.5, 4: 6.0}  # pid 3 leaves in the middle: counted up to its end
    out = cores_by_role(before, after, roles, wall=2.0)
    assert out == {
        "control_cpu_cores": 1.0,
        "control_busiest_cores": 1.0,
        "workers_cpu_cores": 1.0,
        "workers_busiest_cores": 0.75,
        "engines_cpu_cores": 0.5,
        "engines_busiest_cores": 0.5,
    }
