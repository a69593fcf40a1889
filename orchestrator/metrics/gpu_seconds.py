"""GPU-seconds per model and state (``chimera_gpu_seconds_total{model,state}``), split by memory
share so that colocated models can be billed: an instance holding X% of a GPU's memory accrues
X% of a GPU-second per second on it, summed over its GPUs (a TP-2 server counts both).

What an instance holds on each GPU (``held_bytes``) is chimera's own account, the same as the
dashboard's memory bars (dashboard/state.py): while it holds its weights (starting, awake,
parking, waking) its context, weights, graphs and activations plus its KV pool (what its
cumem_shim last reported mapped, else its start-up limit; a fixed pool without the shim); parked,
its CUDA context only; otherwise nothing. A share is capped at one GPU.

``accrue`` is pure (time passed in as ``dt_s``); ``GpuSeconds`` owns the clock, the last state
of each instance and its last mapped KV, and adds to the counter on ``advance`` (the app's
1 s tick) and before every change it is told of, so a state is billed for exactly the time it
lasted, to the tick's resolution between changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import Counter

from orchestrator.deployment import InstanceFacts
from orchestrator.types import PROCESS_ON_GPU, WEIGHTS_ON_GPU, InstanceState, InstanceView

HOLDS_WEIGHTS = WEIGHTS_ON_GPU
HOLDS_CONTEXT = PROCESS_ON_GPU


def held_bytes(state: InstanceState, f: InstanceFacts, kv_mapped_bytes: int | None) -> int:
    """What one instance in ``state`` holds on each of its GPUs (module docstring)."""
    if state not in HOLDS_CONTEXT:
        return 0
    if state not in HOLDS_WEIGHTS:
        return f.cost.parked_bytes
    if f.shim:
        kv = f.start_limit_bytes if kv_mapped_bytes is None else kv_mapped_bytes
    else:
        kv = f.fixed_pool_bytes // f.spec.model.tp_size
    return f.cost.held_awake_bytes + kv


@dataclass(frozen=True)
class Holding:
    """One instance's memory over an interval: ``bytes_per_gpu`` on each of ``gpus`` GPUs."""

    model: str
    state: InstanceState
    bytes_per_gpu: int
    gpus: int


def accrue(holdings: Iterable[Holding], dt_s: float, gpu_bytes: int) -> dict[tuple[str, str], float]:
    """GPU-seconds by (model, state) over ``dt_s`` seconds: each holding's share of a GPU
    (``bytes_per_gpu / gpu_bytes``, at most 1) times its GPUs times ``dt_s``. Holdings of no
    memory, and a non-positive ``dt_s`` (a clock that did not move), accrue nothing."""
    out: dict[tuple[str, str], float] = {}
    if dt_s <= 0 or gpu_bytes <= 0:
        return out
    for h in holdings:
        if h.bytes_per_gpu <= 0 or h.gpus <= 0:
            continue
        share = min(1.0, h.bytes_per_gpu / gpu_bytes)
        key = (h.model, h.state.value)
        out[key] = out.get(key, 0.0) + share * h.gpus * dt_s
    return out


class GpuSeconds:
    """The owner of the accrual: fed by the supervisor's state observers (``observe``) and the
    KV runner's shim reports (``kv_mapped``), advanced by the app's tick (``advance``)."""

    def __init__(
        self,
        instances: Mapping[str, InstanceFacts],
        gpu_bytes: int,
        counter: Counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.instances, self.gpu_bytes, self.counter, self.clock = instances, gpu_bytes, counter, clock
        self._state: dict[str, InstanceView] = {}
        self._mapped: dict[str, int] = {}
        self._last = clock()

    def observe(self, view: InstanceView) -> None:
        """A state change: bill the old state up to now, then hold the new one."""
        self.advance()
        self._state[view.id] = view
        if view.state not in HOLDS_WEIGHTS:  # its KV pool is gone; a restart starts afresh
            self._mapped.pop(view.id, None)

    def kv_mapped(self, iid: str, mapped_bytes: int) -> None:
        """What an instance's shim reports mapped, from now on."""
        self.advance()
        self._mapped[iid] = mapped_bytes

    def holdings(self) -> list[Holding]:
        out = []
        for iid, v in self._state.items():
            f = self.instances.get(iid)
            if f is not None:
                out.append(Holding(v.model, v.state, held_bytes(v.state, f, self._mapped.get(iid)), len(v.gpus)))
        return out

    def advance(self) -> None:
        now = self.clock()
        dt, self._last = now - self._last, now
        for (model, state), seconds in accrue(self.holdings(), dt, self.gpu_bytes).items():
            self.counter.labels(model, state).inc(seconds)
