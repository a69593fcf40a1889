"""A secondary proxy's Router (orchestrator/dataplane/remote.py) over the control plane's channel
(channel.py) on a real Unix socket, in-process, against the control loop with a recording fake:
a request held in a secondary proxy starts its model through the control loop, its release comes
back to the loop's in-flight count, a client that leaves cancels its hold, and a worker that dies
gives back what it held; in mode full a worker's requests wait in the control plane's
admission gate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import ModelSpec
from orchestrator.control.events import Started
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.dataplane.channel import Channel
from orchestrator.dataplane.remote import RemoteGate, RemoteRouter
from orchestrator.deployment import derive
from orchestrator.errors import EngineUnavailable
from orchestrator.proxy.admission import AdmissionGate
from orchestrator.proxy.errors import ProxyError
from orchestrator.types import Endpoint
from tests.unit.control_fakes import RecordingEffects, ep, settle
from tests.unit.test_control_loop import CFG  # static: "a" starts at up; "c" is on: false
from tests.unit.test_proxy_admission import BODY, loads
from tests.unit.test_proxy_admission import CFG as FULL  # mode full: fast, big on GPU 0

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


class RecordingRouter:
    """The primary proxy's Router as the channel sees it: the control loop, recording what is
    released (an adapter's endpoint is released by its served name: lora/router.py)."""

    def __init__(self, inner: ControlLoop) -> None:
        self.inner = inner
        self.released: list[Endpoint] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def acquire(self, model: ModelSpec, timeout_s: float) -> Endpoint:
        got = await self.inner.acquire(model, timeout_s)
        return Endpoint(got.instance_id, got.base_url, f"{got.served_name}:adapter")

    def release(self, endpoint: Endpoint) -> None:
        self.released.append(endpoint)
        self.inner.release(Endpoint(endpoint.instance_id, endpoint.base_url, endpoint.served_name.split(":")[0]))


async def test_a_worker_releases_the_whole_endpoint_to_the_primarys_router(tmp_path: Path) -> None:
    fx = RecordingEffects()
    ctl = ControlLoop(derive(CFG), fx, clock=lambda: 0.0)
    task = asyncio.create_task(ctl.run())
    router = RecordingRouter(ctl)
    channel = Channel(router)  # type: ignore[arg-type]
    await channel.serve(tmp_path / "c.sock")
    worker, dying = RemoteRouter(CFG), RemoteRouter(CFG)
    await worker.connect(tmp_path / "c.sock")
    await dying.connect(tmp_path / "c.sock")
    try:
        ctl.post(Started("a@gpu0", ep("a@gpu0")))
        await settle()
        spec = worker.resolve("a")
        assert spec is not None
        got = await worker.acquire(spec, 5)
        assert got.served_name.endswith(":adapter")
        worker.release(got)
        await until(lambda: router.released == [got], "the release lost its served name")
        held = await dying.acquire(spec, 5)
        await dying.aclose()  # died holding it: released whole as well
        await until(lambda: router.released == [got, held], "a dead worker's endpoint was not released whole")
        assert in_flight(ctl, "a@gpu0") == 0
    finally:
        await worker.aclose()
        await channel.close()
        await cancel_and_wait(task)


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[tuple[AdmissionGate, RemoteGate, RemoteRouter, Path]]:
    ctl = ControlLoop(derive(FULL), RecordingEffects(), clock=lambda: 0.0)
    task = asyncio.create_task(ctl.run())
    gate = AdmissionGate(derive(FULL))
    channel = Channel(ctl, gate)
    await channel.serve(tmp_path / "c.sock")
    router = RemoteRouter(FULL)
    await router.connect(tmp_path / "c.sock")
    yield gate, RemoteGate(router), router, tmp_path / "c.sock"
    await router.aclose()
    await channel.close()
    await cancel_and_wait(task)


def full_spec(name: str) -> ModelSpec:
    m = FULL.model(name)
    assert m is not None
    return m


async def test_a_workers_request_waits_in_the_control_planes_gate_in_deadline_order(
    gated: tuple[AdmissionGate, RemoteGate, RemoteRouter, Path],
) -> None:
    gate, remote, _, _ = gated
    now = time.monotonic()
    gate.observe(loads("big@gpu0", now, running=64))  # no free running slot
    order: list[str] = []

    async def request(name: str, arrival: float) -> None:
        async with remote.admitted(full_spec("big"), BODY, "big@gpu0", arrival):
            order.append(name)
            await asyncio.sleep(0.05)

    late = asyncio.create_task(request("late", now))
    await until(lambda: gate.queued() == {0: 1}, "the worker's request is not in the gate")
    early = asyncio.create_task(request("early", now - 0.5))  # its deadline comes first
    await until(lambda: gate.queued() == {0: 2}, "the second request is not in the gate")
    gate.observe(loads("big@gpu0", time.monotonic(), running=63))  # one slot
    await until(lambda: order == ["early"], "the earliest deadline was not let go first")
    assert not late.done()
    gate.observe(loads("big@gpu0", time.monotonic(), running=0))
    await asyncio.wait_for(asyncio.gather(early, late), 5)
    assert order == ["early", "late"]
    await until(lambda: not any(e.unseen for e in gate._engines.values()), "admit_done did not end them")


async def test_a_workers_request_is_shed_with_the_gates_429_and_one_that_leaves_leaves_the_queue(
    gated: tuple[AdmissionGate, RemoteGate, RemoteRouter, Path],
) -> None:
    gate, remote, _, sock = gated
    gate.observe(loads("fast@gpu0", time.monotonic(), waiting_tokens=400_000, capacity=1 << 30))
    with pytest.raises(ProxyError) as exc:
        async with remote.admitted(full_spec("fast"), BODY, "fast@gpu0", time.monotonic()):
            pass
    assert exc.value.status == 429 and exc.value.code == "deadline_unmeetable"
    assert exc.value.headers["Retry-After"].isdigit() and exc.value.message.startswith("model 'fast'")
    gate.observe(loads("fast@gpu0", time.monotonic()))  # its backlog gone (the GPU's group is shared)
    gate.observe(loads("big@gpu0", time.monotonic(), running=64))
    held = asyncio.create_task(remote.admitted(full_spec("big"), BODY, "big@gpu0", time.monotonic()).__aenter__())
    await until(lambda: gate.queued() == {0: 1}, "not queued")
    held.cancel()  # the client left
    await until(lambda: gate.queued() == {}, "a request whose client left stayed in the gate")
    # a worker that dies with a dispatched request gives its room back
    other = RemoteRouter(FULL)
    await other.connect(sock)
    gate.observe(loads("big@gpu0", time.monotonic(), running=0))
    await other.admit("big", 100, 100, "big@gpu0", time.monotonic())
    assert gate._engines["big@gpu0"].unseen
    await other.aclose()
    await until(lambda: not gate._engines["big@gpu0"].unseen, "a dead worker's request kept its room")
