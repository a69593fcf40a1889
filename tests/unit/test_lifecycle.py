"""Park/wake sequences against the sim engine's app (in process) and against a mock engine."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from orchestrator.errors import EngineError
from orchestrator.shapes import load_shape
from orchestrator.supervisor.lifecycle import Lifecycle
from orchestrator.supervisor.memory import MemoryReading, SimMemoryProbe
from orchestrator.supervisor.process import PROBE_BODY, PROBE_PATH
from simsglang.server import SimSettings, create_app

BASE = "http://sim"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(SimSettings.from_shape("llama-3.2-1b", speed=0))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as c:
            yield c


async def resident(c: httpx.AsyncClient) -> int:
    return int((await c.get(BASE + "/server_info")).json()["sim"]["memory"]["resident_bytes"])


async def test_park_frees_verified_memory_and_wake_gives_the_same_output(client: httpx.AsyncClient) -> None:
    first = (await client.post(BASE + PROBE_PATH, json=PROBE_BODY)).json()["text"]
    before = await resident(client)
    life = Lifecycle(client, SimMemoryProbe(client))
    res = await life.park(BASE, 1, (0,), expected_free_bytes=2 << 30)
    assert res.freed_bytes == before - await resident(client) and res.freed_bytes > 2 << 30
    assert (await client.get(BASE + "/health")).status_code == 503  # parked: no generate
    await life.wake(BASE, expected_probe=first)
    assert await resident(client) == before


async def test_wake_with_different_output_is_an_error(client: httpx.AsyncClient) -> None:
    life = Lifecycle(client, SimMemoryProbe(client))
    await life.park(BASE, 1, (0,), expected_free_bytes=1 << 30)
    with pytest.raises(EngineError, match="differs"):
        await life.wake(BASE, expected_probe="something else")


class StuckProbe:
    """A memory reading that never drops: a release that did nothing."""

    async def read(self, pid: int, gpus: tuple[int, ...], base_url: str) -> MemoryReading:
        return MemoryReading(10 << 30, True)


async def test_release_without_freed_memory_is_resumed_and_reported(client: httpx.AsyncClient) -> None:
    before = await resident(client)
    life = Lifecycle(client, StuckProbe())
    with pytest.raises(EngineError, match="dropped only 0 MiB"):
        await life.park(BASE, 1, (0,), expected_free_bytes=2 << 30)
    assert await resident(client) == before  # resumed
    assert (await client.post(BASE + PROBE_PATH, json=PROBE_BODY)).status_code == 200


async def test_busy_engine_is_never_released(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/v1/loads":
            return httpx.Response(200, json={"loads": [{"num_running_reqs": 1, "num_waiting_reqs": 0}]})
        return httpx.Response(200, json=None)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
        life = Lifecycle(c, StuckProbe())
        monkeypatch.setattr("orchestrator.supervisor.lifecycle.IDLE_WAIT_S", 0.0)
        with pytest.raises(EngineError, match="not idle"):
            await life.park(BASE, 1, (0,), expected_free_bytes=1)
    assert "/release_memory_occupation" not in calls
    assert calls == ["/pause_generation", "/v1/loads", "/continue_generation"]


@pytest.mark.parametrize(("shape", "tp"), [("llama-3.1-8b", 2), ("llama-3.3-70b", 4)])
async def test_a_tp_group_parks_and_wakes_on_every_rank(shape: str, tp: int) -> None:
    """The sim at TP 2 and TP 4: one reading per rank's GPU; each GPU must free its shard."""
    app = create_app(SimSettings.from_shape(shape, speed=0, tp_size=tp))
    gpus = tuple(range(tp))
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as c:
        first = (await c.post(BASE + PROBE_PATH, json=PROBE_BODY)).json()["text"]
        probe = SimMemoryProbe(c)
        before = await probe.read(1, gpus, BASE)
        assert len(before.per_gpu) == tp and before.bytes == sum(before.per_gpu)
        life = Lifecycle(c, probe)
        share = load_shape(shape).weight_bytes // tp
        res = await life.park(BASE, 1, gpus, expected_free_bytes=share)
        assert all(b - a >= share for b, a in zip(res.before.per_gpu, res.after.per_gpu, strict=True))
        await life.wake(BASE, expected_probe=first)  # the probe after the wake: same output
        assert (await probe.read(1, gpus, BASE)).per_gpu == before.per_gpu


class OneRankStuck:
    """Rank 1's GPU never drops: its process did not release (the others did)."""

    def __init__(self) -> None:
        self.reads = 0

    async def read(self, pid: int, gpus: tuple[int, ...], base_url: str) -> MemoryReading:
        self.reads += 1
        low = 2 << 30 if self.reads > 1 else 20 << 30
        per = tuple(20 << 30 if g == 1 else low for g in gpus)
        return MemoryReading(sum(per), True, per)


async def test_a_rank_that_did_not_release_fails_the_park_and_is_resumed(client: httpx.AsyncClient) -> None:
    life = Lifecycle(client, OneRankStuck())
    with pytest.raises(EngineError, match="GPU 1 of its group"):
        await life.park(BASE, 1, (0, 1, 2, 3), expected_free_bytes=8 << 30)
    assert (await client.post(BASE + PROBE_PATH, json=PROBE_BODY)).status_code == 200  # resumed


async def test_a_wake_reports_each_phase() -> None:
    app = create_app(SimSettings.from_shape("llama-3.1-8b", speed=0.01))  # the copy takes simulated time
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as c:
            first = (await c.post(BASE + PROBE_PATH, json=PROBE_BODY)).json()["text"]
            life = Lifecycle(c, SimMemoryProbe(c))
            await life.park(BASE, 1, (0,), expected_free_bytes=8 << 30)
            woken = await life.wake(BASE, expected_probe=first)
    assert set(woken.phases) == {"resume_s", "continue_s", "probe_s"}
    assert woken.phases["resume_s"] > 0 and sum(woken.phases.values()) == pytest.approx(woken.seconds, abs=1e-3)
    assert woken.describe().startswith(f"{woken.seconds:.3f} s (resume ")
