"""Shrinks under load (cumem_shim.quarantine and ElasticKV's sweeps) over the fake device, with
a free list that behaves like SGLang's token allocator (alloc from the front, free appends).

The load is a server whose requests live ``LIFE`` steps: each step some arrive (a prompt
allocated in one go, admitted only when the prompt and its whole output fit in ``available()``
beside what the running requests will still need, as SGLang's admission reserves), every
running request decodes one token (one unit allocated), and finished requests free all their
units. Frees append to the list and allocations take from its front, so tokens spread over
every mapped block, and no block ever comes free by chance while the traffic lasts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cumem_shim import stats as stats_mod
from cumem_shim.elastic import ElasticKV
from cumem_shim.fake import TWO_MIB, FakeDevice
from cumem_shim.freelist import CountingFreeList, SlotFreeList
from cumem_shim.pages import KVLayout, mha_layout
from cumem_shim.protocol import status_from_json, status_json
from cumem_shim.quarantine import choose

# 1024-slot blocks of one 2 MiB page a buffer (2 KiB rows, as Llama-3.1-8B), 24 blocks
LAYOUT = mha_layout(granularity=TWO_MIB, page_size=1, size=24 * 1024 - 1, layers=1, heads=8, head_dim=128)
BLOCK, UNITS = LAYOUT.block_bytes, LAYOUT.block_units
LIFE = (12, 30)  # steps a request lives: its output tokens
# A sweep (the GPU sync that finds empty victims) waits for a block's worth of frees: about
# 1024 / (one request of ~230 units a step) = 5 steps at the quiet load below.
SWEEP_LAG = 8


@dataclass
class Request:
    units: list[int]
    left: int  # output tokens still to decode


@dataclass
class Server:
    kv: ElasticKV
    fl: SlotFreeList
    dev: FakeDevice
    rng: random.Random
    running: list[Request] = field(default_factory=list)
    allocations: int = 0  # allocator calls made (none may fail)
    retracted: int = 0  # requests SGLang would retract (recompute later) during a drain
    in_victims: int = 0  # units handed out of a quarantined block within available()

    def alloc(self, n: int) -> list[int]:
        avail = self.kv.available()
        assert n <= avail  # the load never asks past available_size()
        victims = set(self.kv._victims)
        self.kv.ensure(n)  # the allocator hook, then SGLang's own alloc
        out = self.fl.alloc(n)
        assert out is not None, "an allocation failed"
        self.allocations += 1
        self.in_victims += sum(1 for u in out if LAYOUT.block_of(u) in victims)
        self.kv.publish()
        return out

    def step(self, arrivals: int, prompt: tuple[int, int]) -> None:
        for r in [r for r in self.running if r.left == 0]:  # finished: every unit freed
            self.fl.release(r.units)
            self.running.remove(r)
        while self.running and len(self.running) > self.kv.available():  # a drain: retract
            self.fl.release(self.running.pop().units)
            self.retracted += 1
        if self.running:
            decode = self.alloc(len(self.running))
            for r, u in zip(self.running, decode, strict=True):
                r.units.append(u)
                r.left -= 1
        for _ in range(arrivals):
            p, out = self.rng.randint(*prompt), self.rng.randint(*LIFE)
            reserved = sum(r.left for r in self.running)
            if p + out + reserved + len(self.running) + 1 > self.kv.available():
                break  # SGLang's admission: it waits
            self.running.append(Request(self.alloc(p), out))
        self.check()

    def used(self) -> int:
        return sum(len(r.units) for r in self.running)

    def check(self) -> None:
        kv, fl = self.kv, self.fl
        if kv._victims:
            assert kv.available() <= fl.free_units()  # never promises a held slot
        kept = [u for units in fl.held.values() for u in units]
        in_use = [u for r in self.running for u in r.units]
        assert len(set(fl.free) | set(kept) | set(in_use)) == len(fl.free) + len(kept) + len(in_use)
        assert len(fl.free) + len(kept) + len(in_use) == LAYOUT.capacity_of(kv.mapped)  # nothing lost
        assert {LAYOUT.block_of(u) for u in kept} <= kv._victims
        assert kv.used_units() == len(in_use)  # held slots are free, never counted as used
        assert self.dev.physical_bytes == len(kv.mapped) * BLOCK
        kv.publish()
        st = kv.status()
        assert st.used_tokens == len(in_use) and st.mapped_bytes == len(kv.mapped) * BLOCK
        assert st.shrink.held_tokens == len(kept) and st.shrink.victims == len(kv._victims)


def loaded(limit_blocks: int = 12, seed: int = 0, free_list: type[SlotFreeList] = SlotFreeList) -> Server:
    """A server whose traffic mapped about ``limit_blocks`` blocks, then fell to about a third:
    its tokens are spread over every block, none is free."""
    dev = FakeDevice()
    kv = ElasticKV(LAYOUT, dev, 0, limit_blocks * BLOCK, slack_tokens=256)
    fl = free_list(LAYOUT)
    kv.attach(fl)
    srv = Server(kv, fl, dev, random.Random(seed))
    for _ in range(60):
        srv.step(4, (200, 600))  # busy
    for _ in range(40):
        srv.step(1, (100, 300))  # quieter: use falls, spread over the mapped blocks
    return srv


def free_per_block(srv: Server) -> dict[int, int]:
    per = srv.fl.free_per_block()
    return {b: per[b] for b in srv.kv.mapped}


@pytest.mark.parametrize("seed", range(4))
def test_a_busy_server_gives_its_excess_blocks_back_within_a_request_lifetime(seed: int) -> None:
    srv = loaded(seed=seed)
    kv = srv.kv
    mapped = len(kv.mapped)
    assert mapped >= 10 and srv.used() < 5 * UNITS - 512
    assert all(n < LAYOUT.block_capacity(b) for b, n in free_per_block(srv).items())  # none free
    syncs = srv.dev.calls["cuCtxSynchronize"]
    kv.set_limit(5 * BLOCK, 1)  # holds what is in use, not where it lies
    steps = 0
    while len(kv.mapped) > 5:
        srv.step(1, (100, 300))  # the traffic goes on
        steps += 1
        assert steps <= LIFE[1] + SWEEP_LAG, f"still {len(kv.mapped)} blocks mapped after {steps} steps"
    assert not kv.status().draining and srv.running  # under load all along
    assert srv.in_victims == 0  # nothing new landed in a victim
    counts = kv.status().shrink
    assert counts.unmapped == counts.unmapped_under_load == mapped - 5
    assert counts.quarantined == mapped - 5 and counts.victims == 0 and counts.held_tokens == 0
    assert srv.dev.calls["cuCtxSynchronize"] > syncs  # unmapping blocks SGLang used syncs first
    for _ in range(40):  # and it keeps serving within the limit
        srv.step(1, (100, 300))
        assert len(kv.mapped) <= 5 and kv.over_limit_maps == 0


def test_without_quarantine_no_block_would_come_free() -> None:
    """The problem measured on the H200: the same load never frees a whole block by itself."""
    srv = loaded()
    for _ in range(2 * LIFE[1]):
        srv.step(1, (100, 300))
        assert all(n < LAYOUT.block_capacity(b) for b, n in free_per_block(srv).items())


def test_the_limit_rising_mid_drain_gives_the_held_slots_back() -> None:
    srv = loaded()
    kv, fl = srv.kv, srv.fl
    kv.set_limit(4 * BLOCK, 1)
    for _ in range(3):
        srv.step(1, (100, 300))
    assert kv._victims and fl.held_units() > 0
    mapped, free_before = len(kv.mapped), fl.free_units() + fl.held_units()
    kv.set_limit(20 * BLOCK, 2)
    avail = kv.available()
    assert not kv._victims and fl.held_units() == 0 and not fl.held
    assert fl.free_units() == free_before and len(kv.mapped) == mapped  # all back, no unmap
    assert avail == min(kv._target, LAYOUT.capacity_units) - kv.used_units()
    assert kv.status().shrink.released == kv.status().shrink.quarantined - kv.status().shrink.unmapped
    for _ in range(10):
        srv.step(3, (100, 300))  # and SGLang allocates into them again
    assert len(kv.mapped) == mapped  # the returned slots served the load: nothing new mapped


def test_an_allocation_past_available_takes_held_slots_before_new_memory() -> None:
    srv = loaded()
    kv, fl = srv.kv, srv.fl
    kv.set_limit(4 * BLOCK, 1)
    srv.step(1, (100, 300))
    assert kv._victims and fl.held_units() > 0
    mapped, maps = len(kv.mapped), kv.maps
    n = fl.free_units() + 1  # SGLang's last request, past what the list holds
    kv.ensure(n)
    assert fl.alloc(n) is not None
    kv.publish()  # the allocator hook, after SGLang's alloc
    assert len(kv.mapped) == mapped and kv.maps == maps and kv.over_limit_maps == 0
    assert kv.status().shrink.released == 1


def test_a_clear_mid_drain_unmaps_the_victims() -> None:
    srv = loaded()
    kv, fl = srv.kv, srv.fl
    kv.set_limit(4 * BLOCK, 1)
    srv.step(1, (100, 300))
    assert kv._victims
    srv.running = []
    kv.on_clear()  # SGLang's flush_cache: every slot free
    assert len(kv.mapped) == 4 and not kv._victims and fl.held_units() == 0
    srv.check()


def test_the_counting_free_list_drains_the_same_way() -> None:
    """The sim engine's free list: victims are handed out last and held like slots."""
    dev = FakeDevice()
    kv = ElasticKV(LAYOUT, dev, 0, 12 * BLOCK)
    fl = CountingFreeList(LAYOUT)
    kv.attach(fl)
    kv.ensure(11 * UNITS - 1)
    assert fl.alloc(11 * UNITS - 1) is not None and len(kv.mapped) == 11
    for b in range(11):  # every block left partly used
        fl.release([(b, LAYOUT.block_capacity(b) * 3 // 4)])
    kv.set_limit(4 * BLOCK, 1)
    kv.available()
    victims = set(kv._victims)
    assert len(victims) == 7 and fl.held_units() > 0 and fl.last == victims
    n = kv.available()
    kv.ensure(n)  # the allocator hook around SGLang's alloc
    got = fl.alloc(n)
    kv.publish()
    assert got is not None and not {b for b, _ in got} & victims
    for b in victims:
        fl.release([(b, LAYOUT.block_capacity(b) - fl.held[b])])
    kv.available()
    assert len(kv.mapped) == 4 and not kv._victims and fl.held_units() == 0


def test_shrink_counts_cross_the_channel_and_reach_the_log() -> None:
    srv = loaded()
    srv.kv.set_limit(4 * BLOCK, 1)
    srv.step(1, (100, 300))
    st = srv.kv.status()
    assert st.shrink.victims > 0 and status_from_json(status_json(st)) == st
    body = status_json(st)
    del body["shrink"]  # an older shim: zeros
    assert status_from_json(body).shrink.victims == 0
    s = stats_mod.ShrinkStats(victims=3, held_units=100, quarantined=5, unmapped=2, unmapped_under_load=2)
    line = s.log_line(0.0, 1)
    assert line is not None and "3 block(s) quarantined now holding back 100 free token slot(s)" in line
    assert "2 unmapped (2 under load)" in line and s.log_line(1.0, 1) is None
    assert stats_mod.ShrinkStats().log_line(0.0, 1) is None  # nothing before the first shrink


# -- the policy ---------------------------------------------------------------------------
def cap(b: int) -> int:
    return 100


def test_choose_takes_the_emptiest_never_block_zero_and_keeps_room() -> None:
    used = {0: 0, 1: 50, 2: 10, 3: 10, 4: 90}
    assert choose((), used, cap, keep_units=200, max_victims=2) == {2, 3}  # tie: highest first... both
    assert choose((), used, cap, keep_units=200, max_victims=9) == {1, 2, 3}  # two blocks must stay
    assert choose((), used, cap, keep_units=0, max_victims=9) == {1, 2, 3, 4}  # never block 0
    assert choose((), used, cap, keep_units=200, max_victims=1) == {3}  # on a tie the highest


def test_choose_keeps_its_victims_and_gives_back_the_fullest_first() -> None:
    used = {0: 0, 1: 5, 2: 60, 3: 40, 4: 0}
    assert choose({2, 3}, used, cap, keep_units=100, max_victims=2) == {2, 3}  # kept, though 4 is emptier
    assert choose({2, 3}, used, cap, keep_units=100, max_victims=1) == {3}  # the fullest goes back
    assert choose({2, 3}, used, cap, keep_units=400, max_victims=3) == {3}  # the room grew
    assert choose({2, 7}, used, cap, keep_units=100, max_victims=3) == {2, 4, 1}  # 7 unmapped: gone


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(2, 6),
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), min_size=10, max_size=60),
)
def test_random_loads_and_limits_keep_every_invariant(seed: int, limit: int, plan: list[tuple[int, int]]) -> None:
    """Load that changes as it goes, limits that drop and rise: no allocation fails, nothing
    lands in a victim within available(), held slots are never counted as used, and once the
    load ends the pool is back within the limit."""
    srv = loaded(seed=seed)
    revision = 1
    srv.kv.set_limit(limit * BLOCK, revision)
    for arrivals, move in plan:
        if move == 3:
            revision += 1
            srv.kv.set_limit(srv.rng.randint(1, 14) * BLOCK, revision)
        srv.step(arrivals, (50, 400))
    assert srv.in_victims == 0
    while srv.running:
        srv.step(0, (50, 400))
    srv.kv.available()
    assert len(srv.kv.mapped) <= LAYOUT.blocks_for_limit(srv.kv.limit_bytes)
    assert srv.kv.over_limit_maps == 0


@pytest.mark.parametrize("page", [16])
def test_paged_units_drain_too(page: int) -> None:
    lay: KVLayout = mha_layout(
        granularity=TWO_MIB, page_size=page, size=16 * 1024 - page, layers=1, heads=8, head_dim=128
    )
    dev = FakeDevice()
    kv = ElasticKV(lay, dev, 0, 12 * lay.block_bytes)
    fl = SlotFreeList(lay)
    kv.attach(fl)
    kv.ensure(10 * lay.block_units)
    got = fl.alloc(10 * lay.block_units)
    assert got is not None
    rng = random.Random(1)
    rng.shuffle(got)
    fl.release(got[: len(got) * 3 // 4])
    kv.set_limit(4 * lay.block_bytes, 1)
    kv.available()
    assert kv._victims and len(kv.mapped) == 11
    fl.release(got[len(got) * 3 // 4 :])
    kv.ensure(1)  # frees show; the next sweep holds and unmaps
    kv.available()
    assert len(kv.mapped) == 4 and not kv._victims
