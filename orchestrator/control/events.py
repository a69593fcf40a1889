"""Events posted to the control loop. Slow work (starting, parking, waking a process) runs
elsewhere and reports back with one of these; the loop is the only reader."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from orchestrator.config import ModelSpec
from orchestrator.types import Endpoint, LoadSample


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
class Relocated:
    """The instance starts on other GPUs than its placement's (up --ray: its node died and it
    was moved to a live one). ``gpus`` are cluster-wide ids; the loop counts the instance there
    from now on (its view, the KV ledger, the scheduler, the dashboard and metrics)."""

    instance_id: str
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class GpusJoined:
    """A node joined the Ray cluster after ``up`` (up --ray): ``gpu_node`` is the node index of
    every cluster-wide GPU now, the newcomer's GPUs appended after the ones already counted. The
    scheduler counts them from now on; instances move there only through ``Relocated``."""

    gpu_node: tuple[int, ...]


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
    seconds: float  # resume + continue (the output is checked beside the first requests)


@dataclass(frozen=True)
class WakeFailed:
    instance_id: str
    error: str


@dataclass(frozen=True)
class Unresponsive:
    """An awake instance stopped answering: its ``/v1/loads`` scrapes have failed for
    ``stale_s`` (the scraper), or a request to it timed out in the proxy (``stale_s`` None: the
    upstream's limits are longer than the liveness window). The loop probes it before judging."""

    instance_id: str
    stale_s: float | None
    detail: str


@dataclass(frozen=True)
class Responsive:
    """The scraper reached an instance again after reporting it Unresponsive."""

    instance_id: str


@dataclass(frozen=True)
class Probed:
    """The answer to ``Effects.probe``: ``ok`` when ``GET /model_info`` answered 200 in time."""

    instance_id: str
    ok: bool
    detail: str


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


Event = (
    Started
    | StartFailed
    | Relocated
    | GpusJoined
    | Exited
    | Parked
    | ParkFailed
    | Woken
    | WakeFailed
    | Unresponsive
    | Responsive
    | Probed
    | Acquire
    | Release
    | AdminAction
    | Tick
    | LoadSample
)
