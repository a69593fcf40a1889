"""The control loop against a recording fake Effects: no processes, no sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from orchestrator.config import Config, parse_config
from orchestrator.control.events import Acquire, Exited, Started, StartFailed
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.deployment import derive
from orchestrator.errors import EngineUnavailable
from orchestrator.types import InstanceState
from tests.unit.control_fakes import RecordingEffects, ep, settle

S = InstanceState


# static mode: no time-sharing, `on: false` starts on the first request.
CFG = parse_config(
    {
        "mode": "static",
        "host": {"gpus": 2},
        "models": [
            {"name": "a", "model_path": "tiny-llama", "aliases": ["alpha"], "placements": [{"gpus": [0]}]},
            {"name": "b", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]},
            {"name": "c", "model_path": "tiny-llama", "placements": [{"gpus": [1], "on": False}]},
            {
                "name": "d",
                "model_path": "tiny-llama",
                "placements": [{"gpus": [0], "on": False}, {"gpus": [1], "on": False}],
            },
        ],
    }
)


@pytest.fixture
async def loop() -> AsyncIterator[tuple[ControlLoop, RecordingEffects]]:
    fx = RecordingEffects()
    ctl = ControlLoop(derive(CFG), fx, clock=lambda: 0.0)
    task = asyncio.create_task(ctl.run())
    await settle()
    yield ctl, fx
    await cancel_and_wait(task)


def state(ctl: ControlLoop, model: str) -> S:
    return next(m.state for m in ctl.models() if m.spec.name == model)


async def test_on_instances_start_one_per_gpu_in_file_order(loop: tuple[ControlLoop, RecordingEffects]) -> None:
    ctl, fx = loop
    assert fx.started == ["a@gpu0"]
    assert state(ctl, "b") is S.PENDING and state(ctl, "c") is S.STOPPED
    ctl.post(Started("a@gpu0", ep("a@gpu0")))
    await settle()
    assert fx.started == ["a@gpu0", "b@gpu0"]
    assert ("a@gpu0", S.AWAKE) in fx.changes


async def test_acquire_holds_until_the_model_is_awake(loop: tuple[ControlLoop, RecordingEffects]) -> None:
    ctl, fx = loop
    spec = ctl.resolve("alpha")
    assert spec is not None and spec.name == "a"
    waiter = asyncio.create_task(ctl.acquire(spec, timeout_s=5))
    await settle()
    assert not waiter.done()
    ctl.post(Started("a@gpu0", ep("a@gpu0")))
    assert (await waiter).instance_id == "a@gpu0"


async def test_request_for_an_off_model_starts_it(loop: tuple[ControlLoop, RecordingEffects]) -> None:
    ctl, fx = loop
    spec = ctl.resolve("c")
    assert spec is not None
    waiter = asyncio.create_task(ctl.acquire(spec, timeout_s=5))
    await settle()
    assert "c@gpu1" in fx.started and state(ctl, "c") is S.STARTING
    ctl.post(Started("c@gpu1", ep("c@gpu1")))
    assert (await waiter).base_url == "http://c@gpu1"


async def test_demand_starts_one_instance_not_all(loop: tuple[ControlLoop, RecordingEffects]) -> None:
    ctl, fx = loop
    spec = ctl.resolve("d")
    assert spec is not None
    waiters = [asyncio.create_task(ctl.acquire(spec, timeout_s=5)) for _ in range(3)]
    await settle()
    assert [s for s in fx.started if s.startswith("d@")] == ["d@gpu1"]  # gpu0 is busy starting a
    ctl.post(Started("d@gpu1", ep("d@gpu1")))
    assert {(await w).instance_id for w in waiters} == {"d@gpu1"}


async def test_failed_start_backs_off_and_keeps_held_requests(loop: tuple[ControlLoop, RecordingEffects]) -> None:
    ctl, fx = loop
    spec = ctl.resolve("a")
    assert spec is not None
    waiter = asyncio.create_task(ctl.acquire(spec, timeout_s=5))
    await settle()
    ctl.post(StartFailed("a@gpu0", "engine exited with code 1"))
    await settle()
    assert state(ctl, "a") is S.BACKOFF and not waiter.done()  # restarted after its backoff
    view = next(m for m in ctl.models() if m.spec.name == "a").instances[0]
    assert view.error is not None and "exited with code 1" in view.error and "restart in 1 s" in view.error
    # the next colocated instance gets its turn
    assert fx.started[-1] == "b@gpu0"
    waiter.cancel()


async def test_timeout_gives_a_transient_error_with_retry_after(loop: tuple[ControlLoop, RecordingEffects]) -> None:
    ctl, _ = loop
    spec = ctl.resolve("b")
    assert spec is not None
    with pytest.raises(EngineUnavailable) as exc:
        await ctl.acquire(spec, timeout_s=0.01)
    assert exc.value.transient and exc.value.retry_after_s


async def test_crash_of_an_awake_instance_backs_off(loop: tuple[ControlLoop, RecordingEffects]) -> None:
    ctl, fx = loop
    ctl.post(Started("a@gpu0", ep("a@gpu0")))
    ctl.post(Exited("a@gpu0", -9))
    await settle()
    view = next(m for m in ctl.models() if m.spec.name == "a").instances[0]
    assert view.state is S.BACKOFF and view.error is not None and "-9" in view.error
    assert view.base_url is None  # nothing is routed to the dead process


async def test_requests_are_spread_over_awake_instances(loop: tuple[ControlLoop, RecordingEffects]) -> None:
    ctl, _ = loop
    spec = ctl.resolve("d")
    assert spec is not None
    first = asyncio.create_task(ctl.acquire(spec, timeout_s=5))
    await settle()
    ctl.post(Started("d@gpu1", ep("d@gpu1")))
    await first
    ctl.post(Started("a@gpu0", ep("a@gpu0")))  # frees GPU 0 for b; d@gpu0 stays off
    await settle()
    got = [await ctl.acquire(spec, 1) for _ in range(2)]
    assert {e.instance_id for e in got} == {"d@gpu1"}


async def test_shutdown_fails_waiters_and_stops_everything(loop: tuple[ControlLoop, RecordingEffects]) -> None:
    ctl, fx = loop
    spec = ctl.resolve("b")
    assert spec is not None
    waiter = asyncio.create_task(ctl.acquire(spec, timeout_s=5))
    await settle()
    await ctl.shutdown()
    with pytest.raises(EngineUnavailable, match="shutting down"):
        await waiter
    assert fx.stopped
    assert all(m.state is S.STOPPED for m in ctl.models())


def test_config_fixture_is_what_the_tests_assume() -> None:
    assert isinstance(CFG, Config) and len(CFG.instances) == 5


async def test_cancel_and_wait_logs_a_task_that_had_died_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    """Shutdown must go on to stop the engines even if a background task had crashed."""
    from orchestrator.control.loop import cancel_and_wait

    async def boom() -> None:
        raise RuntimeError("ledger bug")

    task = asyncio.create_task(boom(), name="kv-ledger")
    await asyncio.sleep(0)
    await cancel_and_wait(task)  # does not raise
    assert "kv-ledger had failed" in caplog.text and "ledger bug" in caplog.text


async def test_queued_events_are_applied_in_order_before_one_decision() -> None:
    """Under load the loop decides once per batch of waiting events, not per request's acquire
    and release (most of its CPU), and at most MAX_EVENTS_PER_DECISION events go undecided."""
    from orchestrator.control import loop as loop_module

    fx = RecordingEffects()
    ctl = ControlLoop(derive(CFG), fx, clock=lambda: 0.0)
    decisions: list[int] = []
    applied: list[object] = []
    decide, apply = ctl._decide, ctl._apply

    def counting_decide() -> None:
        decisions.append(len(applied))
        decide()

    def recording_apply(ev: object) -> None:
        applied.append(ev)
        apply(ev)  # type: ignore[arg-type]

    ctl._decide = counting_decide  # type: ignore[method-assign]
    ctl._apply = recording_apply  # type: ignore[method-assign]
    task = asyncio.create_task(ctl.run())
    await settle()
    ctl.post(Started("a@gpu0", ep("a@gpu0")))
    await settle()
    spec = CFG.model("a")
    assert spec is not None
    decisions.clear()
    applied.clear()
    waiters = [asyncio.create_task(ctl.acquire(spec, 5)) for _ in range(150)]
    got = await asyncio.gather(*waiters)
    await settle()
    assert len(applied) == 150 and all(isinstance(e, Acquire) for e in applied)
    assert ctl._instances["a@gpu0"].in_flight == 150 and set(got) == {ep("a@gpu0")}
    bound = loop_module.MAX_EVENTS_PER_DECISION
    assert -(-150 // bound) <= len(decisions) < 150  # batched, and never more than the bound apart
    assert all(b - a <= bound for a, b in zip([0, *decisions], decisions, strict=False))
    await cancel_and_wait(task)
