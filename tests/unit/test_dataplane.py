"""A secondary proxy's Router (orchestrator/dataplane/remote.py) over the control plane's channel
(channel.py), driven in-process (httpx's ASGI transport) against the control loop with a
recording fake: a request held in a secondary proxy starts its model through the control loop,
its release comes back to the loop's in-flight count, and a worker that gives up cancels its
hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from orchestrator.control.events import Started
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.dataplane.channel import channel_app
from orchestrator.dataplane.remote import RemoteRouter
from orchestrator.deployment import derive
from orchestrator.errors import EngineUnavailable
from tests.unit.control_fakes import RecordingEffects, ep, settle
from tests.unit.test_control_loop import CFG  # static; "c" is on: false (starts on a request)


@pytest.fixture
async def remote() -> AsyncIterator[tuple[ControlLoop, RecordingEffects, RemoteRouter]]:
    fx = RecordingEffects()
    ctl = ControlLoop(derive(CFG), fx, clock=lambda: 0.0)
    task = asyncio.create_task(ctl.run())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=channel_app(ctl)))
    router = RemoteRouter(CFG, client)
    router.start()
    await settle()
    yield ctl, fx, router
    await router.aclose()
    await client.aclose()
    await cancel_and_wait(task)


def in_flight(ctl: ControlLoop, iid: str) -> int:
    return ctl._instances[iid].in_flight


async def test_a_request_held_in_a_secondary_proxy_starts_its_model_through_the_loop(
    remote: tuple[ControlLoop, RecordingEffects, RemoteRouter],
) -> None:
    ctl, fx, router = remote
    spec = router.resolve("c")
    assert spec is not None and router.known_names() == CFG.names()
    waiter = asyncio.create_task(router.acquire(spec, timeout_s=5))
    for _ in range(50):
        await asyncio.sleep(0.01)
        if "c@gpu1" in fx.started:
            break
    assert "c@gpu1" in fx.started and not waiter.done()  # held by the control loop, start asked
    ctl.post(Started("c@gpu1", ep("c@gpu1")))
    got = await asyncio.wait_for(waiter, 5)
    assert got == ep("c@gpu1") and in_flight(ctl, "c@gpu1") == 1
    router.release(got)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if in_flight(ctl, "c@gpu1") == 0:
            break
    assert in_flight(ctl, "c@gpu1") == 0


async def test_a_timeout_in_the_loop_is_the_same_503_with_retry_after(
    remote: tuple[ControlLoop, RecordingEffects, RemoteRouter],
) -> None:
    _, _, router = remote
    spec = router.resolve("c")
    assert spec is not None
    with pytest.raises(EngineUnavailable) as err:
        await router.acquire(spec, timeout_s=0.05)
    assert "not ready after waiting" in str(err.value) and err.value.retry_after_s is not None


async def test_views_reach_the_secondary_and_an_unreachable_control_plane_is_a_clean_503() -> None:
    fx = RecordingEffects()
    ctl = ControlLoop(derive(CFG), fx, clock=lambda: 0.0)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=channel_app(ctl)))
    router = RemoteRouter(CFG, client)
    router.start()
    await asyncio.sleep(0.05)
    assert [m.spec.name for m in router.models()] == [m.name for m in CFG.models]
    await router.aclose()
    await client.aclose()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no socket", request=request)

    dead = RemoteRouter(CFG, httpx.AsyncClient(transport=httpx.MockTransport(refuse)))
    spec = dead.resolve("a")
    assert spec is not None
    with pytest.raises(EngineUnavailable, match="control plane did not answer"):
        await dead.acquire(spec, 1.0)
