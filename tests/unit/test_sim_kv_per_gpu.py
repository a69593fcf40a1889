"""The simulator's KV split one GPU at a time (bench/sim/kv.py ``SimLedger.plan``) gives the
same run as the ledger's one call over the whole fleet."""

from __future__ import annotations

from typing import Any

import pytest

from bench.sim import experiments as ex
from bench.sim.kv import SimLedger


def _whole(self: SimLedger, insts: Any, seen: Any, now: float) -> Any:
    out = self.ledger.plan(insts, seen, now)
    self.deferred = self.ledger.deferred  # as SimLedger.plan: the grows held back set the next round's time
    return out


def test_per_gpu_split_equals_whole_fleet_split(monkeypatch: pytest.MonkeyPatch) -> None:
    sp = ex.spec(12.0, 150.0, 60.0, seed=3)
    got = ex.run_one("chimera", "mix58", 12, sp).to_json()
    monkeypatch.setattr(SimLedger, "plan", _whole)
    want = ex.run_one("chimera", "mix58", 12, sp).to_json()
    for r in (got, want):
        r.pop("wall_s")
    assert got == want
    assert got["requests"] > 1000 and got["counters"]["wakes"] > 0  # a run with parks and wakes


def test_a_gpu_whose_inputs_did_not_change_is_not_planned_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """``SimLedger.plan`` skips a GPU whose previous plan changed nothing and whose inputs are
    the same: the run is the same as planning every GPU every time, and GPUs were skipped."""
    sp = ex.spec(12.0, 150.0, 60.0, seed=3)
    skipped: list[int] = []
    planned = SimLedger.plan

    def counting(self: SimLedger, insts: Any, seen: Any, now: float) -> Any:
        out = planned(self, insts, seen, now)
        skipped.append(self.skipped)
        return out

    monkeypatch.setattr(SimLedger, "plan", counting)
    got = ex.run_one("chimera", "mix58", 12, sp).to_json()
    monkeypatch.setattr(SimLedger, "_quiet_inputs", lambda self, insts, seen: None)
    skipped_with_memo = max(skipped)
    want = ex.run_one("chimera", "mix58", 12, sp).to_json()
    for r in (got, want):
        r.pop("wall_s")
    assert got == want
    assert skipped_with_memo > 0


def test_a_gpu_whose_servers_did_not_change_is_skipped_before_its_observations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``SimLedger.split`` skips a quiet GPU whose servers' raw fields are the same without
    building its observations: the run is the same as without that shortcut, and it was taken."""
    sp = ex.spec(12.0, 150.0, 60.0, seed=3)
    built, made = SimLedger._load, SimLedger.__init__
    loads: list[int] = []

    def counting(self: SimLedger, *a: Any) -> Any:
        loads.append(1)
        return built(self, *a)

    monkeypatch.setattr(SimLedger, "_load", counting)
    got = ex.run_one("chimera", "mix58", 12, sp).to_json()
    with_shortcut = len(loads)
    loads.clear()

    def no_memo(self: SimLedger, *a: Any, **k: Any) -> None:
        made(self, *a, **k)
        self.memo = False

    monkeypatch.setattr(SimLedger, "__init__", no_memo)
    want = ex.run_one("chimera", "mix58", 12, sp).to_json()
    for r in (got, want):
        r.pop("wall_s")
    assert got == want
    assert with_shortcut < len(loads)  # fewer observations built with the shortcut
