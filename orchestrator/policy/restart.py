"""When to restart an engine instance that crashed or whose start or wake failed, and when to
give up on it.

Exponential backoff: the n-th failure within the window is retried ``backoff_s * 2**(n-1)``
seconds after it (capped at ``max_backoff_s``); the ``max_failures``-th failure within
``window_s`` gives up (the instance is marked failed with a reason operators can read). Old
failures leave the window, so an engine that crashes once an hour is restarted every time.

Pure: the control loop keeps each instance's failure times (its clock) and calls ``decide``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from orchestrator.config import RestartLimits


@dataclass(frozen=True)
class RestartDecision:
    action: Literal["restart", "give_up"]
    at: float  # restart: when the next attempt is due (the loop's clock); give_up: now
    failures: int  # failures within the window, the latest included
    why: str  # for logs and the instance's error


def recent(failures: Sequence[float], limits: RestartLimits, now: float) -> list[float]:
    """The failure times still within the window (the history the loop keeps)."""
    return [t for t in failures if now - t <= limits.window_s]


def decide(failures: Sequence[float], limits: RestartLimits, now: float) -> RestartDecision:
    """``failures``: the times of the instance's failures, the latest (at ``now``) included."""
    window = recent(failures, limits, now)
    n = max(1, len(window))
    if n >= limits.max_failures:
        return RestartDecision(
            "give_up", now, n, f"gave up after {n} failures within {limits.window_s:g} s (restart.max_failures)"
        )
    delay = min(limits.max_backoff_s, limits.backoff_s * 2 ** (n - 1))
    last = max(window, default=now)
    return RestartDecision("restart", last + delay, n, f"failure {n} of {limits.max_failures}: restart in {delay:g} s")
