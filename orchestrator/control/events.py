"""Events posted to the control loop. Slow work (starting, parking, waking a process) runs
elsewhere and reports back with one of these; the loop is the only reader."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from orchestrator.config import ModelSpec
from orchestrator.control.api import Endpoint


@dataclass(frozen=True)
class Started:
    instance_id: str
    endpoint: Endpoint
    seconds: float = 0.0  # spawn to ready


@dataclass(frozen=True)
class StartFailed:
    instance_id: str
    error: str


@dataclass(frozen=True)
class Exited:
    instance_id: str
    returncode: int | None


@dataclass(frozen=True)
class Parked:
    instance_id: str
    seconds: float
    freed_bytes: int  # verified: GPU memory of the instance before minus after


@dataclass(frozen=True)
class ParkFailed:
    instance_id: str
    error: str  # the instance was resumed and serves again


@dataclass(frozen=True)
class Woken:
    instance_id: str
    seconds: float  # resume + continue + probe


@dataclass(frozen=True)
class WakeFailed:
    instance_id: str
    error: str


@dataclass(frozen=True)
class Acquire:
    model: ModelSpec
    future: asyncio.Future[Endpoint]


@dataclass(frozen=True)
class Release:
    instance_id: str


@dataclass(frozen=True)
class AdminAction:
    """Park or wake one instance on an operator's request; the future gets a short report."""

    instance_id: str
    action: str  # park | wake
    future: asyncio.Future[str]


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class LoadSample:
    """One scrape of an instance's ``GET /v1/loads`` (control/scrape.py), summed over its DP
    ranks. The loop turns these into per-model demand (token rate, concurrency, KV in use); the
    proxy's admission gate reads the same samples for KV room."""

    instance_id: str
    at: float  # time.monotonic() when the scrape was sent
    running: int
    waiting: int
    waiting_tokens: int  # prompt tokens queued in the engine, not yet prefilled
    used_tokens: int  # KV token slots in use
    capacity_tokens: int  # KV pool size in tokens (under the shim: its limit shows as used)
    max_running: int | None  # the engine's max running requests (None: not reported)
    tokens: float  # prompt + generated tokens processed since the instance's previous sample


Event = (Started | StartFailed | Exited | Parked | ParkFailed | Woken | WakeFailed | Acquire
         | Release | AdminAction | Tick | LoadSample)
