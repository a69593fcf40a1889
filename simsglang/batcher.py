"""Continuous batching: the one task that owns the sim's running batch, like SGLang's scheduler.

Each iteration admits waiting requests (FCFS) and runs one prefill step for them, or else one
decode step for every running request; it sleeps for the step's modelled time on an injectable
clock and then hands each request its new token through the request's event queue.

KV admission: a request reserves ``prompt + planned output`` tokens when admitted (the sim knows
each request's output length, so it never over-admits and never needs SGLang's retraction on KV
overflow; real SGLang admits on an estimated new-token ratio and retracts when the pool fills).
Requests that do not fit wait, in order. ``num_used_tokens`` reports the tokens actually in KV.

Callers: the HTTP handlers (submit, abort), the admin routes (pause, unpause, hold). All run on
the same event loop; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from orchestrator.perf.calibration import EAGER_DECODE_FACTOR
from orchestrator.perf.model import LatencyModel, MemoryPlan
from simsglang.tokenizer import OutputPlan

PauseMode = Literal["abort", "retract", "in_place"]
THROUGHPUT_WINDOW_S = 5.0


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class VirtualClock:
    """Test clock. ``auto``: a sleep moves time forward at once (and yields to the loop); meant
    for one sleeper, the batcher (concurrent sleepers add up instead of overlapping). Manual
    (``auto=False``): sleepers wait until the test calls ``advance``."""

    def __init__(self, start: float = 1000.0, auto: bool = True) -> None:
        self.t, self.auto = start, auto
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if self.auto:
            self.t += max(0.0, seconds)
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + max(0.0, seconds), fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Manual mode: move time forward and wake the sleepers whose time has come."""
        self.t += seconds
        due = [f for when, f in self._sleepers if when <= self.t]
        self._sleepers = [(w, f) for w, f in self._sleepers if w > self.t]
        for f in due:
            if not f.done():
                f.set_result(None)


@dataclass(frozen=True)
class StepEvent:
    generated: int  # output tokens so far (cumulative)
    finish: dict[str, object] | None  # SGLang's finish_reason once finished
    time: float


@dataclass(eq=False)
class SimRequest:
    rid: str
    prompt_len: int
    plan: OutputPlan
    generated: int = 0
    in_kv: int = 0  # tokens of this request in the KV pool now (0 while waiting)
    state: Literal["new", "waiting", "running", "done"] = "new"
    retractions: int = 0
    queued_at: float = 0.0
    top_logprobs: int | None = None  # logprobs asked for: how many top ones per token (None: none)
    adapter: str | None = None  # the LoRA adapter it runs with (None: the base model)
    events: asyncio.Queue[StepEvent] = field(default_factory=asyncio.Queue)

    @property
    def seqlen(self) -> int:
        return self.prompt_len + self.generated

    @property
    def reservation(self) -> int:
        return self.prompt_len + self.plan.length


@dataclass(frozen=True)
class BatcherSnapshot:
    num_running: int
    num_waiting: int
    waiting_tokens: int
    used_tokens: int
    capacity: int
    max_running: int
    gen_throughput: float
    num_paused: int
    num_retracted: int
    total_prefill_tokens: int
    total_prefill_busy_us: int
    # SGLang's decode moments: (steps, sum bs, sum us, sum bs^2, sum bs*us, tokens)
    decode_moments: tuple[float, ...]


class Batcher:
    def __init__(
        self, model: LatencyModel, plan: MemoryPlan, clock: Clock, on_queue_time: Callable[[float], None] | None = None
    ) -> None:
        self.model, self.clock = model, clock
        self.on_queue_time = on_queue_time  # seconds a request waited before its first prefill
        self.capacity = plan.kv_capacity_tokens
        self.max_running = plan.max_running_requests
        self.chunk = plan.chunked_prefill_size
        self.graph_max_bs = plan.cuda_graph_max_bs  # a larger decode batch runs eagerly
        # --max-loras-per-batch with --enable-lora: distinct adapters (the base counting as one)
        # in a running batch; None: LoRA off
        self.max_loras_per_batch: int | None = None
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.holds: set[str] = set()  # why the loop may not step: "paused", "released"
        self.pause_mode: PauseMode | None = None
        self.num_retracted = 0
        self.total_prefill_tokens = 0
        self.total_prefill_busy_us = 0
        self.decode_moments = [0.0] * 6
        self._generated: deque[tuple[float, int]] = deque()
        self._wake = asyncio.Event()
        self._step_done = asyncio.Event()
        self._step_done.set()
        self._idle = asyncio.Event()
        self._idle.set()

    # -- requests ---------------------------------------------------------------------------
    def submit(self, req: SimRequest) -> None:
        if req.reservation > self.capacity:
            raise ValueError(f"request needs {req.reservation} KV tokens, more than the pool's {self.capacity}")
        req.state, req.queued_at = "waiting", self.clock.now()
        self.waiting.append(req)
        self._idle.clear()
        self._wake.set()

    def abort(self, req: SimRequest, message: str = "Abort before prefill") -> None:
        """Drop a request wherever it is and free its KV (client gone, or pause(abort))."""
        if req.state == "done":
            return
        if req.state == "waiting":
            self.waiting.remove(req)
        elif req.state == "running":
            self.running.remove(req)
        self._finish(req, {"type": "abort", "message": message})

    def _finish(self, req: SimRequest, finish: dict[str, object]) -> None:
        req.state, req.in_kv = "done", 0
        req.events.put_nowait(StepEvent(req.generated, finish, self.clock.now()))
        if self.is_idle():
            self._idle.set()

    # -- control ----------------------------------------------------------------------------
    async def pause(self, mode: PauseMode) -> None:
        """Stop stepping after the current step; abort, retract (back to the queue, KV freed,
        recomputed on continue) or keep in place the running requests (SGLang's three modes)."""
        self.holds.add("paused")
        self.pause_mode = mode
        await self._step_done.wait()
        if mode == "abort":
            for r in [*self.running, *self.waiting]:
                self.abort(r, "Abort in waiting queue" if r.state == "waiting" else "Aborted")
        elif mode == "retract":
            self.num_retracted = len(self.running)
            for r in reversed(self.running):
                r.state, r.in_kv = "waiting", 0
                r.retractions += 1
                self.waiting.appendleft(r)
            self.running.clear()

    def unpause(self) -> None:
        self.holds.discard("paused")
        self.pause_mode = None
        self._wake.set()

    async def hold(self, reason: str) -> None:
        """Stop stepping for ``reason`` (memory released) once the current step ends."""
        self.holds.add(reason)
        await self._step_done.wait()

    def unhold(self, reason: str) -> None:
        self.holds.discard(reason)
        self._wake.set()

    def is_idle(self) -> bool:
        """SGLang's is_fully_idle: nothing running and nothing queued in the scheduler."""
        return not self.running and not self.waiting

    async def wait_idle(self) -> None:
        """Until nothing runs or waits (SGLang's weight update waits for in-flight requests)."""
        while not self.is_idle():
            self._idle.clear()
            await self._idle.wait()

    def close(self) -> None:
        for r in [*self.running, *self.waiting]:
            self.abort(r, "Server is shutting down")

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """The batching loop; runs until cancelled (the app's lifespan owns the task)."""
        while True:
            admitted = self._admit() if not self.holds else []
            if admitted:
                await self._prefill(admitted)
            elif self.running and not self.holds:
                await self._decode()
            else:
                self._wake.clear()
                await self._wake.wait()

    def _admit(self) -> list[SimRequest]:
        reserved = sum(r.reservation for r in self.running)
        budget, admitted = self.chunk, list[SimRequest]()
        loras = {r.adapter for r in self.running}
        for r in list(self.waiting):
            if len(self.running) + len(admitted) >= self.max_running:
                break
            if self.max_loras_per_batch is not None and r.adapter not in loras:
                if len(loras) >= self.max_loras_per_batch:
                    continue  # SGLang's _can_schedule_lora_req: skipped; later requests may run
            if reserved + r.reservation > self.capacity or (admitted and r.seqlen > budget):
                break
            self.waiting.remove(r)
            admitted.append(r)
            loras.add(r.adapter)
            reserved += r.reservation
            budget -= r.seqlen
        return admitted

    async def _prefill(self, batch: list[SimRequest]) -> None:
        now = self.clock.now()
        for r in batch:
            r.state, r.in_kv = "running", r.seqlen  # a retracted request recomputes its output too
            if self.on_queue_time is not None and r.retractions == 0:
                self.on_queue_time(now - r.queued_at)
        self.running.extend(batch)
        new = [(r.seqlen, 0) for r in batch]
        duration = self.model.prefill_time(new, self.chunk)
        await self._step(duration)
        self.total_prefill_tokens += sum(n for n, _ in new)
        self.total_prefill_busy_us += int(duration * 1e6)
        self._advance([r for r in batch if r.state == "running"])

    async def _decode(self) -> None:
        batch = list(self.running)
        duration = self.model.decode_time([r.seqlen for r in batch])
        if len(batch) > self.graph_max_bs:  # no CUDA graph for this batch size
            duration *= EAGER_DECODE_FACTOR
        await self._step(duration)
        b, us = float(len(batch)), duration * 1e6
        for i, v in enumerate((1.0, b, us, b * b, b * us, b)):
            self.decode_moments[i] += v
        self._advance([r for r in batch if r.state == "running"])

    async def _step(self, duration: float) -> None:
        self._step_done.clear()
        try:
            await self.clock.sleep(duration)
        finally:
            self._step_done.set()

    def _advance(self, batch: list[SimRequest]) -> None:
        now = self.clock.now()
        produced = 0
        for r in batch:
            if r.generated < r.plan.length:
                r.generated += 1
                r.in_kv = r.seqlen
                produced += 1
            if r.generated >= r.plan.length:
                self.running.remove(r)
                self._finish(r, r.plan.finish_reason())
            else:
                r.events.put_nowait(StepEvent(r.generated, None, now))
        self._generated.append((now, produced))

    # -- observation ------------------------------------------------------------------------
    def held_back_tokens(self) -> int:
        """Pool slots the KV limit keeps SGLang from allocating (0 without the shim): a shimmed
        SGLang's ``num_used_tokens`` is ``max_total - available - evictable`` and so counts them
        as used (orchestrator/sglang/loads.py), which is what a client of /v1/loads sees."""
        return 0

    def flush_prefix_cache(self) -> None:
        """``/flush_cache`` on an idle server (the sim keeps a prefix cache only under the shim:
        shim_channel.py)."""

    def snapshot(self) -> BatcherSnapshot:
        now = self.clock.now()
        while self._generated and self._generated[0][0] < now - THROUGHPUT_WINDOW_S:
            self._generated.popleft()
        tokens = sum(n for _, n in self._generated)
        return BatcherSnapshot(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            waiting_tokens=sum(r.seqlen for r in self.waiting),
            used_tokens=sum(r.in_kv for r in self.running),
            capacity=self.capacity,
            max_running=self.max_running,
            gen_throughput=tokens / THROUGHPUT_WINDOW_S,
            num_paused=len(self.running) if self.pause_mode == "in_place" else 0,
            num_retracted=self.num_retracted,
            total_prefill_tokens=self.total_prefill_tokens,
            total_prefill_busy_us=self.total_prefill_busy_us,
            decode_moments=tuple(self.decode_moments),
        )
