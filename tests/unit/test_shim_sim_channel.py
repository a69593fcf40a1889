"""The sim engine's shim: same channel as the real one (driven here by the orchestrator's
ShimClient over a real Unix socket), and the batcher admits by the current limit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from cumem_shim import settings as shim_settings
from orchestrator.kv.client import ShimClient, ShimUnavailable, wait_ready
from orchestrator.supervisor.ports import free_ports
from simsglang.batcher import Batcher, VirtualClock
from simsglang.server import SimServer, SimSettings, create_app
from simsglang.shim_channel import ElasticBatcher

BLOCK = 4 * (2 << 20)  # tiny-llama: 4096-token blocks of four 2 MiB pages
BODY = {"input_ids": [5] * 1500, "sampling_params": {"max_new_tokens": 500, "ignore_eos": True}}


class Rig:
    def __init__(self, client: httpx.AsyncClient, sim: SimServer, clock: VirtualClock, shim: ShimClient) -> None:
        self.client, self.sim, self.clock, self.shim = client, sim, clock, shim

    async def loads(self) -> dict[str, int]:
        body = (await self.client.get("/v1/loads")).json()
        out: dict[str, int] = body["loads"][0]
        return out


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


@pytest.fixture
def sock() -> Iterator[str]:
    d = Path(tempfile.mkdtemp(prefix="simshim", dir="/tmp"))  # short: sun_path is 108 bytes
    yield str(d / "kv.sock")
    assert not (d / "kv.sock").exists()  # the sim removed its socket
    d.rmdir()


@pytest.fixture
async def rig(monkeypatch: pytest.MonkeyPatch, sock: str) -> AsyncIterator[Rig]:
    monkeypatch.setenv(shim_settings.SOCKET, sock)
    monkeypatch.setenv(shim_settings.LIMIT_BYTES, str(BLOCK))
    monkeypatch.setenv(shim_settings.STRICT_IDLE_CHECK, "0")
    clock = VirtualClock(auto=False)
    app = create_app(SimSettings.from_shape("tiny-llama", served_name="tiny"), clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            yield Rig(client, app.state.sim, clock, ShimClient(sock))


async def test_status_over_the_socket(rig: Rig) -> None:
    st = await wait_ready(rig.shim.path, timeout_s=5)
    assert st.mapped_bytes == BLOCK and st.used_tokens == 0 and st.revision == 0
    assert st.limit_tokens == 4095 and st.block_tokens == 4096
    assert isinstance(rig.sim.batcher, ElasticBatcher)


async def test_admission_follows_the_limit_up(rig: Rig) -> None:
    tasks = [asyncio.create_task(rig.client.post("/generate", json=BODY)) for _ in range(3)]
    await settle()
    loads = await rig.loads()
    assert (loads["num_running_reqs"], loads["num_waiting_reqs"]) == (2, 1)  # 2 x 2000 fit
    reply = await rig.shim.set_limit(2 * BLOCK, 1)
    assert reply.applied and reply.accepted_bytes == 2 * BLOCK
    rig.clock.auto = True
    rig.clock.advance(1.0)  # the step in flight ends; the next admission sees the new limit
    await settle()
    assert (await rig.loads())["num_waiting_reqs"] == 0
    for t in tasks:
        assert (await asyncio.wait_for(t, 10)).status_code == 200
    st = await rig.shim.status()
    # the finished requests' tokens stay in SGLang's prefix cache: allocated, not in use
    assert 0 < st.used_tokens <= st.limit_tokens and st.revision == 1
    assert st.mapped_bytes <= 2 * BLOCK
    loads = await rig.loads()
    assert loads["num_used_tokens"] == loads["max_total_num_tokens"] - st.limit_tokens  # evictable: not used
    assert (await rig.client.post("/flush_cache")).status_code == 200  # idle: the cache empties
    assert (await rig.shim.status()).used_tokens == 0


async def test_shrink_below_use_is_deferred_never_cuts_requests(rig: Rig) -> None:
    await rig.shim.set_limit(4 * BLOCK, 1)
    tasks = [asyncio.create_task(rig.client.post("/generate", json=BODY)) for _ in range(6)]
    await settle()
    rig.clock.advance(5.0)  # prefill and some decode steps
    await settle()
    before = await rig.shim.status()
    assert before.used_tokens > 4096 and before.mapped_bytes >= 3 * BLOCK
    reply = await rig.shim.set_limit(0, 2)
    assert reply.status.draining and reply.status.mapped_bytes == before.mapped_bytes
    late = asyncio.create_task(rig.client.post("/generate", json=BODY))
    rig.clock.auto = True
    rig.clock.advance(1.0)
    for t in tasks:  # every running request completes
        assert (await asyncio.wait_for(t, 10)).status_code == 200
    assert (await asyncio.wait_for(late, 10)).status_code == 200  # admitted once room came
    st = await rig.shim.status()
    assert st.mapped_bytes == BLOCK and not st.draining and st.revision == 2


async def test_stale_revision_is_ignored(rig: Rig) -> None:
    assert (await rig.shim.set_limit(3 * BLOCK, 5)).applied
    reply = await rig.shim.set_limit(BLOCK, 4)
    assert not reply.applied and reply.accepted_revision == 5


async def test_without_the_variable_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(shim_settings.SOCKET, raising=False)
    app = create_app(SimSettings.from_shape("tiny-llama"), clock=VirtualClock())
    async with app.router.lifespan_context(app):
        assert type(app.state.sim.batcher) is Batcher
    with pytest.raises(ShimUnavailable, match="does not answer"):
        await ShimClient("/tmp/no-such-chimera.sock", timeout_s=0.5).status()


async def test_the_sim_process_serves_the_channel_from_its_environment(sock: str) -> None:
    (port,) = free_ports(1)
    argv = [sys.executable, "-m", "simsglang", "--model-path", "tiny-llama", "--port", str(port), "--sim-speed", "0"]
    env = {**os.environ, shim_settings.SOCKET: sock, shim_settings.STRICT_IDLE_CHECK: "0"}
    bad = await asyncio.create_subprocess_exec(*argv, env=env, stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(bad.communicate(), 60)
    assert bad.returncode != 0 and shim_settings.LIMIT_BYTES.encode() in err  # refuses to start
    env[shim_settings.LIMIT_BYTES] = str(BLOCK)
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stderr=subprocess.DEVNULL)
    try:
        st = await wait_ready(sock, timeout_s=60, poll_s=0.1)
        assert st.mapped_bytes == BLOCK
        assert (await ShimClient(sock).set_limit(3 * BLOCK, 1)).applied
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def test_resident_kv_is_what_the_shim_maps_whatever_tags_are_released(rig: Rig) -> None:
    """As in SGLang with the shim: the KV pool is not torch_memory_saver's, so its memory is the
    shim's mapped pages (one block at start, not the whole pool) and a release of every tag
    leaves them; the limit decides."""
    ledger = rig.sim.memory
    await wait_ready(rig.shim.path, timeout_s=5)
    assert ledger.snapshot()["kv_cache_bytes"] == BLOCK < ledger.plan.kv_bytes
    ledger.release(None)  # what /release_memory_occupation applies (its delay is simulated)
    assert ledger.resident_bytes() == ledger.plan.context_bytes + BLOCK
