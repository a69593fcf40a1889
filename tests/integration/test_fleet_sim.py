"""`python -m bench.gpu.fleet --engine sim`: one server alone, then three on one GPU, on the
CPU. The fleet starts concurrently (its `up` takes less than the sum of the servers' boots),
every instance has its phases and a footprint within its budget (the sim's own ledger), and
the three result files are there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu.fleet import FILES
from orchestrator.supervisor.process import POLL_INTERVAL_S

pytestmark = pytest.mark.slow
DELAY_S = 4.0  # each sim server's simulated boot


def test_fleet_on_the_sim_starts_concurrently_within_budget(tmp_path: Path) -> None:
    out = tmp_path / "out"
    models = ["llama-3.1-8b", "llama-3.2-3b", "llama-3.2-1b"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu.fleet",
            "--engine",
            "sim",
            "--models",
            ",".join(models),
            "--sim-start-delay",
            f"{DELAY_S:g}",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "w"),
            "--max-wall",
            "150",
        ],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    res = json.loads((out / "fleet.json").read_text())
    assert res["engine"]["simulated"] is True and res["overshoots"] == []
    fleet = res["fleet"]["instances"]
    assert len(fleet) == 3 and len(res["single"]["instances"]) == 1
    # one at a time, the fleet's `up` would last at least the sum of its servers' own boots
    # (compared with the boots of this very run, so a loaded CPU slows both sides alike)
    boots = [rec["phases_s"]["total"] for rec in fleet.values()]
    assert all(b >= DELAY_S for b in boots)
    assert res["fleet"]["wall_s"] < 0.8 * sum(boots)
    for rec in fleet.values():
        ph = rec["phases_s"]
        # the sim prints SGLang's marks: every phase is seen, and they add up to the total
        assert all(ph[p] is not None for p in ("spawn", "init", "weights", "kv", "graphs", "ready", "probe"))
        # the sim spends 20% of its boot on weights and 25% on graphs; marks are stamped when
        # the supervisor polls (every POLL_INTERVAL_S), so each end may be late by one poll
        late = 2 * POLL_INTERVAL_S
        assert ph["weights"] >= 0.2 * DELAY_S - late and ph["graphs"] >= 0.25 * DELAY_S - late
        parts = sum(ph[p] for p in ("spawn", "init", "weights", "kv", "graphs", "ready", "probe"))
        assert parts == pytest.approx(ph["total"], abs=0.01)
        assert rec["per_process"] is True and 0 < rec["measured_bytes"] <= rec["budget_bytes"]
    assert "no instance over its budget" in (out / "table.txt").read_text()
