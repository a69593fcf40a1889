"""The control loop in full mode (time-sharing through the global scheduler) against a recording
fake and a fake clock. Migrations and demand: test_loop_scheduler.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from orchestrator.config import parse_config
from orchestrator.control.events import Parked, ParkFailed, Started, Tick, WakeFailed, Woken
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.deployment import derive
from orchestrator.errors import EngineUnavailable
from orchestrator.types import InstanceState
from tests.unit.control_fakes import Clock, RecordingEffects, ep, settle

S = InstanceState
Env = tuple[ControlLoop, RecordingEffects, "Clock"]
# 48 GB: two awake 8B servers leave no room for a third (H100 memory model: 17.4 GiB awake +
# 1 GiB KV floor each, 2.3 GiB of CUDA context per server, parked or not).
CFG = parse_config(
    {
        "mode": "full",
        "host": {"gpus": 1, "gpu_memory_gb": 48},
        "hold": {"per_model": 2, "total": 3},
        "models": [
            {"name": "a", "model_path": "llama-3.1-8b", "placements": [{"gpus": [0], "kv_pool_gb": 20}]},
            {
                "name": "b",
                "model_path": "llama-3.1-8b",
                "idle": {"when": "always", "park_after_s": 45},
                "placements": [{"gpus": [0], "kv_pool_gb": 20}],
            },
            {"name": "c", "model_path": "llama-3.1-8b", "placements": [{"gpus": [0], "on": False, "kv_pool_gb": 20}]},
        ],
    }
)


@pytest.fixture
async def env() -> AsyncIterator[tuple[ControlLoop, RecordingEffects, Clock]]:
    fx, clock = RecordingEffects(), Clock()
    ctl = ControlLoop(derive(CFG), fx, clock=clock)
    task = asyncio.create_task(ctl.run())
    await settle()
    # c, started only to be parked, goes first and a beside it (their start budgets fit in
    # 48 GB); b, which does not fit beside them, waits until neither is starting
    assert fx.started == ["c@gpu0", "a@gpu0"]
    for iid in ("c@gpu0", "a@gpu0"):
        ctl.post(Started(iid, ep(iid), seconds=2.0))
        await settle()
    assert fx.started[-1] == "b@gpu0"
    ctl.post(Started("b@gpu0", ep("b@gpu0"), seconds=2.0))
    await settle()
    yield ctl, fx, clock
    await cancel_and_wait(task)


def state(ctl: ControlLoop, iid: str) -> S:
    return next(v.state for v in ctl.instances() if v.id == iid)


async def test_off_instance_is_started_then_parked_warm(env: Env) -> None:
    ctl, fx, _ = env
    assert fx.parked == [("c@gpu0", "warm_start")]
    ctl.post(Parked("c@gpu0", 0.4, 15 << 30))
    await settle()
    assert state(ctl, "c@gpu0") is S.PARKED
    assert ("freed_bytes", "c", 15 << 30, "") in fx.observed


async def test_held_request_wakes_parked_model_after_making_room(env: Env) -> None:
    ctl, fx, clock = env
    ctl.post(Parked("c@gpu0", 0.4, 15 << 30))
    clock.t = 100.0  # a and b idle for 100 s
    ctl.post(Tick())  # b (`when: always`) parks for idleness
    await settle()
    assert ("b@gpu0", "idle") in fx.parked
    spec = ctl.resolve("c")
    assert spec is not None
    req = asyncio.create_task(ctl.acquire(spec, 30))
    await settle()
    # b's park is under way (its memory is not free yet), c needs 18.4 GiB: a parks too,
    # and c wakes once a's park is done
    assert ("a@gpu0", "make_room") in fx.parked and fx.woken == []
    ctl.post(Parked("b@gpu0", 0.4, 15 << 30))
    await settle()
    assert fx.woken == []
    ctl.post(Parked("a@gpu0", 0.4, 15 << 30))
    await settle()
    assert fx.woken == ["c@gpu0"] and state(ctl, "c@gpu0") is S.WAKING
    ctl.post(Woken("c@gpu0", 0.35))
    assert (await req).instance_id == "c@gpu0"
    assert ("wake_seconds", "c", 0.35, "") in fx.observed


async def test_idle_always_model_parks_after_its_threshold(env: Env) -> None:
    ctl, fx, clock = env
    clock.t = 44.0
    ctl.post(Tick())
    await settle()
    assert ("b@gpu0", "idle") not in fx.parked
    clock.t = 46.0
    ctl.post(Tick())
    await settle()
    assert ("b@gpu0", "idle") in fx.parked
    assert ("a@gpu0", "idle") not in fx.parked  # `needed` models stay


async def test_failed_park_returns_to_awake_and_is_counted(env: Env) -> None:
    ctl, fx, _ = env
    ctl.post(ParkFailed("c@gpu0", "memory did not drop"))
    await settle()
    view = next(v for v in ctl.instances() if v.id == "c@gpu0")
    assert view.state is S.AWAKE and view.error == "memory did not drop"
    assert ("park_failures", "c", 1, "") in fx.observed
    assert fx.parked.count(("c@gpu0", "warm_start")) == 1  # not retried in a loop


async def test_failed_wake_restarts_the_instance_for_the_held_requests(env: Env) -> None:
    ctl, fx, clock = env
    ctl.post(Parked("c@gpu0", 0.4, 1))
    ctl.post(Parked("a@gpu0", 0.4, 1))  # ignored: a is awake, not parking
    await settle()
    assert state(ctl, "a@gpu0") is S.AWAKE
    clock.t = 100.0
    spec = ctl.resolve("c")
    assert spec is not None
    req = asyncio.create_task(ctl.acquire(spec, 30))
    await settle()
    for v, r in list(fx.parked):
        if r in ("make_room", "idle"):  # b parks for idleness, a to make room
            ctl.post(Parked(v, 0.4, 1))
    await settle()
    assert fx.woken == ["c@gpu0"]
    ctl.post(WakeFailed("c@gpu0", "output after wake differs"))
    await settle()
    assert state(ctl, "c@gpu0") is S.BACKOFF and not req.done()  # held through the restart
    starts = fx.started.count("c@gpu0")
    clock.t = 100.9
    ctl.post(Tick())
    await settle()
    assert fx.started.count("c@gpu0") == starts  # backoff (1 s) not over yet
    clock.t = 101.0
    ctl.post(Tick())
    await settle()
    assert fx.started.count("c@gpu0") == starts + 1
    assert ("restarts", "c", 1, "c@gpu0 wake_failed") in fx.observed
    ctl.post(Started("c@gpu0", ep("c@gpu0"), 0.5))
    assert (await req).instance_id == "c@gpu0"


async def test_hold_bounds_answer_at_once_with_retry_after(env: Env) -> None:
    ctl, fx, _ = env
    spec = ctl.resolve("c")  # parking (warm start): requests are held
    assert spec is not None
    held = [asyncio.create_task(ctl.acquire(spec, 30)) for _ in range(2)]
    await settle()
    with pytest.raises(EngineUnavailable, match="too many requests") as exc:
        await ctl.acquire(spec, 30)
    assert exc.value.retry_after_s is not None and exc.value.retry_after_s >= 1
    for h in held:
        h.cancel()


async def test_admin_park_and_wake(env: Env) -> None:
    ctl, fx, _ = env
    task = asyncio.create_task(ctl.admin("a@gpu0", "park"))
    await settle()
    assert ("a@gpu0", "admin") in fx.parked
    ctl.post(Parked("a@gpu0", 0.3, 16 << 30))
    assert "parked in 0.300 s" in await task
    with pytest.raises(ValueError, match="parked"):
        await ctl.admin("a@gpu0", "park")
    with pytest.raises(KeyError):
        await ctl.admin("zz", "wake")
