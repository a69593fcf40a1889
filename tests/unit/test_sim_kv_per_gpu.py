"""The simulator's KV split one GPU at a time (bench/sim/kv.py ``SimLedger.plan``) gives the
same run as the ledger's one call over the whole fleet."""

from __future__ import annotations

from typing import Any

import pytest

from bench.sim import experiments as ex
from bench.sim.kv import SimLedger


def _whole(self: SimLedger, insts: Any, seen: Any, now: float) -> Any:
    return self.ledger.plan(insts, seen, now)


def test_per_gpu_split_equals_whole_fleet_split(monkeypatch: pytest.MonkeyPatch) -> None:
    sp = ex.spec(12.0, 150.0, 60.0, seed=3)
    got = ex.run_one("chimera", "mix58", 12, sp).to_json()
    monkeypatch.setattr(SimLedger, "plan", _whole)
    want = ex.run_one("chimera", "mix58", 12, sp).to_json()
    for r in (got, want):
        r.pop("wall_s")
    assert got == want
    assert got["requests"] > 1000 and got["counters"]["wakes"] > 0  # a run with parks and wakes
