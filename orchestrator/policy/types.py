"""Snapshots the control loop hands to policies: plain frozen data, no live objects."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.control.api import InstanceState


@dataclass(frozen=True)
class InstanceSnapshot:
    id: str
    model: str
    gpus: tuple[int, ...]
    state: InstanceState
    start_on_up: bool  # started by `up` (placements `on: true`, or any placement in full mode)
    order: int  # position in the placements file (ties are broken by it)


@dataclass(frozen=True)
class ClusterSnapshot:
    instances: tuple[InstanceSnapshot, ...]
    waiting: dict[str, int]  # model name -> requests held for it


@dataclass(frozen=True)
class StartDecision:
    start: tuple[str, ...] = ()  # instance ids to spawn now
    queue: tuple[str, ...] = ()  # instance ids that must start but wait for their GPU's turn
