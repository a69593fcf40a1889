"""The sim's cumem_shim: the real shim's control channel (same environment variables, same
JSON-lines protocol on a Unix socket) over the real page bookkeeping (``ElasticKV``) on a fake
device, so the orchestrator's KV ledger runs end to end in CI.

Active only when CHIMERA_SHIM_SOCKET is set (read through ``cumem_shim.settings``, as in a real
server). Then the batcher admits by the shim's current limit instead of the whole pool, as
SGLang does when the shim lowers ``available_size``: requests that do not fit wait, running
ones are never cut. The pool's virtual size stays the plan's (``max_total_num_tokens``).

Model of the pages: the bookkeeping follows the batcher's tokens in KV with a counting free
list that compacts perfectly (the real shim's pool fragments; the sim's never does), synced
before each admission and each channel call. Everything runs on the app's event loop.

SGLang's prefix cache: a finished request's tokens stay in the radix tree (allocated, so in the
shim's ``used_tokens``) until SGLang needs the room, and SGLang reports them as evictable, not
used (``num_used_tokens = max_total - available - evictable``). The sim keeps a count of such
cached tokens: freed tokens join it, it is evicted down to what the limit leaves beside the
tokens in KV, and ``/flush_cache`` on an idle server empties it. No request ever hits it (the
sim matches no prefixes): it only holds pages, as it does under a trace of unrelated prompts.

TP > 1 (CHIMERA_SHIM_TP_SIZE): one channel per rank at ``rank_socket(path, r)``, as a real
server's scheduler processes serve; the sim's ranks are equal shards of one pool (its
bookkeeping is per GPU), so every rank answers the same status and ranks > 0 refuse
``set_limit`` like the real shim's followers (cumem_shim/ranks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable

from cumem_shim import protocol
from cumem_shim import settings as shim_settings
from cumem_shim.channel import claim_socket_path
from cumem_shim.elastic import ElasticKV
from cumem_shim.fake import TWO_MIB, FakeDevice
from cumem_shim.freelist import CountingFreeList
from cumem_shim.limit import Accepted
from cumem_shim.maptrace import MapTrace
from cumem_shim.pages import mha_layout
from cumem_shim.ranks import Follower
from cumem_shim.types import Status
from simsglang.batcher import Batcher, SimRequest
from simsglang.server import SimServer


class ElasticBatcher(Batcher):
    """A Batcher whose admission is capped by ``limit_tokens()`` (the shim's limit)."""

    limit_tokens: Callable[[], int] | None = None

    def _admit(self) -> list[SimRequest]:
        if self.limit_tokens is None:
            return super()._admit()
        whole = self.capacity
        self.capacity = min(whole, self.limit_tokens())
        try:
            return super()._admit()
        finally:
            self.capacity = whole

    flush_hook: Callable[[], None] | None = None

    def held_back_tokens(self) -> int:
        if self.limit_tokens is None:
            return 0
        return max(0, self.capacity - self.limit_tokens())

    def flush_prefix_cache(self) -> None:
        if self.flush_hook is not None:
            self.flush_hook()

    def wake(self) -> None:
        self._wake.set()  # the limit grew: waiting requests may fit now


class SimShim:
    """``protocol.Target`` for one sim server."""

    def __init__(
        self,
        sim: SimServer,
        batcher: ElasticBatcher,
        limit_bytes: int,
        slack_tokens: int,
        trace: MapTrace | None = None,
    ) -> None:
        s, plan = sim.settings.shape, sim.plan
        self.layout = mha_layout(
            granularity=TWO_MIB,
            page_size=1,
            size=plan.kv_capacity_tokens,
            layers=s.num_layers,
            heads=max(1, s.num_kv_heads // sim.settings.tp_size),
            head_dim=s.head_dim,
            dtype_bytes=s.dtype_bytes,
        )
        self.device = FakeDevice(capacity_bytes=plan.gpu_bytes)
        # maps on demand only (no map-ahead worker, so no idle fill: one thread); the map
        # trace is the real shim's (CHIMERA_SHIM_MAP_TRACE)
        self.kv = ElasticKV(self.layout, self.device, 0, limit_bytes, slack_tokens=slack_tokens, trace=trace)
        self.free = CountingFreeList(self.layout)
        self.kv.attach(self.free)
        self.batcher = batcher
        batcher.limit_tokens = self.limit_tokens
        batcher.flush_hook = self.flush
        self.cached = 0  # tokens of finished requests SGLang's prefix cache still holds
        self._in_kv = 0  # the batcher's tokens in KV at the last sync

    def flush(self) -> None:
        """``/flush_cache`` on an idle server: the prefix cache is emptied."""
        self.cached = 0
        self.sync()

    def sync(self) -> None:
        """Make the bookkeeping hold as many tokens as the batcher has in KV plus the prefix
        cache, then apply the limit (unmapping freed blocks above it). Tokens that left KV since
        the last sync join the cache (net of growth in between: a lower bound); the cache is
        evicted down to what the limit leaves beside the tokens in KV, as SGLang evicts when it
        allocates (and, while a shrink drains, the shim's excess with it)."""
        in_kv = min(self.batcher.snapshot().used_tokens, self.layout.capacity_units)
        self.kv.maintain()  # the limit in force
        room = max(0, self.kv.status().limit_tokens - in_kv)
        self.cached = min(self.cached + max(0, self._in_kv - in_kv), room)
        self._in_kv = in_kv
        want = min(in_kv + self.cached, self.layout.capacity_units)
        have = self.free.used_units()
        if want > have:
            self.kv.ensure(want - have)
            self.free.alloc(want - have)
        elif want < have:
            self.free.release_any(have - want)
        self.kv.available()

    def limit_tokens(self) -> int:
        self.sync()
        return self.kv.available() + self.kv.used_units()

    # -- protocol.Target -------------------------------------------------------------------
    def set_limit(self, limit_bytes: int, revision: int) -> Accepted:
        acc = self.kv.set_limit(limit_bytes, revision)
        self.sync()
        self.batcher.wake()
        return acc

    def status(self) -> Status:
        self.sync()
        return self.kv.status()


@contextlib.asynccontextmanager
async def mounted(sim: SimServer) -> AsyncIterator[SimShim | None]:
    """For the sim's lifespan, before the batcher task starts: with CHIMERA_SHIM_SOCKET set,
    swap in an ``ElasticBatcher`` and serve the channel; otherwise do nothing."""
    if not shim_settings.requested():
        yield None
        return
    cfg = shim_settings.read()  # ShimConfigError: the sim fails to start, like a real server
    old = sim.batcher
    batcher = ElasticBatcher(old.model, sim.plan, old.clock, old.on_queue_time)
    batcher.max_loras_per_batch = old.max_loras_per_batch
    sim.batcher = batcher
    trace = MapTrace(cfg.map_trace) if cfg.map_trace else None  # one pool for every rank: rank 0's file
    shim = SimShim(sim, batcher, cfg.limit_bytes, cfg.slack_tokens, trace)
    sim.memory.shim_kv_bytes = lambda: shim.kv.status().mapped_bytes

    def serving(target: protocol.Target) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := await reader.readline():
                    if line.strip():
                        writer.write(protocol.handle(line, target))
                        await writer.drain()
            except (ConnectionError, ValueError):
                pass  # the client went away or sent an over-long line: drop the connection
            finally:
                writer.close()

        return serve

    paths = shim_settings.rank_sockets(cfg.socket, cfg.tp_size)
    servers = [
        await asyncio.start_unix_server(
            serving(shim if r == 0 else _SimFollower(shim, r, cfg.socket)),
            claim_socket_path(path),
            limit=protocol.MAX_LINE_BYTES,
        )
        for r, path in enumerate(paths)
    ]
    try:
        yield shim
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


class _SimFollower(Follower):
    """Rank ``r`` > 0 of the sim: the shared pool's status (synced first), no set_limit."""

    def __init__(self, shim: SimShim, rank: int, leader_socket: str) -> None:
        super().__init__(shim.kv, rank, leader_socket)
        self.shim = shim

    def status(self) -> Status:
        return self.shim.status()
