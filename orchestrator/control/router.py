"""What the proxy may ask of the control loop. The proxy never reads instance state to decide
something itself ("a read that gates a mutation is a bug"): it asks the owner with ``acquire``.
"""

from __future__ import annotations

from typing import Protocol

from orchestrator.config import ModelSpec
from orchestrator.types import Endpoint, InstanceView, ModelView


class Router(Protocol):
    """Implemented by the control loop; used by the proxy."""

    def resolve(self, name: str) -> ModelSpec | None:
        """The model a client name (name or alias) refers to, or None."""
        ...

    def known_names(self) -> list[str]:
        """Every name and alias clients may send, in file order."""
        ...

    def models(self) -> list[ModelView]:
        """A snapshot for /v1/models and the dashboard (read-only; never gate a decision on it)."""
        ...

    def instances(self) -> list[InstanceView]:
        """A snapshot of every instance (read-only)."""
        ...

    async def acquire(self, model: ModelSpec, timeout_s: float) -> Endpoint:
        """An awake instance for one request, waiting (holding the request) while one starts or
        wakes. Raises EngineUnavailable (transient, with retry_after_s) on timeout or when every
        instance of the model has failed. Pair with ``release``."""
        ...

    def release(self, endpoint: Endpoint) -> None:
        """The request acquired on ``endpoint`` finished (any outcome)."""
        ...

    def suspect(self, instance_id: str, detail: str) -> None:
        """A request to the instance timed out (no bytes within the upstream's limit): the
        owner checks whether the engine is hung (a probe; then kill and restart)."""
        ...
