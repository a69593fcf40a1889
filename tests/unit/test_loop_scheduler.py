"""The control loop's global scheduler (mode full): place.decide driven by measured demand,
its plans run step by step against a recording fake. No processes, no sleeps, a fake clock."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest

from orchestrator.config import parse_config
from orchestrator.control.events import (
    Parked,
    ParkFailed,
    Started,
    Tick,
    WakeFailed,
    Woken,
)
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.control.scheduler import cluster_view
from orchestrator.dashboard import state as dashboard_state
from orchestrator.dashboard.history import History
from orchestrator.dashboard.readings import Readings
from orchestrator.deployment import derive
from orchestrator.errors import ConfigError
from orchestrator.types import Endpoint, InstanceState, LoadSample
from tests.unit.control_fakes import Clock, RecordingEffects, ep, settle

S = InstanceState
# Two 37 GB GPUs (an awake 8B server costs 18.1 GiB: perf/cost.py). GPU 0 holds two awake 8B
# servers (hot, n1): little KV room, so any demand on hot makes moving it to its parked server on
# GPU 1 worth it (KVPR gain ~97% > tau). On GPU 1, cold (8B) fits only once hot's server there is
# parked again.
RAW = {
    "mode": "full",
    "host": {"gpus": 2, "gpu_memory_gb": 37},
    "idle": {"park_after_s": 2},
    "scheduler": {"tau": 0.3},
    "models": [
        {"name": "hot", "model_path": "llama-3.1-8b", "placements": [{"gpus": [0]}, {"gpus": [1], "on": False}]},
        {"name": "n1", "model_path": "llama-3.1-8b", "placements": [{"gpus": [0]}]},
        {
            "name": "cold",
            "model_path": "llama-3.1-8b",
            "idle": {"when": "always", "park_after_s": 2},
            "placements": [{"gpus": [1], "on": False}],
        },
    ],
}
CFG = parse_config(RAW)


Env = tuple[ControlLoop, RecordingEffects, Clock]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    """Everything started; the `on: false` servers parked by the warm start."""
    fx, clock = RecordingEffects(), Clock()
    ctl = ControlLoop(derive(CFG), fx, clock=clock)
    task = asyncio.create_task(ctl.run())
    await settle()
    for iid in ("hot@gpu0", "hot@gpu1", "n1@gpu0", "cold@gpu1"):
        ctl.post(Started(iid, ep(iid), seconds=1.0))
        await settle()
    assert sorted(fx.parked) == [("cold@gpu1", "warm_start"), ("hot@gpu1", "warm_start")]
    for iid in ("hot@gpu1", "cold@gpu1"):
        ctl.post(Parked(iid, 0.4, 15 << 30))
    await settle()
    yield ctl, fx, clock
    await cancel_and_wait(task)


def state(ctl: ControlLoop, iid: str) -> S:
    return next(v.state for v in ctl.instances() if v.id == iid)


def sample(iid: str, tokens: float, running: int = 1, used: int = 600) -> LoadSample:
    return LoadSample(iid, 0.0, running, 0, 0, used, 145_000, 1024, tokens)


async def acquire(ctl: ControlLoop, model: str) -> Endpoint:
    spec = ctl.resolve(model)
    assert spec is not None
    return await ctl.acquire(spec, 5)


async def migrate_hot(ctl: ControlLoop, fx: RecordingEffects, clock: Clock) -> Endpoint:
    """Demand on hot -> the next tick migrates it; returns a request left in flight on the
    source while the target wakes."""
    clock.t = 10.0
    ctl.post(sample("hot@gpu0", tokens=5_000))
    await settle()
    assert ctl.demand().token_rate("hot", clock.t) > 0
    in_flight = await acquire(ctl, "hot")
    ctl.post(Tick())
    await settle()
    assert fx.woken == ["hot@gpu1"] and state(ctl, "hot@gpu1") is S.WAKING
    return in_flight


async def hot_moved_to_gpu1(ctl: ControlLoop, fx: RecordingEffects, clock: Clock) -> None:
    """The migration done (target woken, source parked); the clock at 13 s."""
    ctl.release(await migrate_hot(ctl, fx, clock))
    for ev in (Woken("hot@gpu1", 0.4), Parked("hot@gpu0", 0.4, 1)):
        ctl.post(ev)
    await settle()
    clock.t = 13.0


async def test_loop__no_demand_no_move(env: Env) -> None:
    ctl, fx, clock = env
    clock.t = 10.0
    ctl.post(Tick())
    await settle()
    assert fx.woken == [] and state(ctl, "hot@gpu0") is S.AWAKE


async def test_loop__migration_moves_traffic_when_the_target_is_ready_then_parks_the_source(env: Env) -> None:
    ctl, fx, clock = env
    old = await migrate_hot(ctl, fx, clock)
    assert old.instance_id == "hot@gpu0"
    # no gap: while the target wakes, the source still serves new requests
    assert (await acquire(ctl, "hot")).instance_id == "hot@gpu0"
    ctl.release(Endpoint("hot@gpu0", "", ""))
    ctl.post(Woken("hot@gpu1", 0.4))
    await settle()
    # traffic moved; the source drains its last request before it parks
    assert (await acquire(ctl, "hot")).instance_id == "hot@gpu1"
    assert ("hot@gpu0", "migration") not in fx.parked and state(ctl, "hot@gpu0") is S.AWAKE
    ctl.release(old)
    await settle()
    assert ("hot@gpu0", "migration") in fx.parked and state(ctl, "hot@gpu0") is S.PARKING
    assert ("parks", "hot", 1, "migration") in fx.observed


async def test_loop__migration_is_not_repeated_while_cooling_down(env: Env) -> None:
    ctl, fx, clock = env
    ctl.release(await migrate_hot(ctl, fx, clock))
    ctl.post(Woken("hot@gpu1", 0.4))
    await settle()
    ctl.post(Parked("hot@gpu0", 0.4, 15 << 30))
    clock.t = 20.0
    ctl.post(sample("hot@gpu1", tokens=5_000))
    ctl.post(Tick())
    await settle()
    assert fx.woken == ["hot@gpu1"]  # no move back


async def test_loop__activation_parks_an_idle_neighbour_then_wakes(env: Env) -> None:
    ctl, fx, clock = env
    ctl.release(await migrate_hot(ctl, fx, clock))
    ctl.post(Woken("hot@gpu1", 0.4))
    await settle()
    ctl.post(Parked("hot@gpu0", 0.4, 15 << 30))
    await settle()
    req = asyncio.create_task(acquire(ctl, "cold"))
    await settle()
    # hot@gpu1 served 0 s ago: not idle past its 2 s threshold, so cold waits (held)
    assert fx.woken == ["hot@gpu1"] and not req.done()
    clock.t = 13.0
    ctl.post(Tick())
    await settle()
    assert ("hot@gpu1", "make_room") in fx.parked
    assert fx.woken == ["hot@gpu1"]  # cold wakes only once the victim's memory is back
    ctl.post(Parked("hot@gpu1", 0.4, 15 << 30))
    await settle()
    assert fx.woken == ["hot@gpu1", "cold@gpu1"]
    ctl.post(Woken("cold@gpu1", 0.4))
    assert (await req).instance_id == "cold@gpu1"


async def test_loop__always_model_parks_when_idle(env: Env) -> None:
    ctl, fx, clock = env
    await hot_moved_to_gpu1(ctl, fx, clock)
    ctl.post(Tick())
    req = asyncio.create_task(acquire(ctl, "cold"))
    await settle()
    ctl.post(Parked("hot@gpu1", 0.4, 1))
    await settle()
    ctl.post(Woken("cold@gpu1", 0.4))
    ctl.release(await req)
    await settle()
    clock.t = 14.0
    ctl.post(Tick())
    await settle()
    assert ("cold@gpu1", "idle") not in fx.parked
    clock.t = 15.5
    ctl.post(Tick())
    await settle()
    assert ("cold@gpu1", "idle") in fx.parked


async def test_loop__failed_target_wake_keeps_the_source_serving(env: Env) -> None:
    ctl, fx, clock = env
    ctl.release(await migrate_hot(ctl, fx, clock))
    ctl.post(WakeFailed("hot@gpu1", "output after wake differs"))
    await settle()
    assert state(ctl, "hot@gpu1") is S.BACKOFF and state(ctl, "hot@gpu0") is S.AWAKE
    assert (await acquire(ctl, "hot")).instance_id == "hot@gpu0"
    assert not any(iid == "hot@gpu0" for iid, _ in fx.parked)


async def test_loop__failed_victim_park_abandons_the_plan_and_frees_its_target(env: Env) -> None:
    ctl, fx, clock = env
    await hot_moved_to_gpu1(ctl, fx, clock)
    req = asyncio.create_task(acquire(ctl, "cold"))
    await settle()
    assert ("hot@gpu1", "make_room") in fx.parked
    ctl.post(ParkFailed("hot@gpu1", "memory did not drop"))
    await settle()
    assert state(ctl, "hot@gpu1") is S.AWAKE and "cold@gpu1" not in fx.woken
    assert not req.done()  # still held: the next decision tries again
    req.cancel()


async def test_loop__load_samples_feed_demand_only_from_awake_instances(env: Env) -> None:
    ctl, _, clock = env
    clock.t = 5.0
    ctl.post(sample("cold@gpu1", tokens=1_000))  # parked: a late scrape, ignored
    ctl.post(sample("n1@gpu0", tokens=600, running=4, used=2_000))
    await settle()
    d = ctl.demand()
    assert d.token_rate("cold", 5.0) == 0
    assert d.token_rate("n1", 5.0) == pytest.approx(600 / 60)
    assert d.kv_used_tokens("n1@gpu0") == 2_000
    clock.t = 6.0
    ctl.post(sample("n1@gpu0", tokens=0, running=4))
    await settle()
    assert d.concurrency("n1", 6.0) == pytest.approx(4 * 1.0 / 60)
    # the TPOT guard's activity: 1 - exp(-concurrency); an unsampled model never decodes
    assert d.activity("n1", 6.0) == pytest.approx(1 - math.exp(-4 / 60))
    assert d.activity("cold", 6.0) == 0.0


async def test_loop__held_requests_count_in_the_request_rate_the_scheduler_sees(env: Env) -> None:
    """A parked model's engines show no demand; its held requests do (the starvation guard
    weighs neighbours by it)."""
    ctl, _, clock = env
    clock.t = 5.0
    held = [asyncio.create_task(acquire(ctl, "cold")) for _ in range(3)]
    await settle()
    assert all(not t.done() for t in held)  # parked: held while it wakes
    d = ctl.demand()
    assert d.token_rate("cold", 5.0) == 0
    assert d.request_rate("cold", 5.0) == pytest.approx(3 / 60)
    assert d.request_rate("n1", 5.0) == 0
    view = cluster_view(ctl.deployment, ctl._instances.values(), {}, {}, d, 5.0)
    rates = {m.name: m.request_rate for m in view.models}
    assert rates == {"hot": 0.0, "n1": 0.0, "cold": pytest.approx(3 / 60)}
    assert d.request_rate("cold", 66.0) == 0  # out of the window
    for t in held:
        t.cancel()
    await asyncio.gather(*held, return_exceptions=True)


def test_config__scheduler_keys_and_defaults() -> None:
    assert CFG.scheduler.tau == 0.3 and CFG.scheduler.on_late == "shed"
    dflt = parse_config({"models": RAW["models"], "host": {"gpus": 2}})
    assert dflt.scheduler.tau == 0.3
    with pytest.raises(ConfigError) as exc:
        parse_config({**RAW, "scheduler": {"tau": -1, "on_late": "drop", "tua": 1}})
    msg = str(exc.value)
    assert "scheduler.tau: must be a number >= 0" in msg
    assert "scheduler.on_late: must be one of shed, serve" in msg
    assert "scheduler.tua: unknown field (did you mean `tau`?)" in msg


async def test_loop__a_drain_is_published_and_shown_in_the_dashboard_timeline(env: Env) -> None:
    ctl, fx, clock = env
    history = History(clock=clock)
    history.seed(ctl.instances())
    old = await migrate_hot(ctl, fx, clock)
    ctl.post(Woken("hot@gpu1", 0.4))
    await settle()
    # traffic moved; the source drains its last request: a published change, state still awake
    src = next(v for v in ctl.instances() if v.id == "hot@gpu0")
    assert src.state is S.AWAKE and src.draining == "migration" and src.shown_state == "draining"
    drains = [v for v in fx.views if v.id == "hot@gpu0" and v.draining is not None]
    assert len(drains) == 1 and drains[0].state is S.AWAKE
    for v in fx.views:
        clock.t += 0.001
        history.observe(v)
    snap = dashboard_state.build(ctl.models(), ctl.deployment, Readings(), history, clock.t)
    hot = next(m for m in snap["models"] if m["name"] == "hot")
    shown = {i["id"]: (i["state"], i["draining"]) for i in hot["instances"]}
    assert shown["hot@gpu0"] == ("draining", "migration")
    assert [st for _, st in hot["timeline"]["hot@gpu0"]][-2:] == ["awake", "draining"]
    # its last request ends: it parks, and the drain ends with the state change (one view)
    n = len(fx.views)
    ctl.release(old)
    await settle()
    after = [v for v in fx.views[n:] if v.id == "hot@gpu0"]
    assert [(v.state, v.draining) for v in after] == [(S.PARKING, None)]
