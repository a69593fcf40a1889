"""The metrics scraper, the one poller of SGLang's ``GET /v1/loads``: every ``period_s`` it
polls every awake instance and hands each answer, as a ``LoadSample`` (sglang/loads.py reads the
body), to its sinks: the control loop's ``post`` (demand for the global scheduler), the KV
ledger's runner (its observations) and, in mode full, the proxy's admission gate.

Why ``/v1/loads``: SGLang serves it from a shared-memory snapshot that is always on and fresh,
while ``/metrics`` needs ``--enable-metrics`` and its gauges lag seconds. Period 250 ms: the
admission gate admits on KV room from these samples, so a stale one delays a request by at most
one period; a scrape of a loopback engine takes ~1 ms, so 4 per second per instance is noise
next to serving.

Who calls: app.py runs ``run()`` as one task in modes ``elastic`` and ``full`` (cancelled at
shutdown). The set of instances to poll is read each round from ``targets()`` (read-only views:
polling gates no mutation). Failures are logged once per failure streak and produce no sample.

Liveness: the scraper is the first to see an awake engine stop answering. When an instance's
scrapes have failed for ``window_s`` (config ``liveness.window_s``) it posts ``Unresponsive``
to ``liveness`` once per streak, and ``Responsive`` when it answers again; the loop judges
(policy/liveness.py). app.py runs the scraper in every mode for this.

Out-of-band state changes: ``/v1/loads`` answers while SGLang is paused or has released its
memory, so a ``/pause_generation`` or ``/release_memory_occupation`` sent to an engine by
someone else (mostly prevented now: engines need chimera's key, sglang/auth.py) would leave it
awake in chimera's eyes while every request to it waits. Every ``health_every_s`` the scraper
also sends SGLang's ``GET /health`` (a real 1-token generate; it answers 200 as soon as the
scheduler produces any output, so a busy engine passes) to each awake instance; a failure
streak of ``window_s`` is posted as ``Unresponsive`` like a scrape streak, and the loop's probe
(which checks ``/health`` too) then has it killed and restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import httpx

from orchestrator.control.events import Responsive, Unresponsive
from orchestrator.sglang.api import HEALTH, LOADS
from orchestrator.sglang.loads import Counters, LoadsError, sample_from_loads
from orchestrator.types import InstanceState, InstanceView, LoadSample

log = logging.getLogger("chimera.scrape")

PERIOD_S = 0.25
TIMEOUT_S = 1.0  # a loopback engine answers in ~1 ms; longer means it is stuck or gone
# the longest time between two samples of an instance that answers (a round waits for its
# slowest instance): what a sink's "stale" is measured in
ROUND_S = TIMEOUT_S + PERIOD_S
HEALTH_EVERY_S = 2.0  # one 1-token generate per awake engine every 2 s: noise next to serving
HEALTH_TIMEOUT_S = 5.0  # SGLang's own /health gives up after 20 s; a healthy one answers in ms


class Scraper:
    def __init__(
        self,
        targets: Callable[[], Iterable[InstanceView]],
        sinks: Sequence[Callable[[LoadSample], None]],
        client: httpx.AsyncClient | None = None,
        period_s: float = PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
        liveness: Callable[[Unresponsive | Responsive], None] | None = None,
        window_s: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.targets = targets
        self.headers = dict(headers or {})  # the engines' API key (sglang/auth.py)
        self.sinks = tuple(sinks)
        self.period_s = period_s
        self.clock = clock
        self._client = client
        self._seen: dict[str, Counters] = {}
        self._failing: dict[str, float] = {}  # instances whose last scrape failed: since when
        self._reported: set[str] = set()  # ... and were reported Unresponsive (once per streak)
        self.liveness = liveness
        self.window_s = window_s
        self.health_every_s = HEALTH_EVERY_S
        self._unhealthy: dict[str, float] = {}  # instances whose /health failed: since when
        self._health_reported: set[str] = set()

    async def run(self) -> None:
        """Until cancelled. Owns an httpx client unless one was given."""
        if self._client is not None:
            await asyncio.gather(self._loop(self._client), self._health_loop(self._client))
            return
        # plain HTTP to the engines: verify=False skips loading an unused CA bundle (~80 ms)
        async with httpx.AsyncClient(trust_env=False, verify=False, timeout=TIMEOUT_S) as client:
            await asyncio.gather(self._loop(client), self._health_loop(client))

    async def _loop(self, client: httpx.AsyncClient) -> None:
        while True:
            await self.scrape_once(client)
            await asyncio.sleep(self.period_s)

    async def _health_loop(self, client: httpx.AsyncClient) -> None:
        if self.liveness is None:
            return
        while True:
            await self.health_once(client)
            await asyncio.sleep(self.health_every_s)

    async def health_once(self, client: httpx.AsyncClient) -> None:
        """``GET /health`` of every awake instance, concurrently; a failure streak of
        ``window_s`` is reported ``Unresponsive`` once (it ends with the awake state)."""
        views = [v for v in self.targets() if v.state is InstanceState.AWAKE and v.base_url]
        for gone in set(self._unhealthy) - {v.id for v in views}:
            del self._unhealthy[gone]
            self._health_reported.discard(gone)
        await asyncio.gather(*(self._health(client, v) for v in views))

    async def _health(self, client: httpx.AsyncClient, view: InstanceView) -> None:
        at = self.clock()
        try:
            r = await client.get(f"{view.base_url}{HEALTH.path}", headers=self.headers, timeout=HEALTH_TIMEOUT_S)
            why = None if r.status_code == 200 else f"answered {r.status_code}"
        except httpx.HTTPError as exc:
            why = type(exc).__name__
        if why is None:
            self._unhealthy.pop(view.id, None)
            self._health_reported.discard(view.id)
            return
        since = self._unhealthy.setdefault(view.id, at)
        bad_s = self.clock() - since
        if self.liveness is not None and bad_s >= self.window_s and view.id not in self._health_reported:
            self._health_reported.add(view.id)
            detail = (
                f"GET {HEALTH.path} failing for {bad_s:.1f} s ({why}): generation paused or memory "
                "released outside chimera?"
            )
            self.liveness(Unresponsive(view.id, bad_s, detail))

    async def scrape_once(self, client: httpx.AsyncClient) -> list[LoadSample]:
        """Poll every awake instance once, concurrently; hand each sample to every sink."""
        views = [v for v in self.targets() if v.state is InstanceState.AWAKE and v.base_url]
        for gone in set(self._seen) - {v.id for v in views}:
            del self._seen[gone]  # parked or stopped: its counters start over when it is back
        for gone in set(self._failing) - {v.id for v in views}:
            del self._failing[gone]  # a streak ends with the awake state (a restart starts over)
            self._reported.discard(gone)
        got = await asyncio.gather(*(self._one(client, v) for v in views))
        samples = [s for s in got if s is not None]
        for s in samples:
            for sink in self.sinks:
                sink(s)
        return samples

    async def _one(self, client: httpx.AsyncClient, view: InstanceView) -> LoadSample | None:
        at = self.clock()
        try:
            r = await client.get(
                f"{view.base_url}{LOADS.path}", params={"include": "core"}, headers=self.headers, timeout=TIMEOUT_S
            )
            r.raise_for_status()
            sample, seen = sample_from_loads(view.id, r.json(), at, self._seen.get(view.id))
        except (httpx.HTTPError, ValueError, LoadsError) as exc:
            if view.id not in self._failing:
                self._failing[view.id] = at
                log.warning("scrape: %s %s failed (logged once until it answers again): %r", view.id, LOADS.path, exc)
            stale_s = self.clock() - self._failing[view.id]
            if self.liveness is not None and stale_s >= self.window_s and view.id not in self._reported:
                self._reported.add(view.id)
                detail = f"{LOADS.path} unanswered for {stale_s:.1f} s ({type(exc).__name__})"
                self.liveness(Unresponsive(view.id, stale_s, detail))
            return None
        if self._failing.pop(view.id, None) is not None:
            log.info("scrape: %s %s answers again", view.id, LOADS.path)
            if view.id in self._reported and self.liveness is not None:
                self.liveness(Responsive(view.id))
            self._reported.discard(view.id)
        self._seen[view.id] = seen
        return sample
