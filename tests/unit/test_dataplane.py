"""A secondary proxy's Router (orchestrator/dataplane/remote.py) over the control plane's channel
(channel.py) on a real Unix socket, in-process, against the control loop with a recording fake:
a request held in a secondary proxy starts its model through the control loop, its release comes
back to the loop's in-flight count, a client that leaves cancels its hold, and a worker that dies
gives back what it held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.control.events import Started
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.dataplane.channel import Channel
from orchestrator.dataplane.remote import RemoteRouter
from orchestrator.deployment import derive
from orchestrator.errors import EngineUnavailable
from tests.unit.control_fakes import RecordingEffects, ep, settle
from tests.unit.test_control_loop import CFG  # static: "a" starts at up; "c" is on: false

Env = tuple[ControlLoop, RecordingEffects, RemoteRouter, Path]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    fx = RecordingEffects()
    ctl = ControlLoop(derive(CFG), fx, clock=lambda: 0.0)
    task = asyncio.create_task(ctl.run())
    channel = Channel(ctl)
    sock = tmp_path / "control.sock"
    await channel.serve(sock)
    router = RemoteRouter(CFG)
    await router.connect(sock)
    await settle()
    yield ctl, fx, router, sock
    await router.aclose()
    await channel.close()
    await cancel_and_wait(task)


def in_flight(ctl: ControlLoop, iid: str) -> int:
    return ctl._instances[iid].in_flight


async def until(cond: object, what: str) -> None:
    for _ in range(200):
        if callable(cond) and cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(what)


async def test_a_request_held_in_a_secondary_proxy_starts_its_model_through_the_loop(env: Env) -> None:
    ctl, fx, router, _ = env
    spec = router.resolve("c")
    assert spec is not None and router.known_names() == CFG.names()
    waiter = asyncio.create_task(router.acquire(spec, timeout_s=5))
    await until(lambda: "c@gpu1" in fx.started, "the loop was not asked to start c")
    assert not waiter.done()  # held by the control loop
    ctl.post(Started("c@gpu1", ep("c@gpu1")))
    got = await asyncio.wait_for(waiter, 5)
    assert got == ep("c@gpu1") and in_flight(ctl, "c@gpu1") == 1
    router.release(got)
    await until(lambda: in_flight(ctl, "c@gpu1") == 0, "the release did not reach the loop")


async def test_a_timeout_in_the_loop_is_the_same_503_with_retry_after(env: Env) -> None:
    _, _, router, _ = env
    spec = router.resolve("c")
    assert spec is not None
    with pytest.raises(EngineUnavailable) as err:
        await router.acquire(spec, timeout_s=0.05)
    assert "not ready after waiting" in str(err.value) and err.value.retry_after_s is not None


async def test_a_client_that_leaves_while_held_cancels_its_hold(env: Env) -> None:
    ctl, _, router, _ = env
    spec = router.resolve("c")
    assert spec is not None
    waiter = asyncio.create_task(router.acquire(spec, timeout_s=5))
    await until(lambda: ctl._holds.waiting().get("c", 0) == 1, "not held")
    waiter.cancel()
    await until(lambda: ctl._holds.waiting().get("c", 0) == 0, "the hold stayed")


async def test_a_dead_worker_gives_back_what_it_held_and_views_reach_workers(env: Env) -> None:
    ctl, _, router, sock = env
    ctl.post(Started("a@gpu0", ep("a@gpu0")))
    await settle()
    other = RemoteRouter(CFG)
    await other.connect(sock)
    spec = other.resolve("a")
    assert spec is not None
    assert await other.acquire(spec, 5) == ep("a@gpu0")
    assert in_flight(ctl, "a@gpu0") == 1
    await other.aclose()  # the worker dies without releasing
    await until(lambda: in_flight(ctl, "a@gpu0") == 0, "a dead worker's request stayed in flight")
    await until(lambda: bool(router.models()), "no views")
    assert [m.spec.name for m in router.models()] == [m.name for m in CFG.models]


async def test_a_lost_control_plane_is_a_clean_503_and_stops_the_worker(tmp_path: Path) -> None:
    lost: list[bool] = []
    channel = Channel(ControlLoop(derive(CFG), RecordingEffects()))
    await channel.serve(tmp_path / "c.sock")
    router = RemoteRouter(CFG, on_lost=lambda: lost.append(True))
    await router.connect(tmp_path / "c.sock")
    await until(lambda: bool(channel._writers), "the channel did not accept the worker")
    await channel.close()
    spec = router.resolve("a")
    assert spec is not None
    # the server closed: its connection ends at the next frame
    with pytest.raises(EngineUnavailable, match="control plane is gone"):
        await asyncio.wait_for(router.acquire(spec, 1.0), 5)
    assert lost == [True]
    await router.aclose()
