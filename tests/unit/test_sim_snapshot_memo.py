"""chimera in the simulator (bench/sim/chimera.py) hands the policy the previous frozen
``ModelDemand`` / ``ServerView`` of a model or server whose inputs did not change, and a new
one, with the new values, as soon as one did."""

from __future__ import annotations

from bench.sim.chimera import Chimera
from bench.sim.fleet import H100_BYTES, fleet
from bench.sim.servers import SimReq
from bench.sim.simulator import Simulator


def _started() -> tuple[Simulator, Chimera]:
    models = {m.name: m for m in fleet("mix8")}
    ctl = Chimera({name: 0.5 for name in models}, 600.0)
    sim = Simulator(models, 4, H100_BYTES, ctl)
    ctl.on_start(sim)
    return sim, ctl


def test_unchanged_demands_and_views_are_the_same_objects() -> None:
    sim, ctl = _started()
    sim.now = 1.0
    first = ctl._demands()
    view = ctl._view(first)
    again = ctl._demands()
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert all(a is b for a, b in zip(view.servers, ctl._view(again).servers, strict=True))


def test_a_changed_input_gives_a_new_demand() -> None:
    sim, ctl = _started()
    sim.now = 1.0
    before = {d.name: d for d in ctl._demands()}
    name = next(iter(before))
    sim.now = 2.0
    ctl.on_arrival(sim, SimReq(1, name, 2.0, 100, 50))  # a request and its tokens: queued, rate
    after = {d.name: d for d in ctl._demands()}
    assert after[name] is not before[name]
    assert after[name].token_rate > before[name].token_rate
    assert after[name].queued + after[name].running == before[name].queued + before[name].running + 1
    others = [n for n in before if n != name]
    assert all(after[n] == before[n] for n in others)


def test_a_server_with_a_new_request_gets_a_new_view() -> None:
    sim, ctl = _started()
    sim.now = 1.0
    views = {v.id: v for v in ctl._view(ctl._demands()).servers}
    server = next(iter(sim.servers.values()))
    sim.dispatch(SimReq(1, server.model.name, 1.0, 100, 50), server)
    new = {v.id: v for v in ctl._view(ctl._demands()).servers}
    assert new[server.id].in_flight == views[server.id].in_flight + 1
    assert all(new[sid] is views[sid] for sid in views if sid != server.id)
