"""The KV ledger's task: against simulated shims (the real bookkeeping on fake devices) fed
scraped samples, and against the sim engine over HTTP and its Unix socket. The runner never polls
/v1/loads itself: the scraper's samples are its loads."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from cumem_shim import settings as shim_settings
from cumem_shim.elastic import ElasticKV
from cumem_shim.fake import TWO_MIB, FakeDevice
from cumem_shim.freelist import CountingFreeList
from cumem_shim.pages import mha_layout
from cumem_shim.types import Status
from orchestrator.control.scrape import Scraper
from orchestrator.deployment import ledger_enabled
from orchestrator.kv.client import LimitReply
from orchestrator.kv.ledger import MARGIN_BYTES, Footprint, KVInstance, Ledger, SetLimit, non_kv_bytes
from orchestrator.kv.runner import HttpKVEffects, KVEndpoint, KVRunner
from orchestrator.types import InstanceState, InstanceView, LoadSample
from simsglang.batcher import VirtualClock
from simsglang.server import SimSettings, create_app
from tests.unit.control_fakes import settle

GIB = 1 << 30
# Llama-3.1-8B on an H100: 1024-token blocks of 128 MiB, 500k-token virtual pool
LAYOUT = mha_layout(granularity=TWO_MIB, page_size=1, size=500_000, layers=32, heads=8, head_dim=128)
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

    def sample(self, iid: str, at: float = 0.0) -> LoadSample:
        """What the scraper would hand the runner now: SGLang's ``num_used_tokens`` under the
        shim is max_total - available - evictable (no prefix cache here), so the slots the limit
        holds back count as used."""
        available = self.kv.available()
        used = self.kv.used_units()
        return LoadSample(
            iid,
            at,
            1 if used else 0,
            1 if self.waiting_tokens else 0,
            self.waiting_tokens,
            LAYOUT.capacity_units - available,
            LAYOUT.capacity_units,
            None,
            0.0,
        )


class FakeEffects:
    """The shims' side of the runner; records every call (there is no HTTP here at all)."""

    def __init__(self, shims: dict[str, SimulatedShim], beside_kv: dict[str, int] | None = None) -> None:
        self.shims = shims
        self.flushed: list[str] = []
        self.calls: list[str] = []
        self.beside_kv = beside_kv or {}  # what each server's processes hold besides KV (none: unread)

    async def status(self, inst: KVInstance) -> Status | None:
        self.calls.append(f"status {inst.id}")
        s = self.shims[inst.id]
        s.kv.available()
        return s.kv.status()

    async def set_limit(self, iid: str, limit_bytes: int, revision: int) -> LimitReply:
        self.calls.append(f"set_limit {iid}")
        acc = self.shims[iid].kv.set_limit(limit_bytes, revision)
        self.shims[iid].kv.available()
        return LimitReply(acc.applied, acc.limit_bytes, acc.revision, self.shims[iid].kv.status())

    async def flush_cache(self, iid: str) -> None:
        self.calls.append(f"flush_cache {iid}")
        self.flushed.append(iid)

    async def footprint(self, inst: KVInstance) -> tuple[Footprint, ...]:
        self.calls.append(f"footprint {inst.id}")
        if inst.id not in self.beside_kv:
            return ()
        return (Footprint(inst.gpu, self.beside_kv[inst.id] + self.shims[inst.id].dev.mapped_bytes),)


async def scraped_step(runner: KVRunner, shims: dict[str, SimulatedShim], at: float = 0.0) -> list[object]:
    """One scrape round (each shim's load to the runner's sink), then one step."""
    for iid, s in shims.items():
        runner.observe(s.sample(iid, at))
    return list(await runner.step())


async def test_measured_footprints_replace_the_cost_model_and_never_over_commit() -> None:
    """Servers that hold less beside their KV than the cost model says: once read, the budget
    counts what they hold (plus the activation reserve), the busy one gets the difference, and
    what is mapped plus what is held beside it stays within the GPU less the margin."""
    model_awake, beside = 16 * GIB, 10 * GIB
    insts = [KVInstance(i, 0, TOKEN, model_awake, 2 * GIB, awake=True) for i in ("a", "b")]
    shims = {"a": SimulatedShim(), "b": SimulatedShim()}
    capacity = 40 * GIB
    ledger = Ledger({0: capacity})
    fx = FakeEffects(shims, {"a": beside, "b": beside})
    runner = KVRunner(ledger, fx, lambda: insts, clock=lambda: 0.0)
    modelled = capacity - non_kv_bytes(insts)[0] - MARGIN_BYTES  # 40 - 32 - 1 = 7 GiB
    shims["a"].waiting_tokens = 100_000  # ~12 GiB of KV wanted: more than the model leaves
    for _ in range(6):
        await scraped_step(runner, shims)
        shims["a"].serve(shims["a"].waiting_tokens)
        mapped = sum(s.dev.mapped_bytes for s in shims.values())
        assert mapped + 2 * (beside + ledger.reserve) + MARGIN_BYTES <= capacity
    assert ledger.measured == {("a", 0): beside + ledger.reserve, ("b", 0): beside + ledger.reserve}
    assert shims["a"].waiting_tokens == 0  # served: it got more than the model's budget
    assert shims["a"].dev.mapped_bytes > modelled
    # read once (the clock has not moved FOOTPRINT_EVERY_S), for awake instances only
    assert fx.calls.count("footprint a") == 1 and fx.calls.count("footprint b") == 1


async def test_footprints_are_read_every_period_only_while_awake_and_forgotten_with_the_process() -> None:
    now = [0.0]
    insts = [KVInstance("a", 0, TOKEN, 16 * GIB, 2 * GIB, awake=False)]  # waking: not read
    shims = {"a": SimulatedShim()}
    ledger = Ledger({0: 80 * GIB})
    fx = FakeEffects(shims, {"a": 9 * GIB})
    runner = KVRunner(ledger, fx, lambda: insts, clock=lambda: now[0], footprint_every_s=5.0)
    await scraped_step(runner, shims, now[0])
    assert "footprint a" not in fx.calls and ledger.measured == {}
    insts[0] = KVInstance("a", 0, TOKEN, 16 * GIB, 2 * GIB, awake=True)
    for t in (1.0, 2.0, 5.0, 6.5):
        now[0] = t
        await scraped_step(runner, shims, t)
    assert fx.calls.count("footprint a") == 2  # at 1.0 and 6.5 (5.0 is 4 s after 1.0)
    fx.beside_kv["a"] = 7 * GIB  # a lower reading does not lower the peak
    now[0] = 12.0
    await scraped_step(runner, shims, 12.0)
    assert ledger.measured == {("a", 0): 9 * GIB + ledger.reserve}
    runner.forget("a")  # the process stopped: a new one is measured anew
    assert ledger.measured == {}


def test_a_measured_instance_counts_its_reading_and_the_others_the_cost_model() -> None:
    insts = [
        KVInstance("a", 0, TOKEN, 16 * GIB, 2 * GIB, awake=True),
        KVInstance("b", 0, TOKEN, 16 * GIB, 2 * GIB, resident=False),  # parked: its context
    ]
    assert non_kv_bytes(insts) == {0: 18 * GIB}
    assert non_kv_bytes(insts, {("a", 0): 11 * GIB}) == {0: 13 * GIB}
    assert non_kv_bytes(insts, {("b", 0): 11 * GIB}) == {0: 18 * GIB}  # parked: never measured


async def test_memory_moves_to_the_busy_model_without_over_committing() -> None:
    insts = [KVInstance(i, 0, TOKEN, 16 * GIB, 2 * GIB) for i in ("a", "b")]
    shims = {"a": SimulatedShim(), "b": SimulatedShim()}
    capacity = 80 * GIB
    split: dict[str, tuple[int, int]] = {}
    runner = KVRunner(
        Ledger({0: capacity}),
        FakeEffects(shims),
        lambda: insts,
        clock=lambda: 0.0,
        report_split=lambda iid, need, target: split.__setitem__(iid, (need, target)),
    )
    budget = capacity - non_kv_bytes(insts)[0] - MARGIN_BYTES
    shims["a"].waiting_tokens = 250_000  # a is busy: ~30 GiB of KV wanted
    await scraped_step(runner, shims)
    assert split["a"][0] >= 250_000 * TOKEN and split["a"][1] > split["b"][1]  # reported each step
    for _ in range(4):
        await scraped_step(runner, shims)
        shims["a"].serve(shims["a"].waiting_tokens)
        assert sum(s.dev.mapped_bytes for s in shims.values()) <= budget
    assert shims["a"].waiting_tokens == 0 and shims["a"].free.used_units() == 250_000
    # b bursts while a still holds its tokens: b gets what is free, a drains as it finishes
    shims["b"].waiting_tokens = 150_000
    for _ in range(12):
        await scraped_step(runner, shims)
        shims["b"].serve(shims["b"].waiting_tokens)
        shims["a"].finish(30_000)
        assert sum(s.dev.mapped_bytes for s in shims.values()) <= budget
    assert shims["b"].waiting_tokens == 0
    assert shims["b"].kv.limit_bytes >= 150_000 * TOKEN
    assert split["b"][1] >= 150_000 * TOKEN
    insts[1] = replace(insts[1], resident=False)  # b parks: its gauges say it needs and gets nothing
    await scraped_step(runner, shims)
    assert split["b"] == (0, 0) and split["a"][1] > 0


async def test_a_failed_set_limit_is_counted_and_retried() -> None:
    class Broken(FakeEffects):
        async def set_limit(self, iid: str, limit_bytes: int, revision: int) -> LimitReply:
            from orchestrator.kv.client import ShimUnavailable

            raise ShimUnavailable("gone")

    insts = [KVInstance("a", 0, TOKEN, 16 * GIB, 2 * GIB)]
    shims = {"a": SimulatedShim()}
    runner = KVRunner(Ledger({0: 80 * GIB}), Broken(shims), lambda: insts, clock=lambda: 0.0)
    await scraped_step(runner, shims)
    await scraped_step(runner, shims)
    assert runner.failures == {"a": 2}


async def test_the_runner_acts_on_scraped_samples_and_fetches_no_load_itself() -> None:
    insts = [KVInstance("a", 0, TOKEN, 16 * GIB, 2 * GIB)]
    shims = {"a": SimulatedShim()}
    effects = FakeEffects(shims)
    runner = KVRunner(Ledger({0: 80 * GIB}), effects, lambda: insts, clock=lambda: 0.0)
    assert await runner.step() == []  # no sample yet: the instance keeps its limit
    assert effects.calls == ["status a"]  # the shim's status is all the runner reads itself
    shims["a"].waiting_tokens = 100_000
    runner.observe(shims["a"].sample("a"))
    actions = await runner.step()
    assert [type(a) for a in actions] == [SetLimit]
    assert isinstance(actions[0], SetLimit) and actions[0].bytes >= 100_000 * TOKEN
    assert effects.calls == ["status a", "status a", "set_limit a"]


async def test_a_stale_sample_counts_as_missing() -> None:
    now = [0.0]
    insts = [KVInstance("a", 0, TOKEN, 16 * GIB, 2 * GIB)]
    shims = {"a": SimulatedShim()}
    runner = KVRunner(
        Ledger({0: 80 * GIB}), FakeEffects(shims), lambda: insts, clock=lambda: now[0], max_sample_age_s=2.5
    )
    shims["a"].waiting_tokens = 100_000
    runner.observe(shims["a"].sample("a", at=0.0))
    now[0] = 2.6  # the scraper stopped answering for this instance
    assert await runner.step() == []
    runner.observe(shims["a"].sample("a", at=2.6))
    assert [type(a) for a in await runner.step()] == [SetLimit]


async def test_a_first_sample_re_splits_at_once() -> None:
    insts = [KVInstance("a", 0, TOKEN, 16 * GIB, 2 * GIB)]
    shims = {"a": SimulatedShim()}
    effects = FakeEffects(shims)
    runner = KVRunner(
        Ledger({0: 80 * GIB}), effects, lambda: insts, clock=lambda: 0.0, period_s=3600.0
    )  # only a poke can start another step
    task = asyncio.create_task(runner.run())
    try:
        await settle()
        assert effects.calls == ["status a"]
        runner.observe(shims["a"].sample("a"))  # e.g. the instance just woke
        await settle()
        assert effects.calls == ["status a", "status a", "set_limit a"]
        runner.observe(shims["a"].sample("a"))  # a later one waits for the period
        await settle()
        assert len(effects.calls) == 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_modes() -> None:
    assert not ledger_enabled("static")
    assert ledger_enabled("elastic") and ledger_enabled("full")


@pytest.fixture
def sock() -> Iterator[str]:
    d = Path(tempfile.mkdtemp(prefix="kvrun", dir="/tmp"))  # short: sun_path is 108 bytes
    yield str(d / "kv.sock")
    d.rmdir()


@pytest.fixture
async def sim_app(monkeypatch: pytest.MonkeyPatch, sock: str) -> AsyncIterator[tuple[httpx.ASGITransport, str]]:
    monkeypatch.setenv(shim_settings.SOCKET, sock)
    monkeypatch.setenv(shim_settings.LIMIT_BYTES, str(GIB))
    monkeypatch.setenv(shim_settings.STRICT_IDLE_CHECK, "0")
    app = create_app(SimSettings.from_shape("llama-3.1-8b", served_name="m"), clock=VirtualClock())
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app=app), sock


async def test_scraper_feeds_the_runner_against_the_sim_engine(sim_app: tuple[httpx.ASGITransport, str]) -> None:
    """The scraper polls /v1/loads; the runner reads the shim and sets the limit, and sends no
    request to the engine's HTTP server itself."""
    transport, sock = sim_app
    inst = KVInstance("m@gpu0", 0, TOKEN, 16 * GIB, 2 * GIB, floor_bytes=4 * GIB)
    runner_requests: list[str] = []

    async def record(request: httpx.Request) -> None:
        runner_requests.append(f"{request.method} {request.url.path}")

    async with (
        httpx.AsyncClient(transport=transport) as scraper_http,
        httpx.AsyncClient(transport=transport, event_hooks={"request": [record]}) as runner_http,
    ):
        effects = HttpKVEffects(runner_http, {inst.id: KVEndpoint("http://sim", sock)})
        first = await effects.status(inst)
        assert first is not None and first.revision == 0
        runner = KVRunner(Ledger({0: 80 * GIB}), effects, lambda: [inst])
        scraper = Scraper(
            lambda: [InstanceView(inst.id, "m", (0,), InstanceState.AWAKE, "http://sim")], [runner.observe]
        )
        assert len(await scraper.scrape_once(scraper_http)) == 1
        actions = await runner.step()
        assert actions and runner.failures == {}
        status = await effects.status(inst)
    assert status is not None and status.revision == 1 and status.limit_bytes >= 4 * GIB
    assert runner.ledger.known[inst.id].limit == status.limit_bytes
    assert runner_requests == []  # an idle engine: no flush either


async def test_a_deferred_grow_is_planned_again_after_a_scrape_round_not_a_period() -> None:
    """b's burst needs memory a still maps: the ledger shrinks a and holds b's grow back; the
    runner steps again after ``regrow_s`` (here 0: at once), with no poke and a period of an
    hour, and stops doing so once nothing is held back."""
    insts = [KVInstance(i, 0, TOKEN, 16 * GIB, 2 * GIB) for i in ("a", "b")]
    shims = {"a": SimulatedShim(), "b": SimulatedShim()}
    ledger = Ledger({0: 80 * GIB})
    runner = KVRunner(ledger, FakeEffects(shims), lambda: insts, clock=lambda: 0.0, period_s=3600.0, regrow_s=0.0)
    budget = 80 * GIB - 2 * 16 * GIB - MARGIN_BYTES
    shims["a"].kv.set_limit(budget - 2 * GIB, 1)
    shims["a"].serve(budget // TOKEN - 2 * GIB // TOKEN - 1024)  # a maps nearly its whole limit
    shims["b"].waiting_tokens = 200_000  # b's burst
    for iid, s in shims.items():
        runner.observe(s.sample(iid))
    steps = 0
    real_step = runner.step

    async def counted() -> list[object]:
        nonlocal steps
        steps += 1
        if steps == 2:  # a's requests finish: its pages free, b's grow can go out
            shims["a"].finish(shims["a"].free.used_units())
        return list(await real_step())

    runner.step = counted  # type: ignore[method-assign]
    task = asyncio.create_task(runner.run())
    try:
        for _ in range(50):
            await settle()
            if steps >= 3 and not ledger.deferred:
                break
        assert steps >= 3 and not ledger.deferred
        assert ledger.known["b"].limit is not None and ledger.known["b"].limit > 10 * GIB
        before = steps
        await settle()
        assert steps == before  # nothing held back: back to the period
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_schedulers_view_counts_the_requests_tokens_not_what_the_limit_holds_back() -> None:
    """SGLang's num_used_tokens under the shim counts the slots the limit holds back as used: an
    idle instance looks nearly full to the global scheduler. Its view (``requests_view``) is
    the tokens the requests hold, from the shim's status the runner read."""
    insts = [KVInstance("a", 0, TOKEN, 16 * GIB, 2 * GIB)]
    shims = {"a": SimulatedShim()}
    runner = KVRunner(Ledger({0: 80 * GIB}), FakeEffects(shims), lambda: insts, clock=lambda: 0.0)
    shims["a"].serve(3_000)
    raw = shims["a"].sample("a")
    assert raw.used_tokens > 100_000  # the virtual pool beyond the limit, as SGLang reports it
    assert runner.requests_view(raw) == raw  # no status read yet: nothing to correct with
    await scraped_step(runner, shims)
    view = runner.requests_view(shims["a"].sample("a"))
    assert view.used_tokens == 3_000 and view.capacity_tokens == raw.capacity_tokens
    runner.forget("a")
    assert runner.requests_view(raw) == raw


async def test_a_step_that_leaves_a_waiting_wake_room_says_so_at_once() -> None:
    """The control loop's plan executor re-checks a waiting wake when told (``room_freed``), not
    only at its next tick: told after the step whose shrink made room, and only then."""
    shims = {"a": SimulatedShim(), "t": SimulatedShim()}
    awake = KVInstance("a", 0, TOKEN, 16 * GIB, 2 * GIB, awake=True)
    parked = KVInstance("t", 0, TOKEN, 16 * GIB, 2 * GIB, resident=False)
    insts = [awake, parked]
    told: list[int] = []
    runner = KVRunner(Ledger({0: 40 * GIB}), FakeEffects(shims), lambda: insts, clock=lambda: 0.0)
    runner.room_freed = lambda: told.append(len(told))
    shims["a"].waiting_tokens = 150_000  # a fills most of the GPU, then its requests end
    for _ in range(3):
        await scraped_step(runner, shims)
        shims["a"].serve(shims["a"].waiting_tokens)
    shims["a"].finish(150_000)
    assert shims["a"].dev.mapped_bytes > 18 * GIB  # its pages stay mapped: t's weights do not fit
    await scraped_step(runner, shims)
    assert told == []  # nobody waits
    insts[1] = replace(parked, holds_weights=True, wake_due=True)
    await scraped_step(runner, shims)  # t's weights count: a shrinks, its free pages unmap
    room = runner.room("t")
    assert room is not None and room.short_bytes == 0
    assert told == [0]
