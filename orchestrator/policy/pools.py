"""Which server of a shape pool serves a request for a pooled model: pure, time passed in.

A pool's servers each hold one model's weights at a time. A request for model M goes to a server
that holds M's weights (any model with the same ``model_path``: models may share a checkpoint
under several names), the least loaded one. Otherwise one server is re-targeted to M: among the
servers with no request in flight and no switch under way, the one whose switch costs least,
counting what the switch takes (``/update_weights_from_disk``, after a wake if it is parked)
and what evicting its model will cost again later: the evicted model's decayed popularity times
its own way back (a re-target). A server whose model is more popular than M is not taken from
it while the request has waited less than ``patience_s`` (its model's TTFT objective less a
switch): a cold model waits for a colder server rather than evicting a hot one, unless waiting
longer would make it miss its deadline. If no server may be taken the request waits; if a
server is already being switched to M it waits for that one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from orchestrator.policy.lora import Popularity


@dataclass(frozen=True)
class Slot:
    name: str  # the server's hidden model name
    holds: str | None  # the model_path it holds (None: unknown, e.g. before its start)
    in_flight: int
    switching_to: str | None  # a re-target under way, to this model_path
    parked: bool  # waking first costs its wake


@dataclass(frozen=True)
class Costs:
    retarget_s: float
    wake_s: float


@dataclass(frozen=True)
class Choice:
    action: Literal["route", "retarget", "wait"]
    slot: str | None = None


def decide(
    slots: tuple[Slot, ...],
    want_path: str,
    popularity: Mapping[str, Popularity],  # by model_path
    costs: Costs,
    now: float,
    waited_s: float = 0.0,
    patience_s: float = 0.0,
) -> Choice:
    ready = [s for s in slots if s.holds == want_path and s.switching_to is None]
    if ready:
        best = min(ready, key=lambda s: (s.parked, s.in_flight, s.name))
        return Choice("route", best.name)
    if any(s.switching_to == want_path for s in slots):
        return Choice("wait")

    def pop(path: str | None) -> float:
        return popularity.get(path, Popularity()).now(now) if path is not None else 0.0

    free = [s for s in slots if s.in_flight == 0 and s.switching_to is None]
    if waited_s < patience_s:  # not yet: only servers whose model is no more popular than M
        free = [s for s in free if pop(s.holds) <= pop(want_path)]
    if not free:
        return Choice("wait")

    def cost(s: Slot) -> tuple[float, str]:
        return (costs.retarget_s + (costs.wake_s if s.parked else 0.0) + pop(s.holds) * costs.retarget_s, s.name)

    return Choice("retarget", min(free, key=cost).name)
