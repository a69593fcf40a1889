"""Local admission (mode ``full``): one earliest-deadline-first queue per GPU group, across the
models colocated there (docs/scheduling.md "Local").

After the control loop hands a request an instance (``router.acquire``), the proxy asks the gate
of that instance's GPU group (its lead GPU) before forwarding it. The gate keeps the request
until ``policy.admission.admit`` dispatches it - in deadline order (arrival + the model's TTFT
SLO), only while the engine has KV room and a free running slot - or sheds it: when deadlines
become infeasible, Moore-Hodgson keeps the largest on-time set and the rest get 429 with an
honest ``Retry-After`` (when the on-time work ahead of them should be done). Only models whose
placements file sets ``slo.ttft_s`` are shed (``scheduler.on_late``); the others are served late.

Engine room comes from the scraper's ``LoadSample`` (control/scrape.py, every 250 ms):
KV free = capacity - used - tokens queued in the engine - what the gate dispatched since that
sample; slots free = max running - running - waiting - dispatched since. An engine with no
sample, or only one older than ``STALE_S``, has unknown room and admits everything (SGLang's own
scheduler then queues): a gate without a scraper is a pass-through, never a deadlock.

Prefill times and KV needs are estimates: prompt tokens ~ characters / 4 of the body's text,
prefill from the calibrated latency model (orchestrator/perf/model.py), as the deployment's
facts hold it per model with its SLO and ``on_late`` (orchestrator/deployment.py).

Who calls: ``forward.py`` (``admitted``) from request tasks, the scraper's sink (``observe``).
All on the one event loop, and no method awaits between reading and changing the queues.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from starlette.types import Scope

from orchestrator.config import ModelSpec
from orchestrator.deployment import Deployment
from orchestrator.perf import span
from orchestrator.policy.admission import admit
from orchestrator.policy.admission.queueing import EngineRoom, ModelRule, Pending, QueueView
from orchestrator.proxy.errors import ProxyError
from orchestrator.sglang.api import max_model_len
from orchestrator.types import LoadSample

STALE_S = 2.0  # a sample older than this (8 scrape periods) says nothing about room now
UNKNOWN_ROOM = 1 << 40  # room of an engine with no fresh sample: admit (SGLang queues itself)
CHARS_PER_TOKEN = 4  # the usual estimate for English text with BPE tokenizers
DEFAULT_NEW_TOKENS = 256  # a request that names no max_tokens: SGLang's default is 128 (/generate)


@dataclass
class _Waiting:
    pending: Pending
    instance: str
    prompt_tokens: int
    future: asyncio.Future[None]


class _Dispatched(NamedTuple):
    at: float  # when the gate let it go
    kv_tokens: int
    prompt_tokens: int


@dataclass
class _Engine:
    sample: LoadSample | None = None
    # requests dispatched after the latest sample was taken
    unseen: dict[str, _Dispatched] = field(default_factory=dict)


class AdmissionGate:
    def __init__(
        self, deployment: Deployment, clock: Callable[[], float] = time.monotonic, repump_s: float = STALE_S
    ) -> None:
        self._clock = clock
        self._repump_s = repump_s
        self._specs = {iid: f.spec for iid, f in deployment.instances.items()}
        self._queues: dict[int, dict[str, _Waiting]] = {}
        self._engines: dict[str, _Engine] = {iid: _Engine() for iid in self._specs}
        self._ids = itertools.count()
        self._models = deployment.models
        self._rules = {name: ModelRule(m.spec.priority, m.on_late) for name, m in self._models.items()}
        # a group with requests left queued is looked at again after ``repump_s`` even if
        # nothing happens: its samples may have stopped (then room is unknown and it admits)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        # called when a request arrives and has to wait: the KV ledger re-splits at once, with
        # the held requests in its demand (``held_kv_tokens``; wired by the app)
        self.on_held: Callable[[], None] = lambda: None

    # ---- inputs -------------------------------------------------------------------------

    def observe(self, s: LoadSample) -> None:
        """A fresh ``/v1/loads`` sample (the scraper's sink)."""
        eng = self._engines.get(s.instance_id)
        if eng is None:
            return
        eng.sample = s
        eng.unseen = {r: u for r, u in eng.unseen.items() if u.at >= s.at}
        self._pump(self._group(s.instance_id))

    @asynccontextmanager
    async def admitted(
        self, spec: ModelSpec, body: dict[str, Any], instance_id: str, arrival: float
    ) -> AsyncIterator[None]:
        """Wait for the request's turn on ``instance_id``; raises ProxyError (429) if shed."""
        rid = await self.admit(spec, body, instance_id, arrival)
        try:
            yield
        finally:
            self.done(instance_id, rid)

    async def admit(self, spec: ModelSpec, body: dict[str, Any], instance_id: str, arrival: float) -> str:
        """Queue one request and wait until it is dispatched (returns its id: pass it to
        ``done``) or shed (raises ProxyError 429). Cancellation-safe."""
        return await self.admit_tokens(spec, estimate_prompt_tokens(body), max_new_tokens(body), instance_id, arrival)

    async def admit_tokens(
        self, spec: ModelSpec, prompt: int, new_tokens: int, instance_id: str, arrival: float
    ) -> str:
        """``admit`` from the body's estimates (a secondary proxy sends them over the channel:
        orchestrator/dataplane/channel.py). ``arrival``: time.monotonic(), one clock per host."""
        if instance_id not in self._specs:
            raise KeyError(f"admission: no instance {instance_id!r} in the placements file")
        rid = f"r{next(self._ids)}"
        server_model = self._specs[instance_id].model
        if prompt + new_tokens >= max_model_len(server_model.shape.max_context, server_model.engine_args):
            # beyond the context: SGLang refuses it with a 400 at once (tokenizer_manager's
            # "Requested token count exceeds the model's maximum context length"). Let the engine
            # answer rather than hold it for KV room no engine will ever have.
            return rid
        facts = self._models[spec.name]
        pending = Pending(
            rid,
            # the server's model: a LoRA adapter or a pooled model queues for the server it was
            # routed to (its base's, its pool's), with its own deadline, priority and on_late
            server_model.name,
            arrival,
            arrival + facts.ttft_slo_s,
            facts.latency.prefill_time([(prompt, 0)]),
            prompt + new_tokens,
            None if spec.name == server_model.name else spec.name,
        )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        g = self._group(instance_id)
        queue = self._queues.setdefault(g, {})
        queue[rid] = _Waiting(pending, instance_id, prompt, fut)
        self._pump(g)
        if rid in queue:
            self.on_held()
        try:
            await fut
        except BaseException:
            if queue.pop(rid, None) is not None:  # left while queued
                self._pump(g)
            elif fut.done() and not fut.cancelled() and fut.exception() is None:
                self.done(instance_id, rid)  # dispatched at the moment it was cancelled
            raise
        return rid

    def done(self, instance_id: str, rid: str) -> None:
        """The dispatched request ``rid`` ended (any outcome): its room is the engine's again."""
        eng = self._engines.get(instance_id)
        if eng is not None:
            eng.unseen.pop(rid, None)  # gone already if a sample came after its dispatch
            self._pump(self._group(instance_id))

    def held_kv_tokens(self) -> dict[str, int]:
        """KV tokens (prompt + max new tokens) of the requests waiting per instance: demand the
        engine cannot report while they wait here (the KV ledger adds it, kv/demand.py)."""
        out: dict[str, int] = {}
        for queue in self._queues.values():
            for w in queue.values():
                if not w.future.done():
                    out[w.instance] = out.get(w.instance, 0) + w.pending.kv_tokens
        return out

    def queued(self) -> dict[int, int]:
        """Requests waiting per GPU group (lead GPU), for tests and metrics."""
        return {g: len(q) for g, q in self._queues.items() if q}

    # ---- deciding -----------------------------------------------------------------------

    def _group(self, instance_id: str) -> int:
        return self._specs[instance_id].gpus[0]

    def _pump(self, g: int) -> None:
        queue = self._queues.get(g)
        if queue is None:
            return
        for rid in [r for r, w in queue.items() if w.future.done()]:
            del queue[rid]  # its task was cancelled and has not run its cleanup yet
        if not queue:
            self._rearm(g, False)
            return
        now = self._clock()
        engines = tuple(self._room(iid, now) for iid in sorted({w.instance for w in queue.values()}))
        pending = tuple(_capped(w.pending, self._capacity(w.instance, now)) for w in queue.values())
        view = QueueView(pending, engines, self._rules, self._backlog_s(g, now))
        decision = admit.decide(view, now)
        for d in decision.dispatch:
            w = queue.pop(d.request)
            self._engines[d.server].unseen[d.request] = _Dispatched(now, w.pending.kv_tokens, w.prompt_tokens)
            w.future.set_result(None)
        for s in decision.shed:
            w = queue.pop(s.request)
            w.future.set_exception(ProxyError.deadline_unmeetable(s.reason, s.retry_after_s))
        self._rearm(g, bool(queue))

    def _rearm(self, g: int, waiting: bool) -> None:
        old = self._timers.pop(g, None)
        if old is not None:
            old.cancel()
        if waiting:
            self._timers[g] = asyncio.get_running_loop().call_later(self._repump_s, self._pump, g)

    def _fresh(self, iid: str, now: float) -> LoadSample | None:
        s = self._engines[iid].sample
        return s if s is not None and now - s.at <= STALE_S else None

    def _capacity(self, iid: str, now: float) -> int | None:
        s = self._fresh(iid, now)
        return s.capacity_tokens if s is not None else None

    def _room(self, iid: str, now: float) -> EngineRoom:
        model = self._specs[iid].model.name
        s = self._fresh(iid, now)
        if s is None:
            return EngineRoom(iid, model, now, UNKNOWN_ROOM, UNKNOWN_ROOM)
        unseen = self._engines[iid].unseen.values()
        kv = s.capacity_tokens - s.used_tokens - s.waiting_tokens - sum(u.kv_tokens for u in unseen)
        slots = (s.max_running if s.max_running is not None else UNKNOWN_ROOM) - s.running - s.waiting - len(unseen)
        return EngineRoom(iid, model, now, max(0, kv), max(0, slots))

    def _backlog_s(self, g: int, now: float) -> float:
        """Prefill work already inside the engines on the queue's GPUs (queued there, or sent
        since), per GPU: a TP server's work holds every GPU of its group, so a TP-1 model's
        queue counts a TP neighbour's prefill, and a TP group's queue waits for the busiest of
        its GPUs (perf/span.py)."""
        work: list[tuple[tuple[int, ...], float]] = []
        for iid, spec in self._specs.items():
            s = self._fresh(iid, now)
            tokens = (s.waiting_tokens if s is not None else 0) + sum(
                u.prompt_tokens for u in self._engines[iid].unseen.values()
            )
            if tokens:
                work.append((spec.gpus, self._models[spec.model.name].latency.prefill_time([(tokens, 0)])))
        gpus = {x for spec in self._specs.values() if spec.gpus[0] == g for x in spec.gpus}
        return span.wait_s(gpus, span.per_gpu(work))


def _capped(p: Pending, capacity: int | None) -> Pending:
    """A request larger than the engine's whole KV pool would never fit: it asks for the pool
    (admitted when the engine is empty; SGLang then decides). Unknown capacity: as estimated."""
    if capacity is None or p.kv_tokens <= capacity:
        return p
    return Pending(p.id, p.model, p.arrival, p.deadline, p.prefill_s, max(1, capacity))


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of an OpenAI chat/completions or SGLang /generate body (~chars / 4)."""
    if isinstance(body.get("input_ids"), list):
        ids = body["input_ids"]
        return max(1, sum(len(x) if isinstance(x, list) else 1 for x in ids))
    chars = 0
    for key in ("messages", "prompt", "text"):
        chars += _chars(body.get(key))
    return max(1, chars // CHARS_PER_TOKEN)


def _chars(obj: Any) -> int:
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, int) and not isinstance(obj, bool):
        return CHARS_PER_TOKEN  # a token id in a pre-tokenized prompt
    if isinstance(obj, list):
        return sum(_chars(x) for x in obj)
    if isinstance(obj, dict):  # a chat message or a content part
        return _chars(obj.get("content")) + _chars(obj.get("text"))
    return 0


def max_new_tokens(body: dict[str, Any]) -> int:
    params = body.get("sampling_params")
    for v in (
        body.get("max_completion_tokens"),
        body.get("max_tokens"),
        params.get("max_new_tokens") if isinstance(params, dict) else None,
    ):
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
    return DEFAULT_NEW_TOKENS


class Gate(Protocol):
    """What the proxy waits on: the control plane's AdmissionGate, or a secondary proxy's view
    of it over the channel (orchestrator/dataplane/remote.py ``RemoteGate``)."""

    def admitted(
        self, spec: ModelSpec, body: dict[str, Any], instance_id: str, arrival: float
    ) -> AbstractAsyncContextManager[None]: ...


@asynccontextmanager
async def admitted(
    scope: Scope, spec: ModelSpec, body: dict[str, Any], instance_id: str, arrival: float
) -> AsyncIterator[None]:
    """The proxy's hook (forward.py): through the app's gate when it has one (mode full: set as
    ``app.state.admission`` by orchestrator/app.py, and by a secondary proxy's worker.py),
    straight through otherwise."""
    gate: Gate | None = getattr(scope["app"].state, "admission", None)
    if gate is None:
        yield
        return
    async with gate.admitted(spec, body, instance_id, arrival):
        yield
