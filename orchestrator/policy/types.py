"""Snapshots the control loop hands to policies: plain frozen data, no live objects."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.control.api import InstanceState


@dataclass(frozen=True)
class FootprintView:
    awake_bytes: int = 0  # held on each GPU of the group when awake
    parked_bytes: int = 0  # held on each GPU of the group when parked


@dataclass(frozen=True)
class InstanceSnapshot:
    id: str
    model: str
    gpus: tuple[int, ...]
    state: InstanceState
    start_on_up: bool  # started by `up` (placements `on: true`, or any placement in full mode)
    order: int  # position in the placements file (ties are broken by it)
    in_flight: int = 0  # requests handed to it and not yet finished
    idle_s: float = 0.0  # seconds since its last request ended (or it became awake)
    park_after_s: float = 0.0  # idle threshold; 0 = never park for idleness
    park_when: str = "never"  # needed | always | never
    priority: int = 0
    park_at_start: bool = False  # `on: false` in full mode: park once warmed up
    footprint: FootprintView = field(default_factory=FootprintView)


@dataclass(frozen=True)
class ClusterSnapshot:
    instances: tuple[InstanceSnapshot, ...]
    waiting: dict[str, int]  # model name -> requests held for it
    capacity: dict[int, int] = field(default_factory=dict)  # GPU id -> bytes


@dataclass(frozen=True)
class StartDecision:
    start: tuple[str, ...] = ()  # instance ids to spawn now
    queue: tuple[str, ...] = ()  # instance ids that must start but wait for their GPU's turn
