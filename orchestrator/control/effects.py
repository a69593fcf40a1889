"""The side effects the control loop may cause, as a small protocol (tests use a recording
fake). Every method returns at once: slow work runs in tasks owned by the implementation and
reports back as events."""

from __future__ import annotations

from typing import Protocol

from orchestrator.config import InstanceSpec
from orchestrator.types import InstanceView


class Effects(Protocol):
    def start(self, spec: InstanceSpec) -> None:
        """Spawn the instance and post Started or StartFailed (then Exited when it dies)."""
        ...

    def park(self, spec: InstanceSpec, reason: str) -> None:
        """Give the instance's GPU memory back (keep the process); post Parked or ParkFailed.
        Called only when the instance is awake with nothing in flight."""
        ...

    def wake(self, spec: InstanceSpec) -> None:
        """Bring a parked instance back and check it; post Woken or WakeFailed."""
        ...

    def probe(self, spec: InstanceSpec, timeout_s: float) -> None:
        """Ask the instance a cheap question (``GET /model_info``, answered while paused, unlike
        ``/health``) within ``timeout_s``; post Probed."""
        ...

    def kill(self, spec: InstanceSpec, reason: str) -> None:
        """SIGKILL the instance's process group (a hung engine honours nothing gentler); its
        watcher then reports Exited once the group is gone and its memory checked released."""
        ...

    def state_changed(self, view: InstanceView) -> None:
        """Publish a state change (metrics, progress display). Must not block."""
        ...

    def observe(self, kind: str, model: str, value: float, label: str = "") -> None:
        """Publish a measurement (park/wake seconds, freed bytes, held requests). Must not block."""
        ...

    async def stop_all(self) -> None:
        """Stop every process started, and wait until they are gone."""
        ...
