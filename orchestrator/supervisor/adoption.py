"""Re-adoption: a restarted chimera-orch takes over the engines a previous one left running,
instead of cold-starting new ones (minutes for a real SGLang server).

``up`` reads the previous run's state file (statefile.py) before the control loop starts, and
``prepare`` sorts its engines: one is *adoptable* when its pid is still the recorded process
(same start time, same command line) and this deployment would start its instance at ``up``
with exactly that command line (same ports and key file); every other one still alive is
stopped at once, so no engine is duplicated or orphaned. When the control loop then starts an
adoptable instance, the supervisor adopts the engine instead of spawning one: ``/model_info``
and ``/health`` answer with the key (a parked one is woken first, its probe output compared
with the recorded one), and it is ``Started`` in milliseconds. One that fails the check is
stopped and a new engine started. Adoptable engines whose instance never starts are stopped
when chimera stops.

This object also keeps the state file of this run: a record per ready engine, rewritten as
engines become ready or exit, removed when chimera stops its engines and kept when it leaves
them running (``--keep-engines-on-exit``, SIGUSR1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil

from orchestrator.config import InstanceSpec
from orchestrator.control.events import Started
from orchestrator.engines.base import LaunchSpec, ShimLaunch
from orchestrator.errors import EngineError
from orchestrator.sglang.api import HEALTH, MODEL_INFO
from orchestrator.sglang.auth import EngineAuth
from orchestrator.supervisor.memory import group_pids, verify_released
from orchestrator.supervisor.process import EngineProcess
from orchestrator.supervisor.statefile import EngineRecord, EngineState, same_process, write_state
from orchestrator.types import Endpoint

if TYPE_CHECKING:
    from orchestrator.supervisor.supervisor import Supervisor

log = logging.getLogger("chimera.supervisor")
CHECK_TIMEOUT_S = 5.0


class Adoption:
    def __init__(self, sup: Supervisor, path: Path, auth: EngineAuth | None) -> None:
        self._sup = sup
        self.path = path
        self.auth = auth
        self._records: dict[str, EngineRecord] = {}  # this run's ready engines
        self._waiting: dict[str, EngineRecord] = {}  # adoptable, until their instance starts
        self._lock = asyncio.Lock()

    async def prepare(
        self, state: EngineState, previous: Path, local: Mapping[str, InstanceSpec] | None = None
    ) -> None:
        """Sort a previous run's engines (module docstring); then this run owns them, and the
        previous state file is removed. ``local``: a node agent's (cluster/agent.py) instances
        of its node, with the node's own GPU indices (what its engines' command lines carry);
        an instance not in it is placed on another node. None: the deployment's own specs."""
        for rec in state.engines:
            gone = same_process(rec)
            if gone is not None:  # nothing of ours to stop
                log.info("%s: previous engine pid %d not adopted: %s", rec.instance_id, rec.pid, gone)
                continue
            why = await self._mismatch(rec, local)
            if why is None:
                self._waiting[rec.instance_id] = rec
                self._sup.reserve_ports(rec.port, rec.nccl_port)
                continue
            log.warning("%s: stopping the engine (pid %d) a previous run left: %s", rec.instance_id, rec.pid, why)
            await self._stop(rec)
        if previous != self.path:  # both absolute (the CLI resolves the run folder)
            with contextlib.suppress(OSError):
                os.unlink(previous)
        await self._write()

    async def _mismatch(self, rec: EngineRecord, local: Mapping[str, InstanceSpec] | None = None) -> str | None:
        dep = self._sup.deployment
        facts = dep.instances.get(rec.instance_id) if dep is not None else None
        if facts is None:
            return "its instance is not in the placements file"
        if not facts.starts_on_up:
            return "its instance does not start at up"
        spec = facts.spec if local is None else local.get(rec.instance_id)
        if spec is None:
            return "its instance is placed on another node"
        shim = self._sup.shim_for(spec, rec.port)
        try:
            launch = await self._sup.launch(spec, rec.port, rec.nccl_port, shim, rec.config_file)
        except Exception as exc:  # noqa: BLE001 - whatever fails building it, it cannot match
            return f"its command line cannot be built now ({exc})"
        if launch.argv != rec.argv:
            return "this deployment would start it with another command line"
        return None

    def adoptable(self) -> list[str]:
        """The instances whose previous engine waits for their start (sorted ids)."""
        return sorted(self._waiting)

    def take(self, instance_id: str) -> EngineRecord | None:
        return self._waiting.pop(instance_id, None)

    async def adopt(self, spec: InstanceSpec, rec: EngineRecord) -> bool:
        """Adopt ``rec``'s engine for ``spec`` and watch it until it exits (True), or stop it
        when it does not serve (False: the caller starts a new engine)."""
        t0 = time.monotonic()
        proc = _process(rec)
        why = await self._serves(rec)
        if why is None and rec.shim_socket is not None:
            why = await self._sup.shim_ready(spec, ShimLaunch(rec.shim_socket, 0, 0), rec.base_url, rec.pid)
        if why is not None:
            log.warning("%s: not adopting pid %d (%s); starting a new engine", spec.id, rec.pid, why)
            await proc.stop()
            return False
        proc.probe_output = rec.probe_output
        self._sup.own(spec.id, proc)
        self._records[spec.id] = rec
        await self._write()
        seconds = time.monotonic() - t0
        log.info("%s: re-adopted engine pid %d on %s in %.3f s", spec.id, rec.pid, rec.base_url, seconds)
        self._sup.post(Started(spec.id, Endpoint(spec.id, rec.base_url, rec.served_name), seconds=seconds))
        await self._sup.watch(spec, proc, rec.shim_socket)
        return True

    async def readopt(self, spec: InstanceSpec, parked: bool) -> str | None:
        """A restarted node agent (cluster/agent.py) takes back the engine this same state file
        lists for ``spec``, which the control loop still counts awake (or parked): the same
        process, answering ``/model_info`` (and ``/health`` unless parked). It is owned and
        watched again, without a ``Started`` (the loop never saw it go). None when adopted,
        else why not (its instance is then reported gone by the caller)."""
        rec = self._records.get(spec.id)
        if rec is None:
            return "no record of it in the node's state file"
        gone = same_process(rec)
        if gone is not None:
            return gone
        try:
            r = await self._sup.http.get(rec.base_url + MODEL_INFO.path, timeout=CHECK_TIMEOUT_S)
            if r.status_code != 200:
                return f"GET {MODEL_INFO.path} answered {r.status_code}"
            if not parked:
                r = await self._sup.http.get(rec.base_url + HEALTH.path, timeout=CHECK_TIMEOUT_S)
                if r.status_code != 200:
                    return f"GET {HEALTH.path} answered {r.status_code}"
        except httpx.HTTPError as exc:
            return f"it does not answer: {exc}"
        if rec.shim_socket is not None and not parked:
            why = await self._sup.shim_ready(spec, ShimLaunch(rec.shim_socket, 0, 0), rec.base_url, rec.pid)
            if why is not None:
                return why
        proc = _process(rec)
        proc.probe_output = rec.probe_output
        self._sup.own(spec.id, proc)
        self._sup.reserve_ports(rec.port, rec.nccl_port)
        log.info("%s: re-adopted engine pid %d on %s after the agent's restart", spec.id, rec.pid, rec.base_url)
        self._sup.spawn_watch(spec, proc, rec.shim_socket)
        return None

    def load(self, state: EngineState) -> None:
        """This node's own state file, read by a restarted agent: its records are this run's."""
        self._records = {r.instance_id: r for r in state.engines}

    async def _serves(self, rec: EngineRecord) -> str | None:
        client = self._sup.http
        try:
            r = await client.get(rec.base_url + MODEL_INFO.path, timeout=CHECK_TIMEOUT_S)
            if r.status_code != 200:
                return f"GET {MODEL_INFO.path} answered {r.status_code}"
            r = await client.get(rec.base_url + HEALTH.path, timeout=CHECK_TIMEOUT_S)
            if r.status_code == 200:
                return None
            # parked (or paused) when the previous run stopped: wake it, check its output
            await self._sup.lifecycle.wake(rec.base_url, rec.probe_output)
        except (httpx.HTTPError, EngineError, ValueError) as exc:
            return f"it does not serve: {exc}"
        return None

    async def record(
        self, instance_id: str, proc: EngineProcess, port: int, nccl_port: int, shim_socket: str | None
    ) -> None:
        """A new engine of this run is ready: add it to the state file."""
        assert proc.pid is not None
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            return  # gone already: its watch reports it
        self._records[instance_id] = EngineRecord(
            instance_id=instance_id,
            pid=proc.pid,
            create_time=created,
            port=port,
            nccl_port=nccl_port,
            argv=proc.spec.argv,
            base_url=proc.spec.base_url,
            served_name=proc.spec.served_name,
            log_path=str(proc.log_path),
            started_at=time.time(),
            config_file=str(self.auth.config_file) if self.auth is not None else None,
            shim_socket=shim_socket,
            probe_output=proc.probe_output,
        )
        await self._write()

    async def forget(self, instance_id: str) -> None:
        if self._records.pop(instance_id, None) is not None:
            await self._write()

    def kept(self) -> set[str]:
        """The instances whose engines may outlive this run (ready ones)."""
        return set(self._records)

    async def close(self, keep: bool) -> None:
        """At shutdown: stop adoptable engines no instance took; keep the state file when
        engines are left running, else remove it."""
        waiting, self._waiting = list(self._waiting.values()), {}
        await asyncio.gather(*(_process(r).stop() for r in waiting), return_exceptions=True)
        if not keep:
            self._records.clear()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            return
        await self._write()

    async def _write(self) -> None:
        if self.auth is None:  # an engine without a key (tests): nothing to re-adopt safely
            return
        state = EngineState(self.auth.key, tuple(self._records.values()))
        async with self._lock:
            try:
                await asyncio.to_thread(write_state, self.path, state)
            except OSError as exc:
                log.warning("cannot write %s: %s", self.path, exc)

    async def _stop(self, rec: EngineRecord) -> None:
        """Stop a previous run's engine that is not adopted: its whole process group, then its
        GPU memory verified released (on the GPUs its command line names), as for an instance
        of this run, before the loop may start another engine on those GPUs."""
        pids = group_pids(rec.pid)
        gpus = _visible_gpus(rec.pid) or _argv_gpus(rec.argv)
        await _process(rec).stop()
        why = await verify_released(self._sup.lifecycle.probe, pids, gpus)
        if why is not None:
            log.error("%s: %s", rec.instance_id, why)


def _visible_gpus(pid: int) -> tuple[int, ...]:
    """The GPUs a stock SGLang engine was given: its ``CUDA_VISIBLE_DEVICES`` (NVML numbering:
    chimera sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; sglang/launch.py), whose ``--base-gpu-id`` is
    0 whatever GPU it runs on. None readable (gone, not ours, unset): ()."""
    try:
        visible = psutil.Process(pid).environ().get("CUDA_VISIBLE_DEVICES", "")
    except (psutil.Error, OSError):
        return ()
    parts = [p.strip() for p in visible.split(",") if p.strip()]
    return tuple(int(p) for p in parts) if parts and all(p.isdigit() for p in parts) else ()


def _argv_gpus(argv: tuple[str, ...]) -> tuple[int, ...]:
    """The GPU indices an engine's command line names (``--base-gpu-id``, ``--tp-size``): the sim
    engine's, which is started with its placement's lowest GPU as its base."""

    def value(*flags: str) -> int | None:
        for i, a in enumerate(argv[:-1]):
            if a in flags and argv[i + 1].isdigit():
                return int(argv[i + 1])
        return None

    base = value("--base-gpu-id")
    return () if base is None else tuple(range(base, base + (value("--tp-size", "--tensor-parallel-size") or 1)))


def _process(rec: EngineRecord) -> EngineProcess:
    spec = LaunchSpec(argv=rec.argv, env={}, base_url=rec.base_url, served_name=rec.served_name)
    return EngineProcess.adopt(rec.instance_id, spec, Path(rec.log_path), rec.pid)
