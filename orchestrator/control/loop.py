"""The control loop: the one task that owns every instance's state.

Others post events (``post``) or ask through the Router methods, which post events too; the
loop applies them, asks the pure policies what to do, and causes side effects only through
``Effects``. No locks: only ``run()`` (and ``shutdown``) mutate instances and held requests.

Policies: ``startup`` in every mode; in mode ``full`` also the global scheduler
(``place.decide``, driven by scheduler.py) on every tick, on every lifecycle event and when
a request arrives for a model with no awake instance, plus the warm-start park of instances
placed ``on: false``. Its actions run as plans, step after step (plans.Plans).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from orchestrator.config import GIB, ModelSpec
from orchestrator.control.demand import Demand
from orchestrator.control.effects import Effects
from orchestrator.control.events import (
    Acquire,
    AdminAction,
    Event,
    Exited,
    GpusJoined,
    Parked,
    ParkFailed,
    Probed,
    Release,
    Relocated,
    Responsive,
    Started,
    StartFailed,
    Tick,
    Unresponsive,
    WakeFailed,
    Woken,
)
from orchestrator.control.holds import Holds, retry_after
from orchestrator.control.instance import Instance
from orchestrator.control.liveness import Liveness
from orchestrator.control.plans import Plan, Plans, PlanServer, RoomView, WakeGate
from orchestrator.control.scheduler import cluster_view
from orchestrator.deployment import Deployment
from orchestrator.errors import EngineUnavailable
from orchestrator.policy import restart, startup
from orchestrator.policy.placement import place
from orchestrator.policy.placement.cluster import Activation, Route, Wake
from orchestrator.policy.startup import ClusterSnapshot, InstanceSnapshot
from orchestrator.types import Endpoint, InstanceState, InstanceView, LoadSample, ModelView

log = logging.getLogger("chimera.control")
S = InstanceState
# Events applied before one decision when they queue up (a bound, so that a flood of requests
# cannot postpone decisions indefinitely).
MAX_EVENTS_PER_DECISION = 64
# Best first: the state a model shows in /v1/models is the best among its instances.
_STATE_RANK = [S.AWAKE, S.WAKING, S.STARTING, S.PENDING, S.PARKING, S.PARKED, S.BACKOFF, S.STOPPED, S.FAILED]


class ControlLoop:
    def __init__(self, deployment: Deployment, effects: Effects, clock: Callable[[], float] = time.monotonic) -> None:
        self.deployment = deployment
        self.config = config = deployment.config
        self._fx = effects
        self._clock = clock
        self._instances: dict[str, Instance] = {i.id: Instance(i) for i in config.instances}
        self._order = {iid: n for n, iid in enumerate(self._instances)}
        self._holds = Holds(config.hold)
        self._admin: dict[str, list[asyncio.Future[str]]] = {}
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._closing = False
        self._rr: dict[str, int] = {}
        self.timesharing = deployment.timesharing
        self.gpu_node = deployment.gpu_node  # node of each GPU counted (grows: GpusJoined)
        # mode full: the global scheduler's inputs and the plans it decided
        self._demand = Demand()
        self._plans: Plans[Instance] = Plans(
            self._instances,
            park=self._park,
            wake=self._wake,
            pend=lambda i: self._set(i, S.PENDING, self._clock()),
            serve=self._serve_model,
            moved=self._moved,
            gate=WakeGate(self._room, clock, config.scheduler.wake_room_s, self._waited_for_room),
            abandoned=self._plan_abandoned,
        )
        # the KV ledger's answer to "do this server's weights fit beside its neighbours now"
        # (app.py wires the KV runner's ``room``; None: no ledger, wakes go at once)
        self.room: Callable[[str], RoomView | None] | None = None
        self._due = True  # the global scheduler decides at the next _decide
        self._blocked: dict[str, str] = {}  # model -> why it cannot be activated (logged once)
        self._restart_timer: asyncio.TimerHandle | None = None  # posts a Tick when a backoff ends
        self._liveness = Liveness(config.liveness, effects)  # hung engines: probe, then kill
        # the drain and wake_due each instance's last published view showed
        self._shown: dict[str, tuple[str | None, bool]] = {}

    # ---- Router (called by the proxy, on the same event loop) -------------------------------

    def resolve(self, name: str) -> ModelSpec | None:
        return self.config.model(name)

    def known_names(self) -> list[str]:
        return self.config.names()

    def models(self) -> list[ModelView]:
        out = []
        due = self._plans.wake_due  # once: the views below read it per instance
        for m in self.config.models:
            views = tuple(i.view(i.id in due) for i in self._instances.values() if i.spec.model is m)
            best = min((v.state for v in views), key=_STATE_RANK.index, default=S.STOPPED)
            out.append(ModelView(spec=m, state=best, instances=views))
        return out

    def instances(self) -> list[InstanceView]:
        due = self._plans.wake_due
        return [i.view(i.id in due) for i in self._instances.values()]

    async def acquire(self, model: ModelSpec, timeout_s: float) -> Endpoint:
        fut: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()
        t0 = self._clock()
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
                f"model {model.name!r} is not ready after waiting {timeout_s:g} s (state: {self._model_state(model)})",
                retry_after_s=self._retry_after(model, self._clock() - t0),
            ) from None

    def release(self, endpoint: Endpoint) -> None:
        self.post(Release(endpoint.instance_id))

    def suspect(self, instance_id: str, detail: str) -> None:
        """A request to the instance timed out in the proxy: check whether it is hung."""
        self.post(Unresponsive(instance_id, None, detail))

    async def admin(self, instance_id: str, action: str) -> str:
        """Park or wake one instance now (admin API); returns what happened."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.post(AdminAction(instance_id, action, fut))
        return await fut

    # ---- the loop -----------------------------------------------------------------------

    def post(self, event: Event) -> None:
        self._events.put_nowait(event)

    async def run(self) -> None:
        """Owns the state until cancelled. Applies the events that are waiting, one at a time
        and in order (at most MAX_EVENTS_PER_DECISION), then decides once: under load a
        decision (a snapshot of every instance and the policies) per request's acquire and
        release was most of the loop's CPU, and no handler needs one between two events."""
        self._decide()
        self._publish_drains()
        while True:
            self._apply(await self._events.get())
            for _ in range(MAX_EVENTS_PER_DECISION - 1):
                try:
                    event = self._events.get_nowait()
                except asyncio.QueueEmpty:
                    break
                self._apply(event)
            self._decide()
            self._publish_drains()

    def demand(self) -> Demand:
        """The measured demand (read-only use: tests, metrics)."""
        return self._demand

    async def shutdown(self) -> None:
        """Fail held requests, stop every process and mark every instance stopped."""
        self._closing = True
        if self._restart_timer is not None:
            self._restart_timer.cancel()
        self._holds.fail(None, EngineUnavailable("chimera is shutting down"))
        for futs in self._admin.values():
            for f in futs:
                if not f.done():
                    f.set_exception(EngineUnavailable("chimera is shutting down"))
        await self._fx.stop_all()
        now = self._clock()
        for inst in self._instances.values():
            if inst.state is not S.STOPPED:
                inst.to(S.STOPPED, now)
                self._fx.state_changed(self._view(inst))

    # ---- applying events (only run() reaches these) -------------------------------------

    def _apply(self, ev: Event) -> None:
        now = self._clock()
        if isinstance(ev, Acquire):
            self._on_acquire(ev)
            return
        if isinstance(ev, Tick):
            self._due = True
            return
        if isinstance(ev, GpusJoined):
            log.info("%d GPU(s) counted now (a node joined)", len(ev.gpu_node))
            self.gpu_node, self._due = ev.gpu_node, True
            return
        if isinstance(ev, AdminAction):
            self._due = True
            self._on_admin(ev)
            return
        inst = self._instances.get(ev.instance_id)
        if inst is None:
            log.warning("event for unknown instance %s: %r", ev.instance_id, ev)
            return
        model = inst.spec.model
        if isinstance(ev, LoadSample):
            if inst.state is S.AWAKE:  # a scrape sent before a park may answer after it
                self._demand.sample(model.name, ev, now)
            return
        if isinstance(ev, Unresponsive | Responsive | Probed):
            self._liveness.note(inst, ev, now)  # acted on in _decide
            return
        if isinstance(ev, Release):
            inst.in_flight = max(0, inst.in_flight - 1)
            inst.last_used = now
            self._demand.active(model.name, now)
        elif isinstance(ev, Relocated):
            inst.moved_to = ev.gpus if ev.gpus != inst.spec.gpus else None
            self._fx.state_changed(self._view(inst))
        elif isinstance(ev, Started) and inst.state is S.STARTING:
            inst.endpoint, inst.error, inst.last_used = ev.endpoint, None, now
            self._holds.measured(model.name, "start", ev.seconds)
            self._demand.active(model.name, now)
            self._set(inst, S.AWAKE, now)
        elif isinstance(ev, Woken) and inst.state is S.WAKING:
            inst.error, inst.last_used = None, now
            self._demand.active(model.name, now)
            self._holds.measured(model.name, "wake", ev.seconds)
            self._fx.observe("wake_seconds", model.name, ev.seconds)
            self._set(inst, S.AWAKE, now)
            self._admin_done(inst.id, f"woken in {ev.seconds:.3f} s")
        elif isinstance(ev, Parked) and inst.state is S.PARKING:
            inst.parked_once = True
            self._demand.forget(inst.id)
            self._fx.observe("park_seconds", model.name, ev.seconds)
            self._fx.observe("freed_bytes", model.name, ev.freed_bytes)
            self._set(inst, S.PARKED, now)
            self._admin_done(inst.id, f"parked in {ev.seconds:.3f} s, freed {ev.freed_bytes / GIB:.2f} GiB")
        elif isinstance(ev, ParkFailed) and inst.state is S.PARKING:
            inst.error = ev.error
            inst.parked_once = True  # do not retry a warm-start park forever
            self._fx.observe("park_failures", model.name, 1)
            self._set(inst, S.AWAKE, now)
            self._admin_done(inst.id, f"park failed: {ev.error}")
        elif isinstance(ev, StartFailed) and inst.state is S.STARTING:
            self._on_failure(inst, "start_failed", ev.error, now)
        elif isinstance(ev, WakeFailed) and inst.state is S.WAKING:
            self._on_failure(inst, "wake_failed", ev.error, now)
        elif isinstance(ev, Exited) and inst.state not in (S.STOPPED, S.FAILED, S.BACKOFF):
            if inst.hung is not None:  # killed by the liveness check
                self._on_failure(inst, "hung", f"{inst.hung}; killed", now)
            elif not self._closing:
                self._on_failure(inst, "crash", f"engine process exited with code {ev.returncode}", now)
        else:
            return
        if not isinstance(ev, Release):
            self._due = True  # a lifecycle step: memory and candidates changed
        self._serve_held(model)
        self._fail_held_if_hopeless(model)

    def _on_failure(self, inst: Instance, reason: str, error: str, now: float) -> None:
        """The instance's process is gone (the supervisor reports a failure only once what
        failed is stopped): back off and restart it, or give up (policy/restart.py)."""
        self._demand.forget(inst.id)  # a restart's first sample must start over
        limits = self.config.restart
        inst.failures = restart.recent([*inst.failures, now], limits, now)
        decision = restart.decide(inst.failures, limits, now)
        inst.error = f"{error}; {decision.why}"
        if decision.action == "give_up":
            log.error("%s: %s", inst.id, inst.error)
            self._set(inst, S.FAILED, now)
        else:
            log.warning("%s: %s", inst.id, inst.error)
            inst.restart_reason = reason
            inst.retry_at = decision.at
            self._set(inst, S.BACKOFF, now)
        self._admin_done(inst.id, f"failed: {error}")

    def _due_restarts(self, now: float) -> None:
        """Instances whose backoff ended go back to the start-up queue; the timer is re-armed
        for the next one still waiting."""
        if self._restart_timer is not None:
            self._restart_timer.cancel()
            self._restart_timer = None
        waiting: list[float] = []
        for inst in self._instances.values():
            if inst.state is not S.BACKOFF or inst.retry_at is None:
                continue
            if inst.retry_at <= now:
                self._fx.observe("restarts", inst.spec.model.name, 1, f"{inst.id} {inst.restart_reason}")
                log.info("%s: restarting (%s)", inst.id, inst.restart_reason)
                self._set(inst, S.PENDING, now)
            else:
                waiting.append(inst.retry_at)
        if waiting:
            self._restart_timer = asyncio.get_running_loop().call_later(min(waiting) - now, self.post, Tick())

    def _on_acquire(self, ev: Acquire) -> None:
        if self._closing:
            ev.future.set_exception(EngineUnavailable("chimera is shutting down"))
            return
        self._demand.arrived(ev.model.name, self._clock())
        if self._holds.add(ev.model.name, ev.future, self._retry_after(ev.model, 0.0), self._clock()):
            self._serve_held(ev.model)
            self._fail_held_if_hopeless(ev.model)
        held = self._holds.waiting().get(ev.model.name, 0)
        if held:
            self._due = True  # no awake instance took it: activate one now, not at the next tick
        self._fx.observe("held", ev.model.name, held)

    def _on_admin(self, ev: AdminAction) -> None:
        inst = self._instances.get(ev.instance_id)
        if inst is None:
            ev.future.set_exception(
                KeyError(f"no instance {ev.instance_id!r} (instances: {', '.join(self._instances)})")
            )
            return
        if ev.action == "park" and inst.state is S.AWAKE and inst.in_flight == 0:
            self._park(inst, "admin")
        elif ev.action == "wake" and inst.state is S.PARKED:
            if not self.timesharing:
                self._wake(inst)
            elif not inst.claimed:  # claimed: a plan wakes it already; the answer comes with it
                # through the plan executor, as the scheduler's wakes: the wake gate holds it
                # until its weights fit beside what its neighbours hold
                model, gpus = inst.spec.model.name, inst.gpus
                steps = (Wake(inst.id), Route(model, gpus))
                self._plans.adopt(Activation(model, gpus, steps, 0.0, "wake asked for over the admin API"))
        elif ev.action == "wake" and inst.state is S.BACKOFF and inst.retry_at is not None:
            ev.future.set_result(f"restarting in {max(0.0, inst.retry_at - self._clock()):.1f} s ({inst.error})")
            return
        else:
            busy = f", {inst.in_flight} request(s) in flight" if inst.in_flight else ""
            ev.future.set_exception(ValueError(f"cannot {ev.action} {inst.id}: it is {inst.state}{busy}"))
            return
        self._admin.setdefault(inst.id, []).append(ev.future)

    def _admin_done(self, iid: str, report: str) -> None:
        for f in self._admin.pop(iid, []):
            if not f.done():
                f.set_result(report)

    # ---- deciding ----------------------------------------------------------------------

    def _decide(self) -> None:
        if self._closing:
            return
        now = self._clock()
        self._due_restarts(now)
        self._liveness.check(self._instances.values(), now)
        snap = self._snapshot()
        started = startup.decide(snap, now)
        for iid in started.queue:
            if self._instances[iid].state is S.STOPPED:
                self._set(self._instances[iid], S.PENDING, now)
        for iid in started.start:
            inst = self._instances[iid]
            if inst.state in (S.STOPPED, S.FAILED):
                self._set(inst, S.PENDING, now)
            self._set(inst, S.STARTING, now)
            self._fx.start(inst.spec)
        if not self.timesharing:
            return
        self._warm_start_parks()
        if self._due:
            self._due = False
            self._place(now)
        if self._plans.advance():
            self._due = True  # a plan could not finish: decide again at the next event

    def _warm_start_parks(self) -> None:
        """An instance placed `on: false` is started with the others and parked as soon as it
        is awake and idle (Prism's pre-initialized engines: ready to wake fast)."""
        waiting = self._holds.waiting()
        facts = self.deployment.instances
        for inst in self._instances.values():
            if (
                inst.state is S.AWAKE
                and facts[inst.id].warm_start_park
                and not inst.parked_once
                and inst.in_flight == 0
                and not waiting.get(inst.spec.model.name)
                and inst.draining is None
            ):
                self._park(inst, "warm_start")

    def _place(self, now: float) -> None:
        """One decision of the global scheduler; its actions become plans."""
        view = cluster_view(
            self.deployment,
            self._instances.values(),
            self._holds.waiting(),
            self._holds.oldest_wait_s(now),
            self._demand,
            now,
            self.gpu_node,
        )
        decision = place.decide(view, now)
        for action in decision.actions:
            self._plans.adopt(action)
        blocked = {b.model: b.reason for b in decision.blocked}
        for model, why in blocked.items():
            if self._blocked.get(model) != why:
                log.info("scheduler: %s waits: %s", model, why)
        self._blocked = blocked

    def _park(self, inst: Instance, reason: str) -> None:
        self._fx.observe("parks", inst.spec.model.name, 1, reason)
        self._set(inst, S.PARKING, self._clock())
        self._fx.park(inst.spec, reason)

    def _wake(self, inst: Instance) -> None:
        self._set(inst, S.WAKING, self._clock())
        self._fx.wake(inst.spec)

    def _room(self, iid: str) -> RoomView | None:
        return self.room(iid) if self.room is not None else None

    def _plan_abandoned(self, plan: Plan, why: str) -> None:
        """An operator waiting for a wake the plan was to make gets the reason."""
        for st in plan.action.steps:
            if isinstance(st, Wake):
                self._admin_done(st.server, f"wake abandoned: {why}")

    def _waited_for_room(self, srv: PlanServer, seconds: float, outcome: str) -> None:
        self._fx.observe("wake_room_wait_seconds", srv.model_name, seconds, outcome)

    def _moved(self, model: str) -> None:
        self._demand.moved(model, self._clock())

    def _serve_model(self, name: str) -> None:
        spec = self.config.model(name)
        if spec is not None:
            self._serve_held(spec)

    def _snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(
            instances=tuple(self._inst_snapshot(i) for i in self._instances.values()),
            waiting=self._holds.waiting(),
            gpu_bytes=self.deployment.gpu_bytes,
        )

    def _inst_snapshot(self, i: Instance) -> InstanceSnapshot:
        f = self.deployment.instances[i.id]
        return InstanceSnapshot(
            id=i.id,
            model=i.spec.model.name,
            gpus=i.gpus,
            state=i.state,
            start_on_up=f.starts_on_up,
            order=self._order[i.id],
            start_alone=f.start_alone,
            start_bytes=f.start_budget_bytes,
            parked_bytes=f.parked_bytes,
            parks_after_start=f.warm_start_park,  # mode full's `on: false` placements
        )

    def _set(self, inst: Instance, state: InstanceState, now: float) -> None:
        inst.to(state, now)
        self._publish(inst)

    def _view(self, inst: Instance) -> InstanceView:
        return inst.view(wake_due=inst.id in self._plans.wake_due)

    def _publish(self, inst: Instance) -> None:
        view = self._view(inst)
        self._shown[inst.id] = (view.draining, view.wake_due)
        self._fx.state_changed(view)

    def _publish_drains(self) -> None:
        """A plan's drain or its wake's wait for room starting or ending (plans.py sets
        ``draining``, lists ``wake_due``) changes the view but not the state: publish it too,
        once, unless a state change published it already (the KV runner, an observer, re-splits
        at once: a wake that waits for room counts its weights)."""
        due = self._plans.wake_due
        for inst in self._instances.values():
            if (inst.draining, inst.id in due) != self._shown.get(inst.id, (None, False)):
                self._publish(inst)

    def _serve_held(self, model: ModelSpec) -> None:
        """Hand held requests to awake instances, in arrival order, round-robin (never to one
        that a plan drains, which parks once its requests are done, nor to a hung one)."""
        awake = [
            i
            for i in self._instances.values()
            if i.spec.model is model and i.state is S.AWAKE and i.draining is None and i.hung is None
        ]
        if not awake:
            return
        while (held := self._holds.pop_live(model.name)) is not None:
            fut, since = held
            n = self._rr.get(model.name, 0)
            self._rr[model.name] = n + 1
            inst = awake[n % len(awake)]
            assert inst.endpoint is not None
            inst.in_flight += 1
            inst.last_used = self._clock()
            self._fx.observe("hold_seconds", model.name, self._clock() - since)
            fut.set_result(inst.endpoint)
        self._fx.observe("held", model.name, 0)

    def _fail_held_if_hopeless(self, model: ModelSpec) -> None:
        group = [i for i in self._instances.values() if i.spec.model is model]
        if any(i.state is not S.FAILED for i in group):
            return
        errors = "; ".join(f"{i.id}: {i.error}" for i in group)
        self._holds.fail(
            model.name,
            EngineUnavailable(f"every instance of model {model.name!r} has failed ({errors})", retry_after_s=None),
        )

    def _retry_after(self, model: ModelSpec, elapsed_s: float) -> float:
        group = [i for i in self._instances.values() if i.spec.model is model]
        states = {i.state for i in group}
        due = [i.retry_at for i in group if i.state is S.BACKOFF and i.retry_at is not None]
        if due and not states & {S.AWAKE, S.WAKING, S.STARTING, S.PENDING, S.PARKING, S.PARKED}:
            # only restarts to come: the time to the next attempt plus a start
            wait_s = max(0.0, min(due) - self._clock())
            return retry_after(wait_s + self._holds.expected(model.name, "start"), 0.0)
        kind = "wake" if states & {S.PARKED, S.PARKING, S.WAKING, S.AWAKE} else "start"
        return retry_after(self._holds.expected(model.name, kind), elapsed_s)

    def _model_state(self, model: ModelSpec) -> str:
        return next((str(mv.state) for mv in self.models() if mv.spec is model), "unknown")


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it. A task that had already died of an error is logged, not
    re-raised: shutdown goes on (the engines must still be stopped)."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("task %s had failed", task.get_name())
