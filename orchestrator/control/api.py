"""What the proxy may ask of the control loop. The proxy never reads instance state to decide
something itself ("a read that gates a mutation is a bug"): it asks the owner with ``acquire``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from orchestrator.config import ModelSpec


class InstanceState(StrEnum):
    """Lifecycle of one engine instance (transitions are owned by control/instance.py)."""

    PENDING = "pending"  # waiting for its turn to start (colocated starts are serialized)
    STARTING = "starting"
    AWAKE = "awake"
    PARKING = "parking"
    PARKED = "parked"
    WAKING = "waking"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Endpoint:
    """Where to send one request: an awake instance of the model."""

    instance_id: str
    base_url: str  # http://127.0.0.1:PORT
    served_name: str  # rewrite the request's `model` to this


@dataclass(frozen=True)
class InstanceView:
    id: str
    model: str
    gpus: tuple[int, ...]
    state: InstanceState
    base_url: str | None
    error: str | None = None


@dataclass(frozen=True)
class ModelView:
    spec: ModelSpec
    state: InstanceState  # the best state among its instances (awake > waking > ...)
    instances: tuple[InstanceView, ...]


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
