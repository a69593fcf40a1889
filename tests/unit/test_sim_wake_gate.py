"""The simulator's wakes pass the live wake gate (control/plans.py ``WakeGate``, bench/sim/chimera.py
``_room``): a wake whose weights do not fit beside its neighbours' pages waits while the ledger
shrinks them, so no wake puts a GPU over its memory, where without the gate some do."""

from __future__ import annotations

from collections import Counter

from bench.sim import experiments as ex
from bench.sim.chimera import Chimera, ChimeraOptions
from bench.sim.fleet import H100_BYTES, fleet
from bench.sim.run import history, with_slos
from bench.sim.simulator import Counters, Simulator
from bench.traces.synthetic import generate
from orchestrator.kv.room import Room


def _run(wake_room_s: float) -> tuple[Counters, list[Room]]:
    """mix58 squeezed onto 13 GPUs for 5 minutes: memory binds, models park and wake."""
    sp = ex.spec(12.0, 300.0, 60.0, seed=3)
    models = with_slos(fleet("mix58"), ex.SLO_SCALE, sp.input_range, sp.output_range)
    trace = generate(sp, [m.name for m in models])
    rps = {m: n / sp.duration_s for m, n in Counter(r.model for r in trace).items()}
    tpr = sum(r.prompt_tokens + r.output_tokens for r in trace) / len(trace)
    ctl = Chimera(rps, tpr, ChimeraOptions(wake_room_s=wake_room_s), history=history(sp, models))
    asked: list[Room] = []
    room = ctl._room

    def spy(iid: str) -> Room:
        got = room(iid)
        asked.append(got)
        return got

    ctl._room = spy  # type: ignore[method-assign]
    sim = Simulator({m.name: m for m in models}, 13, H100_BYTES, ctl)
    sim.run(trace)
    return sim.counters, asked


def test_gated_wakes_wait_for_room_and_never_overfill_a_gpu() -> None:
    gated, asked = _run(ChimeraOptions.wake_room_s)
    ungated, none = _run(0.0)
    assert not none  # no gate: every wake goes at once
    assert ungated.memory_violations > 0  # ... and some land on a GPU still full of pages
    assert any(r.short_bytes > 0 for r in asked)  # with it, some wakes waited
    assert gated.memory_violations == 0
    assert gated.wakes > 100  # a run with many wakes, not one that avoided them
