"""The discrete-event loop: a virtual clock, arrivals from a trace, GPU epochs, timers.

A ``Controller`` (systems.py: chimera and the baselines) decides everything; the simulator only
executes: dispatch into a server, park/wake/start with the calibrated durations, and the GPU
rounds of engine.py. Same seed and inputs give the same result: no wall clock, no hash order.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.sim.servers import GpuExec, SimModel, SimReq, SimServer
from bench.traces.request import BenchRequest
from orchestrator.policy.placement.cluster import HOLDS_CONTEXT, RESIDENT, S
from orchestrator.types import GpuSharing

_GPU, _TIMER = 0, 1


class Controller(Protocol):
    name: str

    def on_start(self, sim: Simulator) -> None: ...
    def on_arrival(self, sim: Simulator, req: SimReq) -> None: ...
    def on_complete(self, sim: Simulator, server: SimServer, req: SimReq) -> None: ...


def held_bytes(s: SimServer) -> float:
    """What ``s`` holds on each of its GPUs now: its context while it has a process, and while
    resident its weights, graphs and activations and its KV pages (at least what is in use)."""
    c = s.model.cost
    total = float(c.parked_bytes) if s.state in HOLDS_CONTEXT else 0.0
    if s.state in RESIDENT:
        total += c.awake_bytes + max(s.mapped_tokens(), s.kv_used) * c.kv_bytes_per_token
    return total


@dataclass
class Counters:
    wakes: int = 0
    parks: int = 0
    starts: int = 0
    migrations: int = 0
    decisions: int = 0
    memory_violations: int = 0  # a wake or KV limit that would not fit the GPU (a policy bug)


@dataclass
class Simulator:
    models: dict[str, SimModel]
    n_gpus: int
    gpu_bytes: int
    controller: Controller
    drain_s: float = 300.0
    now: float = 0.0
    gpus: list[GpuExec] = field(default_factory=list)
    servers: dict[str, SimServer] = field(default_factory=dict)
    on_gpu: dict[int, list[SimServer]] = field(default_factory=dict)  # each GPU's servers, as added
    reqs: list[SimReq] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)
    _heap: list[tuple[float, int, int, Any, Any]] = field(default_factory=list)
    _seq: int = 0
    _dirty: set[int] = field(default_factory=set)
    resolved: int = 0  # requests finished or shed
    debug: bool = False
    # how colocated servers' decode steps share a GPU (servers.py; host.gpu_sharing resolved):
    # controllers that place by it read it here (chimera's PlacementParams.sharing)
    sharing: GpuSharing = "timeslice"

    def __post_init__(self) -> None:
        if self.sharing == "mps":
            cals = {m.lat.calibration for m in self.models.values()}
            fitted = sorted(c.name for c in cals if c.colocation == "overlap")
            if fitted:
                raise ValueError(
                    f"sharing 'mps': calibration {', '.join(fitted)} was fitted time-sliced with its own "
                    "colocation model; the simulator models MPS over time-slicing calibrations only "
                    "(use the H100's, or sharing 'timeslice')"
                )
        self.gpus = [GpuExec(g, self.sharing) for g in range(self.n_gpus)]

    # ---- what controllers call ----------------------------------------------------------

    def add_server(self, sid: str, model: str, gpus: tuple[int, ...], state: S = S.PARKED) -> SimServer:
        s = SimServer(sid, self.models[model], gpus)
        s.state = state
        self.servers[sid] = s
        for g in gpus:
            self.on_gpu.setdefault(g, []).append(s)
        self._join(gpus).servers.append(s)
        return s

    def _join(self, gpus: tuple[int, ...]) -> GpuExec:
        """The executor of a group: GPUs a TP server spans share one (engine.py)."""
        exs = sorted({id(self.gpus[g]): self.gpus[g] for g in gpus}.values(), key=lambda e: e.id)
        keep = exs[0]
        for other in exs[1:]:
            if keep.planned or other.planned or any(s.in_flight for s in keep.servers + other.servers):
                raise RuntimeError(
                    f"GPUs {gpus}: joining executors with work in progress (start TP servers before the trace, or idle)"
                )
            keep.servers += other.servers
            self.gpus = [keep if e is other else e for e in self.gpus]
        return keep

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, _TIMER, fn, args))

    def dispatch(self, req: SimReq, server: SimServer) -> None:
        req.server = server
        if not server.sglang:  # "reserve": KV reserved in full at dispatch (servers.py)
            server.kv_used += req.kv_tokens
        server.keep_cached()
        server.waiting.append(req)
        self._dirty.add(self.gpus[server.gpus[0]].id)

    def shed(self, req: SimReq) -> None:
        """Answer 429 (the simulator counts it as a miss; clients do not retry)."""
        req.shed = True
        self.resolved += 1

    def park(self, s: SimServer, then: Callable[[], None] | None = None) -> None:
        """Park an idle server (the caller drained it); memory is freed when the park ends."""
        if s.in_flight:
            raise RuntimeError(f"{s.id}: parking with {s.in_flight} requests in flight (controller bug)")
        if s.state is S.PARKED:
            raise RuntimeError(f"{s.id}: parking a parked server (controller bug)")
        s.state = S.PARKING
        self.counters.parks += 1
        self.at(self.now + s.model.cost.park_s, self._parked, s, then)

    def wake(
        self,
        s: SimServer,
        then: Callable[[], None] | None = None,
        cold: bool = False,
        settle: Callable[[], None] | None = None,
    ) -> None:
        """Wake (or cold-start) ``s``; ``settle`` runs once it counts as resident and before its
        memory is checked (chimera re-splits KV there: neighbours shrink for it first)."""
        s.state = S.STARTING if cold else S.WAKING
        dur = s.model.cost.cold_start_s if cold else s.model.cost.wake_s
        if cold:
            self.counters.starts += 1
        else:
            self.counters.wakes += 1
        s.ready_at = self.now + dur
        if settle is not None:
            settle()
        self.check_memory(s.gpus)
        self.at(s.ready_at, self._woken, s, then)

    def check_memory(self, gpus: Sequence[int]) -> None:
        for g in gpus:
            if self.used_bytes(g) > self.gpu_bytes * (1 + 1e-9):
                self.counters.memory_violations += 1
                if self.debug:
                    print(
                        f"t={self.now:.2f} GPU {g} over by {(self.used_bytes(g) - self.gpu_bytes) / 2**30:.2f} GiB:",
                        [(s.id, s.state.value, s.kv_limit, s.kv_used) for s in self.servers.values() if g in s.gpus],
                    )

    def used_bytes(self, g: int) -> float:
        return sum(held_bytes(s) for s in self.on_gpu.get(g, ()))

    def prefill_backlog(self, gpu: int) -> float:
        return self.gpus[gpu].prefill_backlog(self.now)

    # ---- the loop ---------------------------------------------------------------------------

    def run(self, trace: Sequence[BenchRequest]) -> float:
        """Simulate ``trace``; returns wall seconds spent."""
        t_wall = time.perf_counter()
        self.reqs = [SimReq(r.id, r.model, r.arrival_s, r.prompt_tokens, r.output_tokens) for r in trace]
        end = (self.reqs[-1].arrival if self.reqs else 0.0) + self.drain_s
        self.controller.on_start(self)
        self._flush()
        i, n = 0, len(self.reqs)
        heap = self._heap
        while True:
            t_arr = self.reqs[i].arrival if i < n else math.inf
            t_ev = heap[0][0] if heap else math.inf
            if min(t_arr, t_ev) > end or (i >= n and (self.resolved >= n or not heap)):
                break
            if t_arr <= t_ev:
                self.now = t_arr
                self.controller.on_arrival(self, self.reqs[i])
                i += 1
            else:
                t, _, kind, a, b = heapq.heappop(heap)
                self.now = t
                if kind == _GPU:
                    if self.gpus[a].id == a and self.gpus[a].version == b and self.gpus[a].planned:
                        self._dirty.add(a)
                else:
                    a(*b)
            self._flush()
        self.now = end
        return time.perf_counter() - t_wall

    def _flush(self) -> None:
        while self._dirty:
            g = min(self._dirty)
            self._dirty.discard(g)
            ex = self.gpus[g]
            start, done = ex.settle(self.now)
            t_end = ex.plan(max(start, self.now))
            if t_end is not None:
                self._seq += 1
                heapq.heappush(self._heap, (t_end, self._seq, _GPU, ex.id, ex.version))
            for req, t in done:
                self._complete(req, t)

    def _complete(self, req: SimReq, t: float) -> None:
        req.finish = max(t, req.first)  # a delayed first token (first_token_at) is never after the last
        self.resolved += 1
        s = req.server
        assert s is not None
        if not s.sglang:  # "sglang": the step that finished it counted its KV out (sync_kv)
            s.kv_used -= req.kv_tokens
        s.keep_cached(req.kv_tokens)
        self.controller.on_complete(self, s, req)

    def _parked(self, s: SimServer, then: Callable[[], None] | None) -> None:
        s.state = S.PARKED
        s.kv_limit = 0
        s.keep_cached()
        if then:
            then()

    def _woken(self, s: SimServer, then: Callable[[], None] | None) -> None:
        s.state = S.AWAKE
        self._dirty.add(self.gpus[s.gpus[0]].id)  # requests may already be waiting in it
        if then:
            then()
