"""A recording fake of the control loop's Effects, and helpers to drive the loop in tests."""

from __future__ import annotations

import asyncio

from orchestrator.config import InstanceSpec
from orchestrator.types import Endpoint, InstanceState, InstanceView


class RecordingEffects:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.parked: list[tuple[str, str]] = []
        self.woken: list[str] = []
        self.changes: list[tuple[str, InstanceState]] = []
        self.views: list[InstanceView] = []  # every published view, in order
        self.observed: list[tuple[str, str, float, str]] = []
        self.probed: list[tuple[str, float]] = []
        self.killed: list[tuple[str, str]] = []
        self.stopped = False

    def start(self, spec: InstanceSpec) -> None:
        self.started.append(spec.id)

    def park(self, spec: InstanceSpec, reason: str) -> None:
        self.parked.append((spec.id, reason))

    def wake(self, spec: InstanceSpec) -> None:
        self.woken.append(spec.id)

    def probe(self, spec: InstanceSpec, timeout_s: float) -> None:
        self.probed.append((spec.id, timeout_s))

    def kill(self, spec: InstanceSpec, reason: str) -> None:
        self.killed.append((spec.id, reason))

    def state_changed(self, view: InstanceView) -> None:
        self.changes.append((view.id, view.state))
        self.views.append(view)

    def observe(self, kind: str, model: str, value: float, label: str = "") -> None:
        self.observed.append((kind, model, value, label))

    async def stop_all(self) -> None:
        self.stopped = True


async def settle() -> None:
    """Let posted events and the tasks they wake run (no wall-clock sleeping)."""
    for _ in range(8):
        await asyncio.sleep(0)


def ep(iid: str) -> Endpoint:
    return Endpoint(iid, f"http://{iid}", iid.split("@")[0])


class Clock:
    """A clock the test moves by hand (``clock.t += 5``): policies and the loop take time as
    a callable, never from the wall."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
