"""Events posted to the control loop. Slow work (starting a process) runs elsewhere and
reports back with one of these; the loop is the only reader."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from orchestrator.config import ModelSpec
from orchestrator.control.api import Endpoint


@dataclass(frozen=True)
class Started:
    instance_id: str
    endpoint: Endpoint


@dataclass(frozen=True)
class StartFailed:
    instance_id: str
    error: str


@dataclass(frozen=True)
class Exited:
    instance_id: str
    returncode: int | None


@dataclass(frozen=True)
class Acquire:
    model: ModelSpec
    future: asyncio.Future[Endpoint]


@dataclass(frozen=True)
class Release:
    instance_id: str


@dataclass(frozen=True)
class Tick:
    pass


Event = Started | StartFailed | Exited | Acquire | Release | Tick
