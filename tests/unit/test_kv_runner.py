"""The KV ledger's task: against simulated shims (the real bookkeeping on fake devices) and
against the sim engine over HTTP and its Unix socket."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from cumem_shim import settings as shim_settings
from cumem_shim.elastic import ElasticKV
from cumem_shim.fake import TWO_MIB, FakeDevice
from cumem_shim.freelist import CountingFreeList
from cumem_shim.pages import mha_layout
from orchestrator.deployment import ledger_enabled
from orchestrator.kv.client import LimitReply
from orchestrator.kv.demand import Load
from orchestrator.kv.ledger import MARGIN_BYTES, KVInstance, Ledger, Observation, non_kv_bytes
from orchestrator.kv.runner import HttpKVEffects, KVEndpoint, KVRunner
from simsglang.batcher import VirtualClock
from simsglang.server import SimSettings, create_app

GIB = 1 << 30
# Llama-3.1-8B on an H100: 1024-token blocks of 128 MiB, 500k-token virtual pool
LAYOUT = mha_layout(granularity=TWO_MIB, page_size=1, size=500_000, layers=32, heads=8,
                    head_dim=128)
TOKEN = LAYOUT.token_bytes


class SimulatedShim:
    """One instance: the shim's bookkeeping plus a load the test sets."""

    def __init__(self) -> None:
        self.dev = FakeDevice()
        self.kv = ElasticKV(LAYOUT, self.dev, 0, 2 * GIB, slack_tokens=256)
        self.free = CountingFreeList(LAYOUT)
        self.kv.attach(self.free)
        self.waiting_tokens = 0

    def serve(self, tokens: int) -> None:
        """Admit what the limit allows of the queue (SGLang's admission)."""
        n = min(tokens, self.kv.available())
        if n > 0:
            self.kv.ensure(n)
            self.free.alloc(n)
            self.waiting_tokens = max(0, self.waiting_tokens - n)

    def finish(self, tokens: int) -> None:
        self.free.release_any(min(tokens, self.free.used_units()))


class FakeEffects:
    def __init__(self, shims: dict[str, SimulatedShim]) -> None:
        self.shims = shims
        self.flushed: list[str] = []

    async def observe(self, inst: KVInstance) -> Observation:
        s = self.shims[inst.id]
        s.kv.available()
        used = s.kv.used_units()
        load = Load(1 if used else 0, 1 if s.waiting_tokens else 0, s.waiting_tokens, used,
                    LAYOUT.capacity_units, 0.0)
        return Observation(load, s.kv.status())

    async def set_limit(self, iid: str, limit_bytes: int, revision: int) -> LimitReply:
        acc = self.shims[iid].kv.set_limit(limit_bytes, revision)
        self.shims[iid].kv.available()
        return LimitReply(acc.applied, acc.limit_bytes, acc.revision, self.shims[iid].kv.status())

    async def flush_cache(self, iid: str) -> None:
        self.flushed.append(iid)


async def test_memory_moves_to_the_busy_model_without_over_committing() -> None:
    insts = [KVInstance(i, 0, TOKEN, 16 * GIB, 2 * GIB) for i in ("a", "b")]
    shims = {"a": SimulatedShim(), "b": SimulatedShim()}
    capacity = 80 * GIB
    runner = KVRunner(Ledger({0: capacity}), FakeEffects(shims), lambda: insts, clock=lambda: 0.0)
    budget = capacity - non_kv_bytes(insts)[0] - MARGIN_BYTES
    shims["a"].waiting_tokens = 250_000  # a is busy: ~30 GiB of KV wanted
    for _ in range(4):
        await runner.step()
        shims["a"].serve(shims["a"].waiting_tokens)
        assert sum(s.dev.mapped_bytes for s in shims.values()) <= budget
    assert shims["a"].waiting_tokens == 0 and shims["a"].free.used_units() == 250_000
    # b bursts while a still holds its tokens: b gets what is free, a drains as it finishes
    shims["b"].waiting_tokens = 150_000
    for _ in range(12):
        await runner.step()
        shims["b"].serve(shims["b"].waiting_tokens)
        shims["a"].finish(30_000)
        assert sum(s.dev.mapped_bytes for s in shims.values()) <= budget
    assert shims["b"].waiting_tokens == 0
    assert shims["b"].kv.limit_bytes >= 150_000 * TOKEN


async def test_a_failed_set_limit_is_counted_and_retried() -> None:
    class Broken(FakeEffects):
        async def set_limit(self, iid: str, limit_bytes: int, revision: int) -> LimitReply:
            from orchestrator.kv.client import ShimUnavailable

            raise ShimUnavailable("gone")

    insts = [KVInstance("a", 0, TOKEN, 16 * GIB, 2 * GIB)]
    runner = KVRunner(Ledger({0: 80 * GIB}), Broken({"a": SimulatedShim()}), lambda: insts)
    await runner.step()
    await runner.step()
    assert runner.failures == {"a": 2}


def test_modes() -> None:
    assert not ledger_enabled("static")
    assert ledger_enabled("elastic") and ledger_enabled("full")


@pytest.fixture
def sock() -> Iterator[str]:
    d = Path(tempfile.mkdtemp(prefix="kvrun", dir="/tmp"))  # short: sun_path is 108 bytes
    yield str(d / "kv.sock")
    d.rmdir()


@pytest.fixture
async def sim_app(monkeypatch: pytest.MonkeyPatch,
                  sock: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    monkeypatch.setenv(shim_settings.SOCKET, sock)
    monkeypatch.setenv(shim_settings.LIMIT_BYTES, str(GIB))
    monkeypatch.setenv(shim_settings.STRICT_IDLE_CHECK, "0")
    app = create_app(SimSettings.from_shape("llama-3.1-8b", served_name="m"), clock=VirtualClock())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://sim") as client:
            yield client, sock


async def test_runner_drives_the_sim_engine(sim_app: tuple[httpx.AsyncClient, str]) -> None:
    client, sock = sim_app
    inst = KVInstance("m@gpu0", 0, TOKEN, 16 * GIB, 2 * GIB, floor_bytes=4 * GIB)
    effects = HttpKVEffects(client, {inst.id: KVEndpoint("http://sim", sock)})
    seen = await effects.observe(inst)
    assert seen.load is not None and seen.status is not None and seen.status.revision == 0
    runner = KVRunner(Ledger({0: 80 * GIB}), effects, lambda: [inst])
    actions = await runner.step()
    assert actions and runner.failures == {}
    status = (await effects.observe(inst)).status
    assert status is not None and status.revision == 1 and status.limit_bytes >= 4 * GIB
    assert runner.ledger.known[inst.id].limit == status.limit_bytes
