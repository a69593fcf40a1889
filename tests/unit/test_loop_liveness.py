"""Hung engines in the control loop, against the recording fake Effects and a fake clock: a
stale instance is probed; a failed probe kills it, it takes no new request meanwhile, and its
Exited takes the restart path with reason ``hung``; a probe that answers spares it; a proxy
timeout starts the same check. Admin ``wake`` of an instance in backoff says when it restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from orchestrator.config import parse_config
from orchestrator.control.events import Exited, Probed, Responsive, Started, Tick, Unresponsive
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.deployment import derive
from orchestrator.types import InstanceState
from tests.unit.control_fakes import Clock, RecordingEffects, ep, settle

S = InstanceState
A = "a@gpu0"
CFG = parse_config(
    {
        "mode": "static",
        "restart": {"backoff_s": 1, "max_backoff_s": 4, "max_failures": 3, "window_s": 60},
        "liveness": {"window_s": 5, "probe_timeout_s": 0.5},
        "models": [{"name": "a", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]}],
    }
)
Env = tuple[ControlLoop, RecordingEffects, Clock]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    fx, clock = RecordingEffects(), Clock(100.0)
    ctl = ControlLoop(derive(CFG), fx, clock=clock)
    task = asyncio.create_task(ctl.run())
    await settle()
    ctl.post(Started(A, ep(A), seconds=2.0))
    await settle()
    yield ctl, fx, clock
    await ctl.shutdown()
    await cancel_and_wait(task)


def state(ctl: ControlLoop) -> S:
    return ctl.instances()[0].state


async def test_stale_then_failed_probe_kills_and_restarts_with_reason_hung(env: Env) -> None:
    ctl, fx, clock = env
    spec = ctl.resolve("a")
    assert spec is not None
    ctl.post(Unresponsive(A, 5.0, "/v1/loads unanswered for 5.0 s"))
    await settle()
    assert fx.probed == [(A, 0.5)] and fx.killed == []
    ctl.post(Tick())
    await settle()
    assert fx.probed == [(A, 0.5)]  # one probe out at a time
    assert (await asyncio.wait_for(ctl.acquire(spec, 5), 1)).instance_id == A  # suspect still serves
    ctl.post(Probed(A, False, "GET /model_info: ReadTimeout within 0.5 s"))
    await settle()
    assert fx.killed == [(A, "hung")] and state(ctl) is S.AWAKE  # until its process is gone
    held = asyncio.create_task(ctl.acquire(spec, 30))
    await settle()
    assert not held.done()  # a hung instance takes no new request
    clock.t = 101.0
    ctl.post(Exited(A, -9))
    await settle()
    v = ctl.instances()[0]
    assert v.state is S.BACKOFF and v.error is not None
    assert "hung" in v.error and "ReadTimeout" in v.error and "restart in 1 s" in v.error
    clock.t = 102.0
    ctl.post(Tick())
    await settle()
    assert ("restarts", "a", 1, f"{A} hung") in fx.observed and fx.started == [A, A]
    ctl.post(Started(A, ep(A), seconds=1.0))
    assert (await asyncio.wait_for(held, 1)).instance_id == A
    assert fx.killed == [(A, "hung")]  # the new process starts with a clean record


async def test_a_probe_that_answers_spares_it_and_an_answer_ends_the_streak(env: Env) -> None:
    ctl, fx, clock = env
    ctl.post(Unresponsive(A, 6.0, "stale"))
    await settle()
    ctl.post(Probed(A, True, "GET /model_info answered 200"))
    await settle()
    clock.t = 104.0
    ctl.post(Tick())
    await settle()
    assert fx.killed == [] and fx.probed == [(A, 0.5)]
    clock.t = 105.0  # a window after the probe, still stale: probe again
    ctl.post(Tick())
    await settle()
    assert len(fx.probed) == 2
    ctl.post(Responsive(A))
    ctl.post(Probed(A, False, "late answer of a finished streak"))
    clock.t = 200.0
    ctl.post(Tick())
    await settle()
    assert fx.killed == [] and len(fx.probed) == 2 and state(ctl) is S.AWAKE


async def test_a_proxy_timeout_starts_the_check_at_once(env: Env) -> None:
    ctl, fx, _ = env
    ctl.suspect(A, "a request timed out: the engine sent no response head for 600 s (hung?)")
    await settle()
    assert fx.probed == [(A, 0.5)]
    ctl.suspect(A, "another one")  # the streak is the same: no second probe
    await settle()
    assert fx.probed == [(A, 0.5)]


async def test_news_about_an_instance_not_awake_is_ignored(env: Env) -> None:
    ctl, fx, _ = env
    ctl.post(Exited(A, -9))
    await settle()
    ctl.post(Unresponsive(A, 60.0, "stale"))
    await settle()
    assert fx.probed == [] and state(ctl) is S.BACKOFF


async def test_admin_wake_of_an_instance_in_backoff_says_when_it_restarts(env: Env) -> None:
    ctl, _, clock = env
    ctl.post(Exited(A, -9))
    await settle()
    clock.t = 100.25
    report = await asyncio.wait_for(ctl.admin(A, "wake"), 1)
    assert report.startswith("restarting in 0.8 s") and "exited with code -9" in report
    with pytest.raises(ValueError, match="cannot park"):
        await asyncio.wait_for(ctl.admin(A, "park"), 1)
