"""The metrics scraper: polls ``GET /v1/loads`` of every awake instance every ``period_s`` and
hands each answer, as a ``LoadSample``, to its sinks (the control loop's ``post`` and the
proxy's admission gate).

Why ``/v1/loads``: SGLang serves it from a shared-memory snapshot that is always on and fresh,
while ``/metrics`` needs ``--enable-metrics`` and its gauges lag seconds. Period
250 ms: the admission gate admits on KV room from these samples, so a stale one delays a request
by at most one period; a scrape of a loopback engine takes ~1 ms, so 4 per second per instance
is noise next to serving.

Token rate: each sample carries the tokens the instance processed since its previous sample =
the growth of SGLang's cumulative counters ``total_prefill_uncached_tokens`` (prompt tokens) and
``decode_moments[5]`` (generated tokens); a server without the latter is counted by
``gen_throughput`` (tokens/s) x the seconds between the two scrapes. The first sample of an
instance (awake again after a park, too) is only the baseline: its history, including the
readiness probe the supervisor sends, is not demand now. A counter that went down (a restart)
counts from zero.

Who calls: app.py runs ``run()`` as one task in mode ``full`` (cancelled at shutdown). The set of
instances to poll is read each round from ``targets()`` (read-only views: polling gates no
mutation). Failures are logged once per failure streak and produce no sample.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from orchestrator.kv.demand import LoadsError, parse_loads
from orchestrator.sglang.api import LOADS
from orchestrator.types import InstanceState, InstanceView, LoadSample

log = logging.getLogger("chimera.scrape")

PERIOD_S = 0.25
TIMEOUT_S = 1.0  # a loopback engine answers in ~1 ms; longer means it is stuck or gone


@dataclass(frozen=True)
class _Seen:
    at: float
    prefill_total: int | None
    generated_total: float | None


def sample_from_loads(instance_id: str, body: Any, at: float, previous: _Seen | None
                      ) -> tuple[LoadSample, _Seen]:
    """One ``/v1/loads`` answer -> a sample (and what to remember for the next one). Raises
    LoadsError for a body that is not SGLang's shape."""
    load = parse_loads(body)
    ranks = body["loads"]
    prefill = _sum_optional(ranks, "total_prefill_uncached_tokens")
    generated = _generated(ranks)
    max_running = _sum_optional(ranks, "max_running_requests")
    tokens = 0.0
    if previous is not None:
        if prefill is not None and previous.prefill_total is not None:
            tokens += _growth(prefill, previous.prefill_total)
        if generated is not None:  # None before the first decode step: 0 so far
            tokens += _growth(generated, previous.generated_total or 0.0)
        else:
            tokens += load.token_rate * max(0.0, at - previous.at)
    sample = LoadSample(instance_id, at, load.running, load.waiting, load.waiting_tokens,
                        load.used_tokens, load.capacity_tokens, max_running, tokens)
    return sample, _Seen(at, prefill, generated)


def _growth(now: float, before: float) -> float:
    return now - before if now >= before else now  # a counter that went down restarted


def _generated(ranks: list[Any]) -> float | None:
    """Generated tokens so far (``decode_moments[5]``, summed over ranks), None if unreported."""
    total = 0.0
    for snap in ranks:
        moments = snap.get("decode_moments")
        if not (isinstance(moments, list) and len(moments) >= 6
                and isinstance(moments[5], (int, float)) and not isinstance(moments[5], bool)):
            return None
        total += float(moments[5])
    return total


def _sum_optional(ranks: list[Any], key: str) -> int | None:
    """Sum of an integer field over the ranks; None when a rank lacks it (older servers)."""
    total = 0
    for snap in ranks:
        v = snap.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            return None
        total += v
    return total


class Scraper:
    def __init__(self, targets: Callable[[], Iterable[InstanceView]],
                 sinks: Sequence[Callable[[LoadSample], None]],
                 client: httpx.AsyncClient | None = None, period_s: float = PERIOD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.targets = targets
        self.sinks = tuple(sinks)
        self.period_s = period_s
        self.clock = clock
        self._client = client
        self._seen: dict[str, _Seen] = {}
        self._failing: set[str] = set()  # instances whose last scrape failed (logged once)

    async def run(self) -> None:
        """Until cancelled. Owns an httpx client unless one was given."""
        if self._client is not None:
            await self._loop(self._client)
            return
        async with httpx.AsyncClient(trust_env=False, timeout=TIMEOUT_S) as client:
            await self._loop(client)

    async def _loop(self, client: httpx.AsyncClient) -> None:
        while True:
            await self.scrape_once(client)
            await asyncio.sleep(self.period_s)

    async def scrape_once(self, client: httpx.AsyncClient) -> list[LoadSample]:
        """Poll every awake instance once, concurrently; hand each sample to every sink."""
        views = [v for v in self.targets() if v.state is InstanceState.AWAKE and v.base_url]
        for gone in set(self._seen) - {v.id for v in views}:
            del self._seen[gone]  # parked or stopped: its counters start over when it is back
        got = await asyncio.gather(*(self._one(client, v) for v in views))
        samples = [s for s in got if s is not None]
        for s in samples:
            for sink in self.sinks:
                sink(s)
        return samples

    async def _one(self, client: httpx.AsyncClient, view: InstanceView) -> LoadSample | None:
        at = self.clock()
        try:
            r = await client.get(f"{view.base_url}{LOADS.path}", params={"include": "core"},
                                 timeout=TIMEOUT_S)
            r.raise_for_status()
            sample, seen = sample_from_loads(view.id, r.json(), at, self._seen.get(view.id))
        except (httpx.HTTPError, ValueError, LoadsError) as exc:
            if view.id not in self._failing:
                self._failing.add(view.id)
                log.warning("scrape: %s %s failed (logged once until it answers again): %r",
                            view.id, LOADS.path, exc)
            return None
        if view.id in self._failing:
            self._failing.discard(view.id)
            log.info("scrape: %s %s answers again", view.id, LOADS.path)
        self._seen[view.id] = seen
        return sample
