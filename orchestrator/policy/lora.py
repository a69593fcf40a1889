"""Which LoRA adapters a base model's server keeps loaded: pure, time passed in.

A server holds at most ``limit`` adapters (the base's ``lora.max_loaded``, by default its
``max_loras_per_batch``: every loaded adapter can then run in one batch). A request for an
adapter that is not loaded loads it; when the server is full, the least popular loaded adapter
with no request in flight is unloaded first. Popularity is a request count decayed with a
half-life (``POPULARITY_HALF_LIFE_S``), so an adapter that was busy a minute ago is not kept over
one that is busy now. When every loaded adapter has requests in flight, the request waits for one
to finish (an unload waits for its requests anyway, in SGLang too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

# Requests counted over roughly the last minute: long enough that a steady adapter keeps its
# place between bursts, short enough that yesterday's favourite yields.
POPULARITY_HALF_LIFE_S = 60.0


@dataclass(frozen=True)
class Popularity:
    """A decayed request count as of ``at``."""

    score: float = 0.0
    at: float = 0.0

    def now(self, now: float, half_life_s: float = POPULARITY_HALF_LIFE_S) -> float:
        return self.score * math.exp2(-max(0.0, now - self.at) / half_life_s)

    def bump(self, now: float, half_life_s: float = POPULARITY_HALF_LIFE_S) -> Popularity:
        """One more request at ``now``."""
        return Popularity(self.now(now, half_life_s) + 1.0, now)


@dataclass(frozen=True)
class Loaded:
    in_flight: int
    popularity: Popularity
    loaded_at: float


@dataclass(frozen=True)
class Decision:
    action: Literal["ready", "load", "wait"]
    evict: tuple[str, ...] = ()  # unload these first (action "load")


def decide(
    loaded: Mapping[str, Loaded],
    want: str,
    limit: int,
    now: float,
    half_life_s: float = POPULARITY_HALF_LIFE_S,
) -> Decision:
    """What to do for one request for adapter ``want`` on a server holding ``loaded``."""
    if want in loaded:
        return Decision("ready")
    excess = len(loaded) + 1 - limit
    if excess <= 0:
        return Decision("load")
    idle = [(a.popularity.now(now, half_life_s), a.loaded_at, name) for name, a in loaded.items() if a.in_flight == 0]
    if len(idle) < excess:
        return Decision("wait")
    victims = sorted(idle)[:excess]  # least popular first; of equals, the longest loaded
    return Decision("load", tuple(name for _, _, name in victims))
