"""The Router protocol (orchestrator/types.py) faked for the proxy's tests
(test_proxy.py, test_proxy_stream.py): it resolves names and aliases of a few models, hands out
one endpoint per model, counts acquire/release, and has knobs for the failures the proxy must
translate."""

from __future__ import annotations

import asyncio

from orchestrator.config import ModelSpec
from orchestrator.errors import EngineUnavailable
from orchestrator.types import Endpoint, InstanceState, InstanceView, ModelView


class FakeRouter:
    """``models``: the served models (name and aliases resolve). ``acquire`` answers
    ``Endpoint("<model>@gpu0", "http://<model>.engine:30000", "served-<model>")``, or
    ``base_url`` when it is given (a real local server)."""

    def __init__(self, models: tuple[ModelSpec, ...], base_url: str | None = None) -> None:
        self.specs = models
        self.base_url = base_url
        self.states = {m.name: InstanceState.AWAKE for m in models}
        self.errors: dict[str, str] = {}  # model -> its instance's error
        self.acquired: list[Endpoint] = []
        self.timeouts: list[float] = []
        self.released: list[Endpoint] = []
        self.suspects: list[tuple[str, str]] = []  # suspect(): instances whose request timed out
        self.unavailable: EngineUnavailable | None = None  # acquire raises it when set
        self.resolve_error: Exception | None = None  # resolve raises it when set
        self.models_error: Exception | None = None  # models() raises it when set
        self.hold: asyncio.Event | None = None  # acquire waits for it when set
        self.holding = asyncio.Event()  # set once acquire starts waiting
        self.hold_cancelled = False  # acquire was cancelled while waiting

    def resolve(self, name: str) -> ModelSpec | None:
        if self.resolve_error is not None:
            raise self.resolve_error
        return next((m for m in self.specs if name in (m.name, *m.aliases)), None)

    def instances(self) -> list[InstanceView]:
        return []

    def known_names(self) -> list[str]:
        return [n for m in self.specs for n in (m.name, *m.aliases)]

    def models(self) -> list[ModelView]:
        if self.models_error is not None:
            raise self.models_error
        return [
            ModelView(
                m,
                self.states[m.name],
                (InstanceView(f"{m.name}@gpu0", m.name, (0,), self.states[m.name], None, self.errors.get(m.name)),),
            )
            for m in self.specs
        ]

    async def acquire(self, model: ModelSpec, timeout_s: float) -> Endpoint:
        self.timeouts.append(timeout_s)
        if self.unavailable is not None:
            raise self.unavailable
        if self.hold is not None:
            self.holding.set()
            try:
                await self.hold.wait()
            except asyncio.CancelledError:
                self.hold_cancelled = True
                raise
        ep = Endpoint(
            f"{model.name}@gpu0", self.base_url or f"http://{model.name}.engine:30000", f"served-{model.name}"
        )
        self.acquired.append(ep)
        return ep

    def release(self, endpoint: Endpoint) -> None:
        self.released.append(endpoint)

    def suspect(self, instance_id: str, detail: str) -> None:
        self.suspects.append((instance_id, detail))

    @property
    def balanced(self) -> bool:
        """Every endpoint acquired was released, in the same order."""
        return self.acquired == self.released
