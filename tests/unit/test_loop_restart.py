"""Restarts in the control loop, against the recording fake Effects and a fake clock: a crash
backs off, restarts and serves the requests held meanwhile; repeated failures mark the instance
failed with the reason; Retry-After tells the time to the next attempt plus a start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from orchestrator.config import parse_config
from orchestrator.control.events import Exited, Started, StartFailed, Tick
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.deployment import derive
from orchestrator.errors import EngineUnavailable
from orchestrator.types import InstanceState
from tests.unit.control_fakes import Clock, RecordingEffects, ep, settle

S = InstanceState
A = "a@gpu0"
CFG = parse_config(
    {
        "mode": "static",
        "restart": {"backoff_s": 1, "max_backoff_s": 4, "max_failures": 3, "window_s": 60},
        "models": [{"name": "a", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]}],
    }
)


Env = tuple[ControlLoop, RecordingEffects, Clock]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    fx, clock = RecordingEffects(), Clock()
    ctl = ControlLoop(derive(CFG), fx, clock=clock)
    task = asyncio.create_task(ctl.run())
    await settle()
    ctl.post(Started(A, ep(A), seconds=2.0))
    await settle()
    yield ctl, fx, clock
    await ctl.shutdown()
    await cancel_and_wait(task)


def view(ctl: ControlLoop) -> tuple[S, str | None]:
    v = ctl.instances()[0]
    return v.state, v.error


async def advance(ctl: ControlLoop, clock: Clock, t: float) -> None:
    clock.t = t
    ctl.post(Tick())
    await settle()


async def test_crash_backs_off_restarts_and_serves_the_held_requests(env: Env) -> None:
    ctl, fx, clock = env
    spec = ctl.resolve("a")
    assert spec is not None
    clock.t = 10.0
    ctl.post(Exited(A, -9))
    await settle()
    assert view(ctl)[0] is S.BACKOFF and fx.started == [A]
    held = asyncio.create_task(ctl.acquire(spec, timeout_s=30))
    await advance(ctl, clock, 10.5)
    assert fx.started == [A] and not held.done()  # backoff of 1 s not over
    await advance(ctl, clock, 11.0)
    assert fx.started == [A, A] and view(ctl)[0] is S.STARTING
    assert ("restarts", "a", 1, f"{A} crash") in fx.observed
    ctl.post(Started(A, ep(A), seconds=2.0))
    assert (await held).instance_id == A
    assert view(ctl) == (S.AWAKE, None)


async def test_repeated_failures_back_off_longer_then_give_up_with_the_reason(env: Env) -> None:
    ctl, fx, clock = env
    spec = ctl.resolve("a")
    assert spec is not None
    clock.t = 10.0
    ctl.post(Exited(A, -9))  # failure 1: restart at 11
    await settle()
    await advance(ctl, clock, 11.0)
    ctl.post(StartFailed(A, "engine exited with code 1 while starting"))  # failure 2: at 13
    await settle()
    state, error = view(ctl)
    assert state is S.BACKOFF and error is not None and "restart in 2 s" in error
    held = asyncio.create_task(ctl.acquire(spec, timeout_s=30))
    await advance(ctl, clock, 12.9)
    assert fx.started.count(A) == 2
    await advance(ctl, clock, 13.0)
    assert fx.started.count(A) == 3
    ctl.post(StartFailed(A, "CUDA out of memory"))  # failure 3 of 3 within 60 s
    with pytest.raises(EngineUnavailable, match="gave up after 3 failures within 60 s") as exc:
        await held
    assert "CUDA out of memory" in str(exc.value)
    state, error = view(ctl)
    assert state is S.FAILED and error is not None and "gave up" in error
    assert next(m.state for m in ctl.models()) is S.FAILED
    await advance(ctl, clock, 100.0)
    assert fx.started.count(A) == 3  # no more restarts
    with pytest.raises(EngineUnavailable, match="has failed"):
        await ctl.acquire(spec, timeout_s=1)


async def test_retry_after_is_the_backoff_left_plus_the_measured_start(env: Env) -> None:
    ctl, _, clock = env
    spec = ctl.resolve("a")
    assert spec is not None
    clock.t = 10.0
    ctl.post(Exited(A, -9))
    ctl.post(Exited(A, -9))  # the second report of the same death is ignored
    await settle()
    assert view(ctl)[0] is S.BACKOFF
    with pytest.raises(EngineUnavailable) as exc:
        await ctl.acquire(spec, timeout_s=0.01)
    assert exc.value.retry_after_s == 3.0  # 1 s to the restart + 2 s measured start


async def test_shutdown_stops_an_instance_in_backoff(env: Env) -> None:
    ctl, fx, clock = env
    ctl.post(Exited(A, -9))
    await settle()
    await ctl.shutdown()
    assert view(ctl)[0] is S.STOPPED and fx.stopped
