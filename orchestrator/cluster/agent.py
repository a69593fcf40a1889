"""The node agent: one Ray actor per node, pinned to it (effects.py starts it), that implements
the supervisor's Effects for that node by running the local ``Supervisor`` inside the actor:
spawn, park, wake, probe and kill of engines (their process groups, log files in the node's run
folder, readiness and wake probes), memory per process (NVML, or the sim engine's ledger), the
shim channel and ``set_limit`` for the shims of its GPUs. Engines bind to the node's private
address, never 0.0.0.0.

Plain Python, no Ray import: effects.py wraps the class with ``ray.remote``. Every method is
async (one event loop per actor, so the supervisor's tasks live across calls). What the
supervisor posts (its events, its measurements) waits in a queue that the driver drains with
``reports``, a long poll: an agent that dies is seen there first.

Engines are spawned detached (nobody's child: Ray kills an actor's children with it) and
recorded in the node's state file (``<run>/<node>/engines.json``, with the deployment's engine
key); Ray restarts a dead agent on its live node (``max_restarts``), and the driver then asks
it to ``readopt`` the engines the previous incarnation ran. A new ``up`` asks each new agent to
``adopt_previous`` the engines the previous run left on its node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cumem_shim.types import Status
from orchestrator.config import HostSpec, InstanceSpec
from orchestrator.control.events import Event
from orchestrator.deployment import Deployment
from orchestrator.engines import get_engine
from orchestrator.kv.client import LimitReply
from orchestrator.kv.ledger import Footprint, KVInstance
from orchestrator.kv.runner import HttpKVEffects
from orchestrator.sglang.auth import write_config
from orchestrator.supervisor.statefile import STATE_NAME, read_state
from orchestrator.supervisor.supervisor import Supervisor

log = logging.getLogger("chimera.cluster.agent")


@dataclass(frozen=True)
class Measure:
    """One ``Effects.observe`` measurement the agent's supervisor made (GPU bytes of an engine)."""

    kind: str
    model: str
    value: float
    label: str = ""


Report = Event | Measure


class NodeAgent:
    def __init__(
        self,
        node: str,
        engine: str,
        host: HostSpec,
        run_dir: str,
        deployment: Deployment | None,
        listen_host: str,
        key: str | None = None,
    ) -> None:
        self.node = node
        self._reports: list[Report] = []
        self._ready = asyncio.Event()
        self._run_dir = Path(run_dir)
        # the deployment's engine key, in this node's run folder (the engines' --config file)
        auth = write_config(self._run_dir, key) if key is not None else None
        self.supervisor = Supervisor(
            get_engine(engine),
            host,
            Path(run_dir),
            post=self._post,
            measure=lambda kind, model, value, label: self._post(Measure(kind, model, value, label)),
            deployment=deployment,
            listen_host=listen_host,
            auth=auth,
            detached=True,  # its engines outlive it: Ray restarts it, it re-adopts them
        )
        self._kv = HttpKVEffects(self.supervisor.http, self.supervisor.kv_endpoints, self.supervisor.lifecycle.probe)

    def _post(self, report: Report) -> None:
        self._reports.append(report)
        self._ready.set()

    async def ping(self) -> tuple[str, int]:
        """(node name, the agent's pid): proves the actor is up on its node."""
        return self.node, os.getpid()

    async def reports(self, wait_s: float) -> tuple[int, list[Report]]:
        """(the agent's pid, everything posted since the last call); waits up to ``wait_s``
        for the first one. A new pid tells the driver that Ray restarted this agent."""
        if not self._reports:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait_s)
        out, self._reports = self._reports, []
        return os.getpid(), out

    async def readopt(self, running: list[tuple[InstanceSpec, bool]]) -> dict[str, str]:
        """After Ray restarted this agent: take back the engines the previous incarnation ran
        (``running``: the driver's instances on this node, the node's own GPU indices, and
        whether each is parked), from this node's state file. Returns, for those it could not
        take back, why (the driver reports them gone: the control loop restarts them)."""
        state = await asyncio.to_thread(read_state, self._run_dir / STATE_NAME)
        if state is not None:
            self.supervisor.adoption.load(state)
        failed: dict[str, str] = {}
        for spec, parked in running:
            why = await self.supervisor.adoption.readopt(spec, parked)
            if why is not None:
                log.warning("%s: not re-adopted after the agent's restart: %s", spec.id, why)
                failed[spec.id] = why
        return failed

    async def adopt_previous(self, previous_run: str, specs: dict[str, InstanceSpec]) -> list[str]:
        """A new ``up``, before its control loop starts anything: sort the engines a previous
        run left on this node (``<previous_run>/<node>/engines.json``, this node's own file) as
        the local path does (supervisor/adoption.py ``prepare``): those whose recorded command
        line is what ``specs`` (this node's instances, its own GPU indices) would start and that
        are still the recorded process wait for their instance's start, which adopts them;
        every other one still alive is stopped. Returns the adoptable instance ids."""
        path = Path(previous_run) / self.node / STATE_NAME
        state = await asyncio.to_thread(read_state, path)
        if state is None:
            return []
        await self.supervisor.adoption.prepare(state, path, local=specs)
        return self.supervisor.adoption.adoptable()

    # ---- Effects, for this node's engines (spec.gpus are the node's own CUDA indices) ----

    async def start(self, spec: InstanceSpec) -> None:
        self.supervisor.start(spec)

    async def park(self, spec: InstanceSpec, reason: str) -> None:
        self.supervisor.park(spec, reason)

    async def wake(self, spec: InstanceSpec) -> None:
        self.supervisor.wake(spec)

    async def probe(self, spec: InstanceSpec, timeout_s: float) -> None:
        self.supervisor.probe(spec, timeout_s)

    async def kill(self, spec: InstanceSpec, reason: str) -> None:
        self.supervisor.kill(spec, reason)

    async def retargeted(self, spec: InstanceSpec, probe_output: str) -> None:
        """A pooled server of this node now holds other weights: its later wakes are checked
        against the new model's probe output (orchestrator/pools/retarget.py)."""
        self.supervisor.retargeted(spec.id, probe_output)

    async def stop_all(self) -> None:
        await self.supervisor.stop_all()

    async def log_tail(self, instance_id: str, lines: int = 20) -> str:
        path = self.supervisor.log_path(instance_id)
        try:
            text = await asyncio.to_thread(path.read_text, errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- the KV ledger's effects for the shims of this node ----

    async def kv_status(self, inst: KVInstance) -> Status | None:
        return await self._kv.status(inst)

    async def kv_set_limit(self, iid: str, limit_bytes: int, revision: int) -> LimitReply:
        return await self._kv.set_limit(iid, limit_bytes, revision)

    async def kv_flush(self, iid: str) -> None:
        await self._kv.flush_cache(iid)

    async def kv_footprint(self, inst: KVInstance) -> tuple[Footprint, ...]:
        return await self._kv.footprint(inst)
