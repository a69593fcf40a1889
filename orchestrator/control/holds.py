"""Requests held while their model starts or wakes: bounded FIFO queues per model, owned by the
control loop. Also the measured readiness times that make ``Retry-After`` honest."""

from __future__ import annotations

import asyncio
import math
from collections import deque

from orchestrator.config import HoldLimits
from orchestrator.errors import EngineUnavailable
from orchestrator.perf.cost import COLD_START_S
from orchestrator.types import Endpoint

# Before anything was measured: a sim or warm SGLang wake is well under a second, a cold SGLang
# start what the cost model says (~65 s). The first measurement replaces these.
DEFAULT_WAKE_S = 1.0
DEFAULT_START_S = COLD_START_S
EWMA = 0.3  # weight of the newest measurement


class Holds:
    def __init__(self, limits: HoldLimits) -> None:
        self.limits = limits
        self._queues: dict[str, deque[tuple[asyncio.Future[Endpoint], float]]] = {}
        self._wake_s: dict[str, float] = {}
        self._start_s: dict[str, float] = {}

    def add(self, model: str, fut: asyncio.Future[Endpoint], retry_after_s: float, now: float) -> bool:
        """Queue ``fut`` (held since ``now``); False (and ``fut`` failed with a 503 reason)
        when a bound is hit."""
        q = self._queues.setdefault(model, deque())
        if len(q) >= self.limits.per_model or self.total() >= self.limits.total:
            which = (
                f"{self.limits.per_model} for model {model!r}"
                if len(q) >= self.limits.per_model
                else f"{self.limits.total} in all"
            )
            fut.set_exception(
                EngineUnavailable(
                    f"too many requests waiting for models to wake (limit {which}); retry later",
                    retry_after_s=retry_after_s,
                )
            )
            return False
        q.append((fut, now))
        return True

    def pop_live(self, model: str) -> tuple[asyncio.Future[Endpoint], float] | None:
        """The oldest held request of ``model`` whose client still waits, with the time it was
        held since, or None."""
        q = self._queues.get(model)
        while q:
            fut, since = q.popleft()
            if not fut.done():
                return fut, since
        return None

    def waiting(self) -> dict[str, int]:
        return {m: sum(not f.done() for f, _ in q) for m, q in self._queues.items()}

    def total(self) -> int:
        return sum(self.waiting().values())

    def oldest_wait_s(self, now: float) -> dict[str, float]:
        """Per model, how long its oldest held request (whose client still waits) has waited."""
        out = {}
        for m, q in self._queues.items():
            since = min((t for f, t in q if not f.done()), default=None)
            if since is not None:
                out[m] = now - since
        return out

    def fail(self, model: str | None, error: Exception) -> None:
        """Fail the held requests of one model (or of all models when ``model`` is None)."""
        models = list(self._queues) if model is None else [model]
        for m in models:
            for fut, _ in self._queues.pop(m, deque()):
                if not fut.done():
                    fut.set_exception(error)

    # ---- readiness estimates ----------------------------------------------------------

    def measured(self, model: str, kind: str, seconds: float) -> None:
        table = self._wake_s if kind == "wake" else self._start_s
        old = table.get(model)
        table[model] = seconds if old is None else (1 - EWMA) * old + EWMA * seconds

    def expected(self, model: str, kind: str) -> float:
        if kind == "wake":
            return self._wake_s.get(model, DEFAULT_WAKE_S)
        return self._start_s.get(model, DEFAULT_START_S)


def retry_after(expected_s: float, elapsed_s: float) -> float:
    """Whole seconds until the model should be ready (at least 1)."""
    return float(max(1, math.ceil(expected_s - elapsed_s)))
