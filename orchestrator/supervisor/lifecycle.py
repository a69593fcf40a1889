"""Park and wake one stock SGLang server through its own HTTP API (routes: sglang/api.py;
timings: docs/gpu-testing.md).

Park: pause (retract) → wait until /v1/loads shows nothing running or waiting (SGLang asserts
idleness in release and the server dies otherwise) → release memory → verify the instance's GPU
memory dropped (retried once) — a park whose memory did not drop is resumed and reported, never
counted as parked. Wake: resume → continue → the start-up probe again, whose output must equal
the one recorded at first start (catches a "healthy but garbage" wake). The supervisor serves
from the continue on and runs the probe beside the first requests (``resume`` then ``check``:
the probe's ~40-80 ms for an 8B on the H200 is off every wake's critical path); adoption checks
before it serves (``wake``).
Who calls: the supervisor, in a task per operation, off the control loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from orchestrator.errors import EngineError
from orchestrator.sglang.api import (
    CONTINUE_GENERATION,
    LOADS,
    PARK_PAUSE_MODE,
    PAUSE_GENERATION,
    RELEASE_MEMORY,
    RESUME_MEMORY,
    Route,
)
from orchestrator.sglang.loads import LoadsError, parse_loads
from orchestrator.supervisor.memory import MemoryProbe, MemoryReading
from orchestrator.supervisor.process import PROBE_BODY, PROBE_PATH

IDLE_WAIT_S = 10.0  # a parked-for-idleness instance has nothing in flight; this is a safeguard
IDLE_POLL_S = 0.02
# The weights are the bulk of what a park frees; demand at least half of the instance's share
# (GPU memory readings move by a few MiB on their own).
MIN_FREED_FRACTION = 0.5


@dataclass(frozen=True)
class ParkResult:
    seconds: float
    freed_bytes: int
    before: MemoryReading
    after: MemoryReading


@dataclass(frozen=True)
class WakeResult:
    seconds: float
    phases: dict[str, float]  # resume_s (weights copied back), continue_s[, probe_s]

    def describe(self) -> str:
        return f"{self.seconds:.3f} s ({', '.join(f'{k[:-2]} {v:.3f}' for k, v in self.phases.items())})"


class Lifecycle:
    def __init__(self, client: httpx.AsyncClient, probe: MemoryProbe) -> None:
        self.client = client
        self.probe = probe

    async def park(
        self, base_url: str, pid: int, gpus: tuple[int, ...], expected_free_bytes: int, tags: list[str] | None = None
    ) -> ParkResult:
        t0 = time.monotonic()
        before = await self.probe.read(pid, gpus, base_url)
        await self._post(base_url, PAUSE_GENERATION, {"mode": PARK_PAUSE_MODE})
        try:
            await self._wait_idle(base_url)
        except EngineError:
            await self._post(base_url, CONTINUE_GENERATION, {})
            raise
        body: dict[str, object] = {"tags": tags} if tags else {}
        after = before
        # Release, read; read again after a moment (readings can lag a release); release again.
        for step in ("release", "wait", "release"):
            if step == "release":
                await self._post(base_url, RELEASE_MEMORY, body)
            else:
                await asyncio.sleep(0.5)
            after = await self.probe.read(pid, gpus, base_url)
            freed = before.bytes - after.bytes
            short = short_gpus(gpus, before, after, MIN_FREED_FRACTION * expected_free_bytes)
            if freed >= MIN_FREED_FRACTION * expected_free_bytes and not short:
                return ParkResult(time.monotonic() - t0, freed, before, after)
        await self._post(base_url, RESUME_MEMORY, body)
        await self._post(base_url, CONTINUE_GENERATION, {})
        where = f" (GPU {', '.join(map(str, short))} of its group freed less)" if short else ""
        raise EngineError(
            f"release_memory_occupation answered 200 but GPU memory dropped only "
            f"{(before.bytes - after.bytes) / 2**20:.0f} MiB{where} (expected at least "
            f"{MIN_FREED_FRACTION * expected_free_bytes / 2**20:.0f} MiB on each GPU); resumed it"
        )

    async def wake(self, base_url: str, expected_probe: str | None, tags: list[str] | None = None) -> WakeResult:
        """Resume, continue, then the probe: serving only once the output is checked (adoption)."""
        woken = await self.resume(base_url, tags)
        probe_s = await self.check(base_url, expected_probe)
        return WakeResult(woken.seconds + probe_s, woken.phases | {"probe_s": probe_s})

    async def resume(self, base_url: str, tags: list[str] | None = None) -> WakeResult:
        """Memory back (weights copied from host RAM, KV and graph memory mapped) and generation
        continued: the server serves from here. Its output is checked apart (``check``), beside
        the first requests: the supervisor's wake (supervisor.py)."""
        t0 = time.monotonic()
        await self._post(base_url, RESUME_MEMORY, {"tags": tags} if tags else {})
        t1 = time.monotonic()
        await self._post(base_url, CONTINUE_GENERATION, {})
        t2 = time.monotonic()
        return WakeResult(t2 - t0, {"resume_s": t1 - t0, "continue_s": t2 - t1})

    async def check(self, base_url: str, expected_probe: str | None) -> float:
        """The start-up probe again; EngineError unless its output equals the first start's.
        Seconds it took."""
        t0 = time.monotonic()
        r = await self.client.post(base_url + PROBE_PATH, json=PROBE_BODY, timeout=60)
        if r.status_code != 200:
            raise EngineError(f"probe after wake answered {r.status_code}: {r.text[:200]}")
        text = str(r.json().get("text"))
        if expected_probe is not None and text != expected_probe:
            raise EngineError(
                f"output after wake differs from the first start's: {text!r} != "
                f"{expected_probe!r} (weights not restored?)"
            )
        return time.monotonic() - t0

    async def _wait_idle(self, base_url: str) -> None:
        """Poll ``/v1/loads`` (every 20 ms: this wait is on the park's critical path, so not
        the scraper's 250 ms samples, which stop when the instance leaves awake) until the
        paused server has nothing running or waiting."""
        deadline = time.monotonic() + IDLE_WAIT_S
        while True:
            r = await self.client.get(base_url + LOADS.path, timeout=10)
            r.raise_for_status()
            try:
                load = parse_loads(r.json())
            except (LoadsError, ValueError) as exc:  # ValueError: not JSON
                raise EngineError(f"GET {LOADS.path} while parking: {exc}") from exc
            if load.idle:
                return
            if time.monotonic() > deadline:
                raise EngineError(
                    f"not idle after {IDLE_WAIT_S:g} s ({load.running} running, {load.waiting} waiting): park abandoned"
                )
            await asyncio.sleep(IDLE_POLL_S)

    async def _post(self, base_url: str, route: Route, body: Mapping[str, object]) -> None:
        try:
            r = await self.client.request(route.method, base_url + route.path, json=body, timeout=120)
        except httpx.TransportError as exc:
            raise EngineError(f"{route.method} {route.path} failed: {exc!r}") from exc
        if r.status_code != 200:
            raise EngineError(f"{route.method} {route.path} answered {r.status_code}: {r.text[:300]}")


def short_gpus(gpus: tuple[int, ...], before: MemoryReading, after: MemoryReading, least: float) -> list[int]:
    """The GPUs of a group whose memory dropped less than ``least`` bytes (a TP rank whose
    release did not free its shard), where both readings tell GPUs apart; else none."""
    if len(gpus) < 2 or len(before.per_gpu) != len(gpus) or len(after.per_gpu) != len(gpus):
        return []
    return [g for g, b, a in zip(gpus, before.per_gpu, after.per_gpu, strict=True) if b - a < least]
