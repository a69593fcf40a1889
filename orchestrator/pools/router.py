"""The Router the proxy uses when the placements file has shape pools: the one below it (the
control loop, or the LoRA router), with a pooled model's requests sent to a server of its pool.

For a pooled model, the pool policy (orchestrator/policy/pools.py) picks a server that holds the
model's weights, or one to re-target. A routed request is counted on its server before the
control loop is asked for it (``acquire`` of the server's hidden model: held while it wakes). A
re-target acquires its server the same way, so the server is awake before
``/update_weights_from_disk`` (never on a parked server), then switches it (retarget.py),
checks the probe against the model's own reference, tells the supervisor the server's new probe
output (what a later wake is checked against) and routes. Pool servers are hidden: not listed,
not resolvable by clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from orchestrator.config import ModelSpec
from orchestrator.control.router import Router
from orchestrator.deployment import Deployment
from orchestrator.errors import EngineUnavailable
from orchestrator.perf.cost import retarget_time
from orchestrator.policy.pools import Costs, decide
from orchestrator.pools.holdings import Holdings
from orchestrator.pools.retarget import Retargeter, RetargetError
from orchestrator.pools.staging import Stager
from orchestrator.types import Endpoint, InstanceState, InstanceView, ModelView

log = logging.getLogger("chimera.pools")


class PoolRouter:
    def __init__(
        self,
        inner: Router,
        holdings: Holdings,
        retargeter: Retargeter,
        models: tuple[ModelSpec, ...],
        costs: Callable[[str], Costs],  # per pool, from the deployment's cost model
        on_probe: Callable[[str, str], None],  # (instance id, probe output) after a switch
        clock: Callable[[], float] = time.monotonic,
        patience: Callable[[ModelSpec], float] = lambda m: m.slo.ttft_or_default,
        stager: Stager | None = None,
    ) -> None:
        self._inner = inner
        self._holdings = holdings
        self._retargeter = retargeter
        self._by_name = {m.name: m for m in models}
        self._costs = costs
        self._on_probe = on_probe
        self._clock = clock
        self._patience = patience  # how long a request waits before it may evict a hotter model
        self._slot_of_instance: dict[str, str] = {}
        self._stager = stager

    def resolve(self, name: str) -> ModelSpec | None:
        m = self._inner.resolve(name)
        return None if m is not None and m.slot_of is not None else m

    def known_names(self) -> list[str]:
        return [
            n
            for n in self._inner.known_names()
            if self._by_name.get(n, None) is None or self._by_name[n].slot_of is None
        ]

    def models(self) -> list[ModelView]:
        views = self._inner.models()
        by_name = {v.spec.name: v for v in views}
        out = []
        for v in views:
            if v.spec.slot_of is not None:
                continue
            if v.spec.pool is not None:  # the servers holding its weights, else its pool's best state
                slots = [by_name[s] for s in self._holdings.pool(v.spec.pool).slots if s in by_name]
                mine = [s for s in slots if self._holdings.holds(s.spec.name) == v.spec.model_path]
                shown = mine or slots
                state = (
                    InstanceState.AWAKE
                    if any(s.state is InstanceState.AWAKE for s in mine)
                    else InstanceState.PARKED
                    if mine
                    else InstanceState.STOPPED
                )
                out.append(ModelView(v.spec, state, tuple(i for s in shown for i in s.instances)))
            else:
                out.append(v)
        return out

    def instances(self) -> list[InstanceView]:
        return self._inner.instances()

    async def acquire(self, model: ModelSpec, timeout_s: float) -> Endpoint:
        if model.pool is None:
            return await self._inner.acquire(model, timeout_s)
        pool, path = model.pool, model.model_path
        t0 = self._clock()
        self._holdings.bump(pool, path, t0)
        if self._stager is not None:
            self._stager.poke(pool)  # the hot checkpoints into host RAM (within the pool's stage_gb)
        while True:
            left = timeout_s - (self._clock() - t0)
            if left <= 0:
                raise EngineUnavailable(
                    f"model {model.name!r}: no server of pool {pool!r} free within {timeout_s:g} s", 1.0
                )
            awake = {v.spec.name for v in self._inner.models() if v.state is InstanceState.AWAKE}
            costs = self._costs(pool)
            choice = decide(
                self._holdings.slots(pool, awake.__contains__),
                path,
                self._holdings.popularity(pool),
                costs,
                self._clock(),
                waited_s=self._clock() - t0,
                # wait for a colder server only as long as a switch still meets the deadline
                patience_s=self._patience(model) - costs.retarget_s - costs.wake_s,
            )
            if choice.action == "wait" or choice.slot is None:
                changed = self._holdings.changed
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), min(left, 1.0))  # a state change may free one too
                except TimeoutError:
                    pass
                continue
            slot = choice.slot
            if choice.action == "route":
                self._holdings.reserve(slot)
                ep = await self._acquire_slot(slot, left)
                if self._holdings.holds(slot) != path:  # restarted while waking: start over
                    self.release(ep)
                    continue
                return ep
            return await self._retarget(model, slot, left)

    async def _acquire_slot(self, slot: str, timeout_s: float) -> Endpoint:
        """The server, awake, from the control loop; its reservation is undone on failure."""
        try:
            ep = await self._inner.acquire(self._by_name[slot], timeout_s)
        except BaseException:
            self._holdings.release(slot)
            raise
        self._slot_of_instance[ep.instance_id] = slot
        return ep

    async def _retarget(self, model: ModelSpec, slot: str, timeout_s: float) -> Endpoint:
        previous = self._holdings.holds(slot)
        self._holdings.begin_switch(slot, model.model_path)
        ep: Endpoint | None = None
        holds = previous
        try:
            ep = await self._acquire_slot(slot, timeout_s)  # awake: never switch a parked server
            holds = None  # from here a failure may leave either weights
            t0 = self._clock()
            gpus = self._by_name[slot].placements[0].gpus
            output, phases = await self._retargeter.switch(ep.base_url, model.model_path, gpus)
            wrong = self._holdings.check_probe(slot, previous, model.model_path, output)
            if wrong is not None:
                raise RetargetError(f"{ep.instance_id} re-targeted to {model.name!r}: {wrong}", 1.0)
            holds = model.model_path
            self._on_probe(ep.instance_id, output)
            log.info(
                "re-targeted %s from %s to %s (%s) in %.3f s %s",
                ep.instance_id,
                previous,
                model.name,
                model.model_path,
                self._clock() - t0,
                {k: round(v, 4) for k, v in phases.items()},
            )
            return ep
        except BaseException as exc:
            if isinstance(exc, EngineUnavailable):  # the request's 503 says it; the log says it too
                where = ep.instance_id if ep is not None else slot
                log.warning("re-target of %s to %s (%s) failed: %s", where, model.name, model.model_path, exc)
            if ep is not None:
                self.release(ep)
            raise
        finally:
            self._holdings.end_switch(slot, holds)

    def release(self, endpoint: Endpoint) -> None:
        slot = self._slot_of_instance.get(endpoint.instance_id)
        if slot is not None:
            self._holdings.release(slot)
        self._inner.release(endpoint)

    def suspect(self, instance_id: str, detail: str) -> None:
        self._inner.suspect(instance_id, detail)


def pool_costs(dep: Deployment, pool: str) -> Costs:
    """A switch's cost on one of the pool's servers, from the deployment's cost model
    (orchestrator/perf/cost.py): the re-target (from pinned host RAM with ``stage: pinned``,
    else from the page cache or disk), and the wake of a parked server."""
    spec = next(p for p in dep.config.pools if p.name == pool)
    cost = dep.models[spec.slots[0]].cost
    if spec.stage == "pinned":
        slot = dep.config.model(spec.slots[0])
        tp = slot.tp_size if slot is not None else 1
        return Costs(retarget_time(spec.shape, tp, pinned=True), cost.wake_s)
    return Costs(cost.retarget_s, cost.wake_s)
