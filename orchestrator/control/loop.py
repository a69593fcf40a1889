"""The control loop: the one task that owns every instance's state.

Others post events (``post``) or ask through the Router methods, which post events too; the
loop applies them, asks the pure policies what to do, and causes side effects only through
``Effects``. No locks: only ``run()`` mutates ``self._instances`` and ``self._waiters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from orchestrator.config import Config, ModelSpec
from orchestrator.control.api import Endpoint, InstanceState, ModelView
from orchestrator.control.effects import Effects
from orchestrator.control.events import Acquire, Event, Exited, Release, Started, StartFailed, Tick
from orchestrator.control.instance import Instance
from orchestrator.errors import EngineUnavailable
from orchestrator.policy import startup
from orchestrator.policy.types import ClusterSnapshot, InstanceSnapshot

S = InstanceState
# Best first: the state a model shows in /v1/models is the best among its instances.
_STATE_RANK = [S.AWAKE, S.WAKING, S.STARTING, S.PENDING, S.PARKING, S.PARKED, S.STOPPED, S.FAILED]
# A held request whose model is still starting is told to retry after this long when it times
# out; replaced by the measured wake time once time-sharing lands.
DEFAULT_RETRY_AFTER_S = 5.0


class ControlLoop:
    def __init__(
        self, config: Config, effects: Effects, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._effects = effects
        self._clock = clock
        self._instances: dict[str, Instance] = {i.id: Instance(i) for i in config.instances}
        self._order = {iid: n for n, iid in enumerate(self._instances)}
        self._waiters: dict[str, deque[asyncio.Future[Endpoint]]] = {}
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._closing = False
        self._rr: dict[str, int] = {}

    # ---- Router (called by the proxy, on the same event loop) -------------------------------

    def resolve(self, name: str) -> ModelSpec | None:
        return self.config.model(name)

    def known_names(self) -> list[str]:
        return self.config.names()

    def models(self) -> list[ModelView]:
        out = []
        for m in self.config.models:
            views = tuple(i.view() for i in self._instances.values() if i.spec.model is m)
            best = min((v.state for v in views), key=_STATE_RANK.index, default=S.STOPPED)
            out.append(ModelView(spec=m, state=best, instances=views))
        return out

    async def acquire(self, model: ModelSpec, timeout_s: float) -> Endpoint:
        fut: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()
        self.post(Acquire(model, fut))
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except asyncio.CancelledError:
            # The client left while held. If an endpoint was handed out at the same moment,
            # give it back so the instance's in-flight count stays right.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())
            raise
        except TimeoutError:
            raise EngineUnavailable(
                f"model {model.name!r} is not ready after waiting {timeout_s:g} s "
                f"(state: {self._model_state(model)})",
                retry_after_s=DEFAULT_RETRY_AFTER_S,
            ) from None

    def release(self, endpoint: Endpoint) -> None:
        self.post(Release(endpoint.instance_id))

    # ---- the loop -----------------------------------------------------------------------

    def post(self, event: Event) -> None:
        self._events.put_nowait(event)

    async def run(self) -> None:
        """Owns the state until cancelled. Applies one event at a time, then decides."""
        self._decide()
        while True:
            event = await self._events.get()
            self._apply(event)
            self._decide()

    async def shutdown(self) -> None:
        """Fail held requests, stop every process and mark every instance stopped."""
        self._closing = True
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(EngineUnavailable("chimera is shutting down"))
        self._waiters.clear()
        await self._effects.stop_all()
        now = self._clock()
        for inst in self._instances.values():
            if inst.state is not S.STOPPED:
                inst.to(S.STOPPED, now)
                self._effects.state_changed(inst.view())

    # ---- internals (only run() and shutdown() reach these) --------------------------------

    def _apply(self, ev: Event) -> None:
        now = self._clock()
        if isinstance(ev, Started):
            inst = self._instances[ev.instance_id]
            if inst.state is S.STARTING:
                inst.endpoint = ev.endpoint
                inst.error = None
                self._set(inst, S.AWAKE, now)
                self._serve_waiters(inst.spec.model)
        elif isinstance(ev, StartFailed):
            inst = self._instances[ev.instance_id]
            if inst.state is S.STARTING:
                inst.error = ev.error
                self._set(inst, S.FAILED, now)
                self._fail_waiters_if_hopeless(inst.spec.model)
        elif isinstance(ev, Exited):
            inst = self._instances[ev.instance_id]
            if inst.state not in (S.STOPPED, S.FAILED) and not self._closing:
                inst.error = f"engine process exited with code {ev.returncode}"
                self._set(inst, S.FAILED, now)
                self._fail_waiters_if_hopeless(inst.spec.model)
        elif isinstance(ev, Acquire):
            if self._closing:
                ev.future.set_exception(EngineUnavailable("chimera is shutting down"))
                return
            self._waiters.setdefault(ev.model.name, deque()).append(ev.future)
            self._serve_waiters(ev.model)
            self._fail_waiters_if_hopeless(ev.model)
        elif isinstance(ev, Release):
            inst = self._instances[ev.instance_id]
            inst.in_flight = max(0, inst.in_flight - 1)
            inst.last_used = now
        elif isinstance(ev, Tick):
            pass

    def _decide(self) -> None:
        if self._closing:
            return
        decision = startup.decide(self._snapshot(), self._clock())
        now = self._clock()
        for iid in decision.queue:
            inst = self._instances[iid]
            if inst.state is S.STOPPED:
                self._set(inst, S.PENDING, now)
        for iid in decision.start:
            inst = self._instances[iid]
            if inst.state in (S.STOPPED, S.FAILED):
                self._set(inst, S.PENDING, now)
            self._set(inst, S.STARTING, now)
            self._effects.start(inst.spec)

    def _snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(
            instances=tuple(
                InstanceSnapshot(
                    id=i.id, model=i.spec.model.name, gpus=i.spec.gpus, state=i.state,
                    start_on_up=i.spec.placement.on, order=self._order[i.id],
                )
                for i in self._instances.values()
            ),
            waiting={m: sum(not f.done() for f in q) for m, q in self._waiters.items()},
        )

    def _set(self, inst: Instance, state: InstanceState, now: float) -> None:
        inst.to(state, now)
        self._effects.state_changed(inst.view())

    def _serve_waiters(self, model: ModelSpec) -> None:
        """Hand held requests to awake instances, in arrival order, round-robin."""
        awake = [i for i in self._instances.values() if i.spec.model is model and i.state is S.AWAKE]
        waiters = self._waiters.get(model.name)
        if not awake or not waiters:
            return
        while waiters:
            fut = waiters.popleft()
            if fut.done():  # the client gave up (timeout or disconnect)
                continue
            n = self._rr.get(model.name, 0)
            self._rr[model.name] = n + 1
            inst = awake[n % len(awake)]
            assert inst.endpoint is not None
            inst.in_flight += 1
            inst.last_used = self._clock()
            fut.set_result(inst.endpoint)

    def _fail_waiters_if_hopeless(self, model: ModelSpec) -> None:
        group = [i for i in self._instances.values() if i.spec.model is model]
        if any(i.state is not S.FAILED for i in group):
            return
        errors = "; ".join(f"{i.id}: {i.error}" for i in group)
        for fut in self._waiters.pop(model.name, deque()):
            if not fut.done():
                fut.set_exception(EngineUnavailable(
                    f"every instance of model {model.name!r} has failed ({errors})",
                    retry_after_s=None,
                ))

    def _model_state(self, model: ModelSpec) -> str:
        for mv in self.models():
            if mv.spec is model:
                return str(mv.state)
        return "unknown"


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
