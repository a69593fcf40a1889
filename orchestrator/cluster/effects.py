"""The Effects implementation over a Ray cluster: one node agent per node (agent.py), each
pinned to its node with a NodeAffinitySchedulingStrategy and holding that node's GPUs, and this
driver-side object that routes each Effects call to the agent of the instance's node and posts
what the agents report to the control loop.

Node failure: an agent that dies (its node gone, or the actor itself) is seen by the long poll of
its reports (``ActorDiedError``). The node is then down (``chimera_node_up{node}`` 0, a log
line), and each instance it ran is reported gone: ``Exited`` (or ``StartFailed`` while it was
starting), so the control loop takes its usual restart path while requests for it are held.
The restart's ``start`` finds the node down and moves the instance to a live node
(placing.relocate): a cross-node move is a cold start. It keeps its id; the move is posted to
the control loop first (``Relocated``, cluster-wide GPU ids), which from then on counts it on
its new GPUs (its view: the KV ledger, the scheduler, the dashboard and metrics read that).
``where`` is only which agent to call and the node's own GPU indices to hand it. Requests in flight on the dead node end
with the proxy's 502 envelope when their connection breaks (or its upstream watchdog's, on a
node that vanished without closing it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from cumem_shim.types import Status
from orchestrator.cluster.agent import Measure, NodeAgent, Report
from orchestrator.cluster.connect import import_ray
from orchestrator.cluster.nodes import Inventory, Node
from orchestrator.cluster.placing import by_node, localized, relocate
from orchestrator.config import HostSpec, InstanceSpec
from orchestrator.control.events import (
    Event,
    Exited,
    GpusJoined,
    Parked,
    Probed,
    Relocated,
    Started,
    StartFailed,
    WakeFailed,
    Woken,
)
from orchestrator.deployment import Deployment
from orchestrator.errors import ConfigError
from orchestrator.kv.client import LimitReply, ShimUnavailable
from orchestrator.kv.ledger import Footprint, KVInstance
from orchestrator.types import InstanceView

log = logging.getLogger("chimera.cluster")
JOIN_POLL_S = 2.0  # how often Ray's node table is read for nodes that joined after `up`
POLL_S = 1.0  # an agent's long poll of reports; a dead agent fails it at once
AGENT_READY_S = 60.0
AGENT_RESTARTS = 3  # Ray restarts a dead agent on its (live) node this many times
AGENT_RESTART_S = 30.0  # how long a restarting agent on a live node may take to answer again
REPLY_GRACE_S = 4.0  # a long poll not answered within POLL_S + this: is the agent's node alive?


class RayEffects:
    def __init__(
        self,
        inv: Inventory,
        engine: str,
        host: HostSpec,
        run_dir: Path,
        post: Callable[[Event], None],
        observers: list[Callable[[InstanceView], None]] | None = None,
        measure: Callable[[str, str, float, str], None] | None = None,
        deployment: Deployment | None = None,
        node_state: Callable[[str, bool], None] | None = None,
        agents: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> None:
        self.inv = inv
        self._post = post
        self._observers = observers or []
        self._measure = measure
        self._node_state = node_state
        self._ray = import_ray()
        self._agent_args = (engine, host, run_dir, deployment, key)  # a node that joins later gets one too
        self.agents: dict[str, Any] = agents or self._spawn_agents()
        self.up: dict[str, bool] = {n.name: True for n in inv.nodes}
        # instance id -> (node, the node's GPU indices) it runs on, or last ran on
        self.where: dict[str, tuple[Node, tuple[int, ...]]] = {}
        self._live: dict[str, str] = {}  # instance id -> "starting" | "running", on its node
        self._parked: set[str] = set()  # running instances whose engine is parked
        self._specs: dict[str, InstanceSpec] = {}  # instance id -> its spec (cluster-wide GPU ids)
        self._pids: dict[str, int] = {}  # node -> its agent's pid (a new one: Ray restarted it)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pumps: list[asyncio.Task[None]] = []
        self._joining: set[str] = set()  # Ray node ids of nodes that joined after `up`, seen once
        for n in inv.nodes:
            self._set_node(n.name, True)

    # ---- agents ------------------------------------------------------------------------

    def _spawn_agents(self) -> dict[str, Any]:
        agents = {n.name: self._named_agent(n) for n in self.inv.nodes}
        refs = {name: a.ping.remote() for name, a in agents.items()}
        for name, ref in refs.items():
            try:
                self._ray.get(ref, timeout=AGENT_READY_S)
            except Exception as exc:  # GetTimeoutError, RayActorError: say which node and why
                raise ConfigError(
                    [
                        f"--ray: the node agent on node {name} did not start within {AGENT_READY_S:g} s "
                        f"({type(exc).__name__}: {exc}); are its GPUs held by other Ray work?"
                    ]
                ) from exc
        return agents

    def _named_agent(self, n: Node) -> Any:
        """``_new_agent`` at ``up``: the agents of a previous ``up`` that was killed hold their
        names until Ray has seen their driver die (within seconds); wait for the name."""
        deadline = time.monotonic() + AGENT_READY_S
        while True:
            try:
                return self._new_agent(n)
            except ValueError as exc:  # Ray: "The name ... is already taken"
                if "already taken" not in str(exc) or time.monotonic() > deadline:
                    raise
                log.info("node %s: the previous run's agent still holds its name; waiting", n.name)
                time.sleep(0.5)

    def _new_agent(self, n: Node) -> Any:
        """The agent actor of node ``n``, pinned to it (not waited for)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        engine, host, run_dir, dep, key = self._agent_args
        return (
            self._ray.remote(NodeAgent)
            .options(
                name=f"chimera-agent-{n.name}",
                scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False),
                num_cpus=0,
                num_gpus=n.gpus,  # the node's GPUs are chimera's: Ray schedules nothing else there
                max_concurrency=1000,
                max_restarts=AGENT_RESTARTS,
            )
            .remote(n.name, engine, host, str(run_dir / n.name), dep, n.address, key)
        )

    async def adopt_previous(self, previous_run: Path) -> None:
        """A new ``up``, before the control loop starts anything: each agent sorts the engines
        the previous run (folder ``previous_run``) left on its node against the instances
        placed there (agent.py ``adopt_previous``); their starts then adopt the matching ones."""
        from ray.exceptions import RayError

        dep = self._agent_args[3]
        mine = by_node((f.spec for f in dep.instances.values()), self.inv) if dep is not None else {}
        names = list(self.agents)
        calls = [_aw(self.agents[n].adopt_previous.remote(str(previous_run), mine.get(n, {}))) for n in names]
        for name, got in zip(names, await asyncio.gather(*calls, return_exceptions=True), strict=True):
            if isinstance(got, RayError):
                log.warning("node %s: the previous run's engines were not sorted (%s)", name, type(got).__name__)
            elif isinstance(got, BaseException):
                raise got
            else:
                log.info("node %s: previous run's engines to re-adopt: %s", name, got or "none")

    def start_pumps(self) -> None:
        """One long poll per agent, and the watch for nodes that join, on the running event
        loop (the app calls this once)."""
        for name in self.agents:
            self._pumps.append(asyncio.create_task(self._pump(name), name=f"agent {name}"))
        self._pumps.append(asyncio.create_task(self._watch_joins(), name="ray node joins"))

    # ---- nodes that join after `up` ------------------------------------------------------

    async def _watch_joins(self) -> None:
        """Every ``JOIN_POLL_S``, Ray's node table: a live node chimera does not know gets an
        agent; once it answers, the node counts (``join``)."""
        while True:
            await asyncio.sleep(JOIN_POLL_S)
            try:
                table = await asyncio.to_thread(self._ray.nodes)
            except Exception as exc:  # noqa: BLE001 - the GCS is briefly unreachable: ask again
                log.debug("ray.nodes(): %s", exc)
                continue
            _, added = self.inv.grow([n for n in table if str(n.get("NodeID")) not in self._joining])
            for n in added:
                self._joining.add(n.node_id)
                self._spawn(self._join(n), f"join {n.name}")

    async def _join(self, n: Node) -> None:
        from ray.exceptions import RayError

        log.info("ray node %s at %s joined: %d GPU(s); starting its agent", n.name, n.address, n.gpus)
        agent = self._new_agent(n)
        try:
            await asyncio.wait_for(_aw(agent.ping.remote()), AGENT_READY_S)
        except (TimeoutError, RayError) as exc:
            log.error("node %s: its agent did not start (%s); the node is not used", n.name, type(exc).__name__)
            with contextlib.suppress(Exception):
                self._ray.kill(agent)
            return
        self.join(n, agent)

    def join(self, n: Node, agent: Any) -> None:
        """Node ``n`` (numbered after every GPU counted so far) and its agent, which answered:
        the node counts from now on. The control loop counts its GPUs (``GpusJoined``: the
        scheduler, the KV ledger), relocations may pick it; nothing placed elsewhere moves."""
        if self.inv.find(n.name) is not None:
            return
        self.inv = Inventory((*self.inv.nodes, dataclasses.replace(n, first_gpu=self.inv.gpu_count)))
        self.agents[n.name] = agent
        self._set_node(n.name, True)
        self._post(GpusJoined(self.inv.gpu_node()))
        log.info("node %s counts now: cluster GPUs %s", n.name, list(self.inv.nodes[-1].global_gpus))
        self._pumps.append(asyncio.create_task(self._pump(n.name), name=f"agent {n.name}"))

    async def _pump(self, name: str) -> None:
        from ray.exceptions import ActorUnavailableError, RayError

        agent = self.agents[name]
        while True:
            try:
                # a call to a restarting agent waits for it; on a dead node that is forever
                pid, batch = await asyncio.wait_for(_aw(agent.reports.remote(POLL_S)), POLL_S + REPLY_GRACE_S)
            except TimeoutError:
                if not await self._node_alive(name):
                    self.node_down(name, "its node is dead (its agent stopped answering)")
                    return
                continue
            except ActorUnavailableError:  # restarting or unreachable for a moment: ask again
                if not await self._node_alive(name):  # it cannot restart on a dead node
                    self.node_down(name, "its node is dead and its agent unavailable")
                    return
                await asyncio.sleep(POLL_S)
                continue
            except RayError as exc:  # died (ActorDiedError), or unschedulable on its dead node
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if not await self._restarted(name, agent):
                    self.node_down(name, why)
                    return
                continue
            if self._pids.setdefault(name, pid) != pid:
                await self._readopt(name, agent, pid)
            for r in batch:
                self._deliver(r)

    async def _restarted(self, name: str, agent: Any) -> bool:
        """After an agent call failed: True once Ray has restarted the agent (its node is
        alive), False as soon as the node is gone, or when the agent does not come back within
        ``AGENT_RESTART_S`` or died for good."""
        from ray.exceptions import GetTimeoutError, RayError

        deadline = asyncio.get_running_loop().time() + AGENT_RESTART_S
        while asyncio.get_running_loop().time() < deadline:
            if not await self._node_alive(name):
                return False
            try:
                await asyncio.wait_for(_aw(agent.ping.remote()), POLL_S)
                return True
            except (TimeoutError, GetTimeoutError):
                continue
            except RayError as exc:
                if not isinstance(exc, ActorUnavailable()):
                    log.warning("node %s: its agent died for good (%s)", name, type(exc).__name__)
                    return False
                await asyncio.sleep(POLL_S)
        log.warning("node %s: its agent did not come back within %g s", name, AGENT_RESTART_S)
        return False

    async def _node_alive(self, name: str) -> bool:
        node = self.inv.find(name)
        nodes = await asyncio.to_thread(self._ray.nodes)
        return any(n.get("NodeID") == (node.node_id if node else None) and n.get("Alive") for n in nodes)

    async def _readopt(self, name: str, agent: Any, pid: int) -> None:
        """Ray restarted the agent of ``name`` (a new pid): it takes back the engines it ran;
        those it cannot are reported gone, as a dead node's are."""
        self._pids[name] = pid
        mine = [iid for iid, (node, _) in self.where.items() if node.name == name and self._live.get(iid) == "running"]
        specs = [(localized(self._specs[iid], self.where[iid][1]), iid in self._parked) for iid in mine]
        log.warning("node %s: its agent was restarted (pid %d); re-adopting %s", name, pid, mine or "nothing")
        starting = [
            iid for iid, (node, _) in self.where.items() if node.name == name and self._live.get(iid) == "starting"
        ]
        try:
            failed: dict[str, str] = await agent.readopt.remote(specs)
        except Exception as exc:  # noqa: BLE001 - whatever broke, those engines are not served
            failed = {iid: f"re-adoption failed: {type(exc).__name__}" for iid in mine}
        for iid, why in failed.items():
            self._live.pop(iid, None)
            log.warning("%s: gone with its agent's restart (%s)", iid, why)
            self._post(Exited(iid, None))
        for iid in starting:  # a start in flight died with the old agent
            self._live.pop(iid, None)
            self._post(StartFailed(iid, f"node {name}: its agent restarted during the start"))

    def _deliver(self, r: Report) -> None:
        if isinstance(r, Measure):
            self.observe(r.kind, r.model, r.value, r.label)
            return
        if isinstance(r, Started):
            self._live[r.instance_id] = "running"
        elif isinstance(r, (StartFailed, Exited, WakeFailed)):
            self._live.pop(r.instance_id, None)
        if isinstance(r, Parked):
            self._parked.add(r.instance_id)
        elif isinstance(r, (Started, Woken, StartFailed, Exited, WakeFailed)):
            self._parked.discard(r.instance_id)
        self._post(r)

    def node_down(self, name: str, why: str) -> None:
        """The agent of ``name`` is gone: its instances are reported gone (see the docstring)."""
        if not self.up.get(name, False):
            return
        self._set_node(name, False)
        gone = [iid for iid, (node, _) in self.where.items() if node.name == name and iid in self._live]
        log.error("node %s is down (%s); its instances %s start again on other nodes", name, why, gone or "none")
        for iid in gone:
            how = self._live.pop(iid)
            self._post(StartFailed(iid, f"node {name} is down") if how == "starting" else Exited(iid, None))

    def _set_node(self, name: str, up: bool) -> None:
        self.up[name] = up
        if self._node_state is not None:
            self._node_state(name, up)

    # ---- where an instance runs ----------------------------------------------------------

    def _place(self, spec: InstanceSpec) -> tuple[Node, tuple[int, ...]] | None:
        here = self.where.get(spec.id)
        if here is None:
            node = self.inv.of_gpu(spec.gpus[0])
            here = (node, node.local(spec.gpus))
        if self.up[here[0].name]:
            return here
        live = [n for n in self.inv.nodes if self.up[n.name]]
        placed: dict[str, list[tuple[int, ...]]] = {}
        for iid, (n, g) in self.where.items():
            if iid in self._live:
                placed.setdefault(n.name, []).append(g)
        moved = relocate(len(spec.gpus), live, placed)
        if moved is not None:
            log.warning(
                "%s: node %s is down; starting it on node %s GPU(s) %s (a cross-node move: cold start)",
                spec.id,
                here[0].name,
                moved[0].name,
                list(moved[1]),
            )
        return moved

    def _call(self, spec: InstanceSpec, method: str, *args: Any, on_error: Event | None = None) -> None:
        here = self.where.get(spec.id)
        if here is None or not self.up[here[0].name]:
            if on_error is not None:
                self._post(on_error)
            return
        node, gpus = here
        ref = getattr(self.agents[node.name], method).remote(localized(spec, gpus), *args)
        self._spawn(self._await(ref, node.name, on_error), f"{method} {spec.id}")

    async def _await(self, ref: Any, node: str, on_error: Event | None) -> None:
        from ray.exceptions import RayError

        try:
            await ref
        except RayError as exc:
            log.warning("node %s: agent call failed: %s", node, str(exc).splitlines()[0] if str(exc) else exc)
            if on_error is not None:
                self._post(on_error)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- Effects ------------------------------------------------------------------------

    def start(self, spec: InstanceSpec) -> None:
        placed = self._place(spec)
        if placed is None:
            self._post(StartFailed(spec.id, f"no live node of the Ray cluster has {len(spec.gpus)} GPU(s)"))
            return
        before = self.where.get(spec.id)
        self.where[spec.id] = placed
        self._specs[spec.id] = spec
        node, local = placed
        if before is not None and before != placed or before is None and node.local(spec.gpus) != local:
            # the control loop owns where an instance counts: tell it before the start's events
            self._post(Relocated(spec.id, tuple(node.first_gpu + g for g in local)))
        self._live[spec.id] = "starting"
        self._call(spec, "start", on_error=StartFailed(spec.id, f"node {placed[0].name}: its agent did not answer"))

    def park(self, spec: InstanceSpec, reason: str) -> None:
        self._call(spec, "park", reason)

    def wake(self, spec: InstanceSpec) -> None:
        self._call(spec, "wake")

    def probe(self, spec: InstanceSpec, timeout_s: float) -> None:
        self._call(spec, "probe", timeout_s, on_error=Probed(spec.id, False, "its node's agent did not answer"))

    def kill(self, spec: InstanceSpec, reason: str) -> None:
        self._call(spec, "kill", reason)

    def retargeted(self, instance_id: str, probe_output: str) -> None:
        """A pooled server now holds other weights (orchestrator/pools/): its node's supervisor
        checks its later wakes against this probe output."""
        spec = self._specs.get(instance_id)
        if spec is not None:
            self._call(spec, "retargeted", probe_output)

    def observe(self, kind: str, model: str, value: float, label: str = "") -> None:
        if self._measure is not None:
            self._measure(kind, model, value, label)

    def state_changed(self, view: InstanceView) -> None:
        for observe in self._observers:
            observe(view)

    def add_observer(self, observe: Callable[[InstanceView], None]) -> None:
        self._observers.append(observe)

    async def stop_all(self) -> None:
        for t in [*self._pumps, *self._tasks]:
            t.cancel()
        await asyncio.gather(*self._pumps, *self._tasks, return_exceptions=True)
        live = [a for name, a in self.agents.items() if self.up[name]]
        await asyncio.gather(*(asyncio.wait_for(_aw(a.stop_all.remote()), 30) for a in live), return_exceptions=True)
        for a in self.agents.values():
            try:
                self._ray.kill(a)
            except Exception as exc:  # already gone with its node
                log.debug("ray.kill: %s", exc)

    def kv_effects(self) -> RayKVEffects:
        return RayKVEffects(self)


def ActorUnavailable() -> type[Exception]:  # noqa: N802 - the lazily imported Ray class
    from ray.exceptions import ActorUnavailableError

    return ActorUnavailableError


async def _aw(ref: Any) -> Any:
    return await ref


class RayKVEffects:
    """The KV ledger's effects (kv/runner.py's KVEffects) through the agent of each instance's
    node: the shim channel is a Unix socket on that node."""

    def __init__(self, fx: RayEffects) -> None:
        self.fx = fx

    def _agent(self, iid: str) -> Any | None:
        here = self.fx.where.get(iid)
        return None if here is None or not self.fx.up[here[0].name] else self.fx.agents[here[0].name]

    async def status(self, inst: KVInstance) -> Status | None:
        from ray.exceptions import RayError

        agent = self._agent(inst.id)
        if agent is None:
            return None
        try:
            st: Status | None = await agent.kv_status.remote(inst)
        except RayError:
            return None
        return st

    async def set_limit(self, iid: str, limit_bytes: int, revision: int) -> LimitReply:
        from ray.exceptions import RayError

        agent = self._agent(iid)
        if agent is None:
            raise ShimUnavailable(f"{iid}: its node is down")
        try:
            reply: LimitReply = await agent.kv_set_limit.remote(iid, limit_bytes, revision)
        except RayError as exc:
            raise ShimUnavailable(f"{iid}: its node's agent did not answer ({type(exc).__name__})") from exc
        return reply

    async def flush_cache(self, iid: str) -> None:
        from ray.exceptions import RayError

        agent = self._agent(iid)
        if agent is None:
            return
        try:
            await agent.kv_flush.remote(iid)
        except RayError as exc:
            log.info("kv ledger: %s flush through its agent: %s", iid, type(exc).__name__)

    async def footprint(self, inst: KVInstance) -> tuple[Footprint, ...]:
        from ray.exceptions import RayError

        agent = self._agent(inst.id)
        if agent is None:
            return ()
        try:
            fps: tuple[Footprint, ...] = await agent.kv_footprint.remote(inst)
        except RayError:
            return ()
        return fps
