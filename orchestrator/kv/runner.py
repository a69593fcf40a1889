"""The task that runs the KV ledger: every second (or at once after ``poke()``, e.g. when an
instance wakes, parks or its queue jumps; every ``REGROW_S`` while a grow or a wake waits for a
neighbour's pages to free) it observes every instance — its latest ``/v1/loads``
sample and the shim's ``status`` — asks the ledger for actions and performs them (``set_limit``
over the shim channel, ``POST /flush_cache``). Runs only in the ``elastic`` and ``full`` modes
(``deployment.ledger_enabled``). Side effects go through ``KVEffects`` (tests use a fake).

Loads come from the scraper (control/scrape.py, the one poller of ``/v1/loads``): ``observe`` is
its sink and keeps the latest sample per instance. A sample older than ``max_sample_age_s`` (two
scrape rounds) counts as missing, as a failed GET did when the runner polled by itself: the
ledger leaves that instance's limit alone this round. The first sample after none (an instance
just woke or started) pokes a re-split at once. The shim's status is read here, over the shim
channel: that is not SGLang. So is, every ``FOOTPRINT_EVERY_S`` for each awake instance and
right after its status, what its processes hold on its GPUs (the supervisor's memory probe:
NVML per process; the sim's ``/server_info``): the ledger counts what a server really holds
beside its KV instead of the cost model's estimate (ledger.py ``Ledger.peaks``).

It owns the ledger: nothing else mutates it. Instances come from a callable the control loop
provides (``instances()``), read once per step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import httpx

from cumem_shim.types import Status
from orchestrator.kv.client import GroupClient, LimitReply, ShimProtocolError, ShimUnavailable
from orchestrator.kv.demand import active_tokens
from orchestrator.kv.ledger import Action, FlushCache, Footprint, KVInstance, Ledger, Observation
from orchestrator.kv.room import Room
from orchestrator.sglang.api import FLUSH_CACHE
from orchestrator.types import LoadSample

log = logging.getLogger("chimera.kv")
PERIOD_S = 1.0
# while the ledger holds a grow back for a neighbour's pages to free (Ledger.deferred), or a
# wake waits for room (Ledger.waking), the next step comes after one scrape round
# (control/scrape.py ROUND_S) instead of a period: a burst held in the admission gate waits for
# its KV, and its TTFT SLO may be 1 s
REGROW_S = 0.25
MAX_SAMPLE_AGE_S = 2.5  # two scrape rounds (control/scrape.py ROUND_S); app.py passes it
# An awake instance's footprint is read this often: it grows only with the allocator's reserve
# (the ledger keeps the peak), and one NVML read costs a few ms of a thread.
FOOTPRINT_EVERY_S = 5.0
LOG_GROWTH_BYTES = 256 << 20  # a footprint is logged when first read and when it grows this much


class MemoryReading(Protocol):
    """What the supervisor's memory probe reads (supervisor/memory.py, which this package does
    not import): the instance's bytes per GPU, and whether they are its processes' own."""

    @property
    def per_process(self) -> bool: ...

    @property
    def per_gpu(self) -> tuple[int, ...]: ...


class MemoryProbe(Protocol):
    async def read(self, pid: int, gpus: tuple[int, ...], base_url: str) -> MemoryReading: ...


class KVEffects(Protocol):
    async def status(self, inst: KVInstance) -> Status | None:
        """The shim's status, None when it does not answer (or the instance has none)."""
        ...

    async def set_limit(self, iid: str, limit_bytes: int, revision: int) -> LimitReply: ...

    async def flush_cache(self, iid: str) -> None: ...

    async def footprint(self, inst: KVInstance) -> tuple[Footprint, ...]:
        """What the instance's processes hold on each of its GPUs, KV included; none where it
        cannot be told (no per-process reading, no process known)."""
        ...


@dataclass(frozen=True)
class KVEndpoint:
    base_url: str  # the instance's HTTP server, e.g. http://127.0.0.1:30001
    socket: str  # its CHIMERA_SHIM_SOCKET (rank 0's channel)
    tp_size: int = 1  # ranks whose channels answer status (cumem_shim.settings.rank_socket)
    pid: int | None = None  # its process group's leader (the memory probe's key)
    gpus: tuple[int, ...] = ()  # its GPUs, in its group's order


class HttpKVEffects:
    """The real effects: ``ShimClient`` for the shim channel, httpx for SGLang's flush route,
    the supervisor's memory probe for footprints."""

    def __init__(
        self, http: httpx.AsyncClient, endpoints: Mapping[str, KVEndpoint], probe: MemoryProbe | None = None
    ) -> None:
        self.http, self.endpoints, self.probe = http, endpoints, probe

    async def status(self, inst: KVInstance) -> Status | None:
        ep = self.endpoints.get(inst.id)
        if ep is None:  # no shim (a fixed pool, or not up yet): counted, never resized
            return None
        try:
            return await GroupClient(ep.socket, ep.tp_size).status()
        except (ShimUnavailable, ShimProtocolError) as exc:
            log.warning("kv ledger: %s: %s", inst.id, exc)
            return None

    async def set_limit(self, iid: str, limit_bytes: int, revision: int) -> LimitReply:
        ep = self.endpoints[iid]
        return await GroupClient(ep.socket, ep.tp_size).set_limit(limit_bytes, revision)

    async def flush_cache(self, iid: str) -> None:
        r = await self.http.request(FLUSH_CACHE.method, self.endpoints[iid].base_url + FLUSH_CACHE.path)
        if r.status_code >= 400:  # busy again: SGLang flushes only when idle; retried later
            log.info("kv ledger: %s %s: %s %s", iid, FLUSH_CACHE.path, r.status_code, r.text[:200])

    async def footprint(self, inst: KVInstance) -> tuple[Footprint, ...]:
        ep = self.endpoints.get(inst.id)
        if ep is None or ep.pid is None or self.probe is None:
            return ()
        try:
            reading = await self.probe.read(ep.pid, ep.gpus, ep.base_url)
        except (httpx.HTTPError, OSError, ImportError, KeyError, ValueError) as exc:
            log.info("kv ledger: %s: cannot read its GPU memory: %s", inst.id, exc)
            return ()
        if not reading.per_process or len(reading.per_gpu) != len(ep.gpus):  # others' memory in it
            return ()
        return tuple(Footprint(g, b) for g, b in zip(ep.gpus, reading.per_gpu, strict=True))


class KVRunner:
    def __init__(
        self,
        ledger: Ledger,
        effects: KVEffects,
        instances: Callable[[], Sequence[KVInstance]],
        clock: Callable[[], float] = time.monotonic,
        period_s: float = PERIOD_S,
        report: Callable[[str, Status], None] | None = None,
        report_split: Callable[[str, int, int], None] | None = None,
        max_sample_age_s: float = MAX_SAMPLE_AGE_S,
        regrow_s: float = REGROW_S,
        footprint_every_s: float = FOOTPRINT_EVERY_S,
    ) -> None:
        self.ledger, self.effects, self.instances = ledger, effects, instances
        self.footprint_every_s = footprint_every_s
        self._footprint_at: dict[str, float] = {}  # when each instance's footprint was last read
        self.regrow_s = regrow_s
        self.report = report  # each shim status read (metrics)
        self.report_split = report_split  # each split instance's need and target (metrics)
        self.clock, self.period_s = clock, period_s  # clock: the scraper's (samples' ``at``)
        self.max_sample_age_s = max_sample_age_s
        self._poked = asyncio.Event()
        self._samples: dict[str, LoadSample] = {}  # the latest scraped sample per instance
        self._statuses: dict[str, Status] = {}  # the latest shim status per instance
        # KV tokens of the requests held for each instance before it (mode full: the admission
        # gate's ``held_kv_tokens``, wired by the app); demand the engine cannot show yet
        self.held: Callable[[], Mapping[str, int]] = dict
        self.failures: dict[str, int] = {}  # consecutive failed set_limit calls per instance
        # called after a step that left a waiting wake room for its weights (app.py: a Tick to
        # the control loop, whose plan executor then wakes it at once instead of at its next
        # tick); None: nobody is told
        self.room_freed: Callable[[], None] | None = None

    def observe(self, sample: LoadSample) -> None:
        """The scraper's sink: keep the latest sample (read at the next step). The first one
        after none, or after a stale one, re-splits at once (the instance just became awake)."""
        before = self._samples.get(sample.instance_id)
        self._samples[sample.instance_id] = sample
        if before is None or sample.at - before.at > self.max_sample_age_s:
            self.poke()

    def requests_view(self, sample: LoadSample) -> LoadSample:
        """``sample`` with ``used_tokens`` the tokens its requests hold, for the global
        scheduler's demand (control/demand.py): under the shim SGLang's ``num_used_tokens``
        also counts the slots the limit holds back (an idle 1B then looks like tens of GB in
        use) and its prefix cache; the arithmetic is kv/demand.py's ``active_tokens``, from the
        shim's latest status. Without one (no shim, not read yet): the sample as it is."""
        st = self._statuses.get(sample.instance_id)
        if st is None:
            return sample
        used = active_tokens(sample, st.used_tokens, st.limit_tokens, st.capacity_tokens)
        return replace(sample, used_tokens=used)

    def forget(self, iid: str) -> None:
        """The instance stopped (its process and shim are gone)."""
        self._samples.pop(iid, None)
        self._statuses.pop(iid, None)
        self._footprint_at.pop(iid, None)
        self.ledger.forget(iid)

    def poke(self) -> None:
        """Re-split now (an instance woke, parked, started or its queue jumped)."""
        self._poked.set()

    def room(self, iid: str) -> Room | None:
        """Whether ``iid``'s weights fit beside its neighbours' holdings now (the plan
        executor's wake gate, control/plans.py): the ledger's answer from its last round."""
        return self.ledger.room(iid)

    async def run(self) -> None:
        """Until cancelled (the app's lifespan owns the task)."""
        while True:
            await self.step()
            try:
                soon = self.ledger.deferred or self.ledger.waking
                async with asyncio.timeout(self.regrow_s if soon else self.period_s):
                    await self._poked.wait()
            except TimeoutError:
                pass
            self._poked.clear()

    async def step(self) -> list[Action]:
        insts = list(self.instances())
        statuses = await asyncio.gather(*(self.effects.status(i) for i in insts))
        now = self.clock()
        for inst, st in zip(insts, statuses, strict=True):
            if st is not None:
                self._statuses[inst.id] = st
                if self.report is not None:
                    self.report(inst.id, st)
        footprints = await self._footprints(insts, statuses, now)
        held = self.held()
        seen = {
            i.id: Observation(self._fresh(i.id, now), st, held.get(i.id, 0), footprints.get(i.id, ()))
            for i, st in zip(insts, statuses, strict=True)
        }
        before = dict(self.ledger.peaks)
        actions = self.ledger.plan(insts, seen, now)
        if self.report_split is not None:
            for iid, target in self.ledger.targets.items():
                self.report_split(iid, self.ledger.needs[iid], target)
        for (iid, gpu), peak in self.ledger.peaks.items():
            if peak - before.get((iid, gpu), 0) >= LOG_GROWTH_BYTES:
                awake = next((i.awake_bytes for i in insts if i.id == iid and i.gpu == gpu), 0)
                log.info(
                    "kv ledger: %s holds %.2f GiB beside its KV on GPU %d; counted %.2f GiB awake "
                    "with the activation reserve (cost model: %.2f GiB)",
                    iid,
                    peak / 2**30,
                    gpu,
                    (peak + self.ledger.reserve) / 2**30,
                    awake / 2**30,
                )
        # order does not matter: a grow was sized on memory free while the shrinking
        # instances still hold every page they have mapped (split.phase)
        await asyncio.gather(*(self._do(a) for a in actions))
        if self.room_freed is not None and any(self._fits(iid) for iid in self.ledger.waking):
            self.room_freed()
        return actions

    def _fits(self, iid: str) -> bool:
        room = self.ledger.room(iid)
        return room is not None and room.short_bytes == 0

    async def _footprints(
        self, insts: Sequence[KVInstance], statuses: Sequence[Status | None], now: float
    ) -> dict[str, tuple[Footprint, ...]]:
        """Footprints of the awake instances whose shim answered and whose last reading is
        ``footprint_every_s`` old, read after their status (the ledger subtracts its mapped pages)."""
        due: dict[str, KVInstance] = {}
        for i, st in zip(insts, statuses, strict=True):
            last = self._footprint_at.get(i.id)
            if i.awake and st is not None and (last is None or now - last >= self.footprint_every_s):
                due.setdefault(i.id, i)  # a TP group: one reading covers its GPUs
        read = await asyncio.gather(*(self.effects.footprint(i) for i in due.values()))
        for iid in due:
            self._footprint_at[iid] = now
        return dict(zip(due, read, strict=True))

    def _fresh(self, iid: str, now: float) -> LoadSample | None:
        s = self._samples.get(iid)
        return s if s is not None and now - s.at <= self.max_sample_age_s else None

    async def _do(self, action: Action) -> None:
        if isinstance(action, FlushCache):
            try:
                await self.effects.flush_cache(action.instance)
            except httpx.HTTPError as exc:
                log.warning("kv ledger: %s %s: %r", action.instance, FLUSH_CACHE.path, exc)
            return
        try:
            reply = await self.effects.set_limit(action.instance, action.bytes, action.revision)
        except (ShimUnavailable, ShimProtocolError) as exc:
            n = self.failures[action.instance] = self.failures.get(action.instance, 0) + 1
            log.warning(
                "kv ledger: %s set_limit(%d, rev %d) failed (%d in a row): %s",
                action.instance,
                action.bytes,
                action.revision,
                n,
                exc,
            )
            return
        self.failures.pop(action.instance, None)
        self._statuses[action.instance] = reply.status  # the limit now in force (requests_view)
        self.ledger.accepted(action.instance, reply.accepted_bytes, reply.accepted_revision, reply.status.mapped_bytes)
