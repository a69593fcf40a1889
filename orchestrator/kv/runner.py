"""The task that runs the KV ledger: every second (or at once after ``poke()``, e.g. when an
instance wakes, parks or its queue jumps) it observes every instance — ``GET /v1/loads`` and the
shim's ``status`` — asks the ledger for actions and performs them (``set_limit`` over the shim
channel, ``POST /flush_cache``). Runs only in the ``elastic`` and ``full`` modes
(``kv.wiring.ledger_enabled``). Side effects go through ``KVEffects`` (tests use a fake).

It owns the ledger: nothing else mutates it. Instances come from a callable the control loop
provides (``instances()``), read once per step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from cumem_shim.types import Status
from orchestrator.kv.client import LimitReply, ShimClient, ShimProtocolError, ShimUnavailable
from orchestrator.kv.demand import LoadsError, parse_loads
from orchestrator.kv.ledger import Action, FlushCache, KVInstance, Ledger, Observation

log = logging.getLogger("chimera.kv")
PERIOD_S = 1.0


class KVEffects(Protocol):
    async def observe(self, inst: KVInstance) -> Observation: ...

    async def set_limit(self, iid: str, limit_bytes: int, revision: int) -> LimitReply: ...

    async def flush_cache(self, iid: str) -> None: ...


@dataclass(frozen=True)
class KVEndpoint:
    base_url: str  # the instance's HTTP server, e.g. http://127.0.0.1:30001
    socket: str  # its CHIMERA_SHIM_SOCKET


class HttpKVEffects:
    """The real effects: httpx for SGLang's routes, ``ShimClient`` for the shim channel."""

    def __init__(self, http: httpx.AsyncClient, endpoints: Mapping[str, KVEndpoint]) -> None:
        self.http, self.endpoints = http, endpoints

    async def observe(self, inst: KVInstance) -> Observation:
        ep = self.endpoints.get(inst.id)
        if ep is None:  # no shim (a fixed pool, or not up yet): counted, never resized
            return Observation(None, None)
        load, status = None, None
        try:
            r = await self.http.get(f"{ep.base_url}/v1/loads", params={"include": "core"})
            r.raise_for_status()
            load = parse_loads(r.json())
        except (httpx.HTTPError, ValueError, LoadsError) as exc:
            log.warning("kv ledger: %s /v1/loads: %r", inst.id, exc)
        try:
            status = await ShimClient(ep.socket).status()
        except (ShimUnavailable, ShimProtocolError) as exc:
            log.warning("kv ledger: %s: %s", inst.id, exc)
        return Observation(load, status)

    async def set_limit(self, iid: str, limit_bytes: int, revision: int) -> LimitReply:
        return await ShimClient(self.endpoints[iid].socket).set_limit(limit_bytes, revision)

    async def flush_cache(self, iid: str) -> None:
        r = await self.http.post(f"{self.endpoints[iid].base_url}/flush_cache")
        if r.status_code >= 400:  # busy again: SGLang flushes only when idle; retried later
            log.info("kv ledger: %s /flush_cache: %s %s", iid, r.status_code, r.text[:200])


class KVRunner:
    def __init__(self, ledger: Ledger, effects: KVEffects,
                 instances: Callable[[], Sequence[KVInstance]],
                 clock: Callable[[], float] = time.monotonic, period_s: float = PERIOD_S,
                 report: Callable[[str, Status], None] | None = None) -> None:
        self.ledger, self.effects, self.instances = ledger, effects, instances
        self.report = report  # each shim status read (metrics)
        self.clock, self.period_s = clock, period_s
        self._poked = asyncio.Event()
        self.failures: dict[str, int] = {}  # consecutive failed set_limit calls per instance

    def poke(self) -> None:
        """Re-split now (an instance woke, parked, started or its queue jumped)."""
        self._poked.set()

    async def run(self) -> None:
        """Until cancelled (the app's lifespan owns the task)."""
        while True:
            await self.step()
            try:
                async with asyncio.timeout(self.period_s):
                    await self._poked.wait()
            except TimeoutError:
                pass
            self._poked.clear()

    async def step(self) -> list[Action]:
        insts = list(self.instances())
        seen = await asyncio.gather(*(self.effects.observe(i) for i in insts))
        if self.report is not None:
            for inst, obs in zip(insts, seen, strict=True):
                if obs.status is not None:
                    self.report(inst.id, obs.status)
        actions = self.ledger.plan(insts, {i.id: o for i, o in zip(insts, seen, strict=True)},
                                   self.clock())
        # order does not matter: a grow was sized on memory free while the shrinking
        # instances still hold every page they have mapped (split.phase)
        await asyncio.gather(*(self._do(a) for a in actions))
        return actions

    async def _do(self, action: Action) -> None:
        if isinstance(action, FlushCache):
            try:
                await self.effects.flush_cache(action.instance)
            except httpx.HTTPError as exc:
                log.warning("kv ledger: %s /flush_cache: %r", action.instance, exc)
            return
        try:
            reply = await self.effects.set_limit(action.instance, action.bytes, action.revision)
        except (ShimUnavailable, ShimProtocolError) as exc:
            n = self.failures[action.instance] = self.failures.get(action.instance, 0) + 1
            log.warning("kv ledger: %s set_limit(%d, rev %d) failed (%d in a row): %s",
                        action.instance, action.bytes, action.revision, n, exc)
            return
        self.failures.pop(action.instance, None)
        self.ledger.accepted(action.instance, reply.accepted_bytes, reply.accepted_revision)
