"""The Effects implementation over real processes: spawns, watches and stops engine instances.

Every task it creates is kept in ``self._tasks`` (never a bare ``create_task``) and reports back
to the control loop as an event. ``stop_all`` leaves no process behind.

Each start is timed per phase (supervisor/phases.py) and its GPU footprint is checked against
the deployment's budget once the server is up (NVML per process, or the sim engine's own
ledger): a ``startup`` log line per instance, ``run_dir/startup.json`` with every instance's
record (rewritten as records complete, e.g. at the first park), the
``chimera_instance_gpu_bytes`` metric, and a warning when a server holds more than its budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from cumem_shim import plugin
from orchestrator.config import HostSpec, InstanceSpec
from orchestrator.control.events import (
    Event,
    Exited,
    Parked,
    ParkFailed,
    Probed,
    Started,
    StartFailed,
    WakeFailed,
    Woken,
)
from orchestrator.deployment import Deployment
from orchestrator.engines.base import Engine, LaunchRequest, LaunchSpec, ShimLaunch
from orchestrator.errors import ChimeraError, EngineError, EngineStartError
from orchestrator.kv.client import ShimProtocolError, ShimUnavailable, combine, wait_ready
from orchestrator.kv.runner import KVEndpoint
from orchestrator.sglang.api import HEALTH, MODEL_INFO
from orchestrator.sglang.auth import EngineAuth
from orchestrator.shapes import KNOWN_MODEL_IDS
from orchestrator.shapes.materialize import dummy_model_dir
from orchestrator.supervisor.adoption import Adoption
from orchestrator.supervisor.lifecycle import Lifecycle
from orchestrator.supervisor.memory import (
    MemoryProbe,
    MemoryReading,
    NvmlMemoryProbe,
    SimMemoryProbe,
    group_pids,
    overshoot,
    verify_released,
)
from orchestrator.supervisor.mps import MpsDaemon, attached
from orchestrator.supervisor.phases import LogFollower, StartupRecord
from orchestrator.supervisor.ports import free_ports
from orchestrator.supervisor.process import EngineProcess
from orchestrator.supervisor.statefile import STATE_NAME
from orchestrator.types import Endpoint, InstanceView

log = logging.getLogger("chimera.supervisor")
# The shim's socket exists once SGLang has built its KV pool, before it serves HTTP: a server that
# is ready but whose shim does not answer within this runs without it (plugin not loaded).
SHIM_READY_TIMEOUT_S = 30.0
# The check of a woken server's output waits this long: the requests held for the wake go
# first (sent together, the probe's prefill delayed a held request's first token on the H200)
WAKE_CHECK_DELAY_S = 0.25


class Supervisor:
    def __init__(
        self,
        engine: Engine,
        host: HostSpec,
        run_dir: Path,
        post: Callable[[Event], None],
        observers: list[Callable[[InstanceView], None]] | None = None,
        measure: Callable[[str, str, float, str], None] | None = None,
        memory_probe: MemoryProbe | None = None,
        deployment: Deployment | None = None,
        auth: EngineAuth | None = None,
        listen_host: str = "127.0.0.1",
        detached: bool = False,
        mps: MpsDaemon | None = None,
    ) -> None:
        self.engine = engine
        self.mps = mps  # host.gpu_sharing mps: every engine attached to this daemon (mps.py)
        # engines spawned as nobody's child (process.py): a node agent's survive its restart
        self.detached = detached
        # the engines' API key: every request of this client carries it (sglang/auth.py)
        self.auth = auth
        # the address engines bind to: loopback, or a Ray node's private address (cluster/agent.py)
        self.listen_host = listen_host
        self.host = host
        self.run_dir = run_dir
        self._post = post
        self._observers = observers or []
        self._procs: dict[str, EngineProcess] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # instances whose output after a wake is being checked: a park waits for it (the probe,
        # paused half-way by the park's retract, would keep the server from going idle)
        self._checking: dict[str, asyncio.Event] = {}
        self._ports: set[int] = set()
        # engines speak plain HTTP on loopback: verify=False skips loading a CA bundle that is
        # never used (~80 ms per client, on the restart path of the control plane)
        self._client = httpx.AsyncClient(
            trust_env=False, verify=False, headers=auth.headers() if auth is not None else None
        )
        self._measure = measure
        self._starts: dict[str, float] = {}
        probe = memory_probe or (SimMemoryProbe(self._client) if engine.name == "sim" else NvmlMemoryProbe())
        self.lifecycle = Lifecycle(self._client, probe)
        # which instances the shim backs and with what limits (None: none, as in mode static)
        self.deployment = deployment
        self.kv_endpoints: dict[str, KVEndpoint] = {}
        self._socket_dir: str | None = None
        self._plugin_dir: str | None = None  # "" = chimera's installed entry point serves
        self.startups: dict[str, StartupRecord] = {}  # by instance id, the latest start of each
        self._startups_lock = asyncio.Lock()  # one writer of startup.json at a time
        self.keep_engines = False  # stop_all leaves ready engines running (an upgrade)
        self.adoption = Adoption(self, run_dir / STATE_NAME, auth)

    @property
    def http(self) -> httpx.AsyncClient:
        """The supervisor's client for engines' control routes (closed by ``stop_all``)."""
        return self._client

    # ---- Effects ------------------------------------------------------------------------

    def start(self, spec: InstanceSpec) -> None:
        self._spawn_task(self._start(spec), f"start {spec.id}", lambda why: StartFailed(spec.id, why))

    def park(self, spec: InstanceSpec, reason: str) -> None:
        self._spawn_task(self._park(spec), f"park {spec.id}")

    def wake(self, spec: InstanceSpec) -> None:
        self._spawn_task(self._wake(spec), f"wake {spec.id}", lambda why: WakeFailed(spec.id, why))

    def probe(self, spec: InstanceSpec, timeout_s: float) -> None:
        self._spawn_task(self._probe(spec, timeout_s), f"probe {spec.id}")

    def kill(self, spec: InstanceSpec, reason: str) -> None:
        proc = self._procs.get(spec.id)
        if proc is not None:
            log.warning("%s: killing its process group (%s)", spec.id, reason)
            proc.kill()  # its start task's wait_exit returns: memory checked, then Exited

    def observe(self, kind: str, model: str, value: float, label: str = "") -> None:
        if self._measure is not None:
            self._measure(kind, model, value, label)

    def state_changed(self, view: InstanceView) -> None:
        for observe in self._observers:
            observe(view)

    async def stop_all(self) -> None:
        """Stop every engine (SIGTERM, then SIGKILL of its group after a grace), verify each
        group is gone, and remove the state file. With ``keep_engines`` (an upgrade): leave the
        ready engines running for the next ``up`` to re-adopt, stop only those not ready."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        kept = self.adoption.kept() if self.keep_engines else set()
        going = {iid: p for iid, p in self._procs.items() if iid not in kept}
        groups = {p.pid for p in going.values() if p.pid is not None}
        await asyncio.gather(*(p.stop() for p in going.values()), return_exceptions=True)
        await self.adoption.close(keep=bool(kept))  # adoptable engines no instance took: stopped
        left = {pid for g in groups for pid in group_pids(g)}
        if left:
            log.error("engine processes still alive after stop: %s", sorted(left))
        await self._client.aclose()
        if self._socket_dir is not None and not kept:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self.mps is not None and not kept:  # kept engines stay attached to the running daemon
            await self.mps.quit()

    def watch_mps(self) -> None:
        """Restart the MPS daemon when it dies, killing every engine first (mps.py ``watch``):
        each exits and is restarted after its backoff, attached to the new daemon."""
        if self.mps is not None:
            self._spawn_task(self.mps.watch(self.kill_every_engine), "mps daemon")

    def kill_every_engine(self, why: str) -> None:
        for iid, proc in self._procs.items():
            log.warning("%s: killing its process group (%s)", iid, why)
            proc.kill()  # its watch (or start) reports Exited (StartFailed): restart after backoff

    # ---- internals -----------------------------------------------------------------------

    def log_path(self, instance_id: str) -> Path:
        safe = instance_id.replace("/", "_").replace("@", "-").replace("+", "_")
        return self.run_dir / f"{safe}.log"

    def _spawn_task(
        self, coro: Coroutine[Any, Any, None], name: str, on_error: Callable[[str], Event] | None = None
    ) -> None:
        """Run ``coro`` as a kept task. An exception nothing inside it expected is logged, and
        ``on_error`` turns it into the event the loop waits for (a start that raised must end in
        StartFailed, or the instance would stay ``starting`` forever)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if t.cancelled() or (exc := t.exception()) is None:
                return
            log.error("%s failed unexpectedly", name, exc_info=exc)
            if on_error is not None:
                self._post(on_error(f"{name} failed unexpectedly: {type(exc).__name__}: {exc}"))

        task.add_done_callback(done)

    async def _model_dir(self, spec: InstanceSpec) -> str | None:
        """The dummy-weight model directory (config.json + local tokenizer), built once."""
        m = spec.model
        if not (
            self.engine.needs_model_dir and m.load_format == "dummy" and model_path_is_shape(m.model_path, m.shape.name)
        ):
            return None
        return str(await asyncio.to_thread(dummy_model_dir, m.shape.name))

    def shim_for(self, spec: InstanceSpec, port: int) -> ShimLaunch | None:
        facts = self.deployment.instances.get(spec.id) if self.deployment is not None else None
        if facts is None or not facts.shim:
            if facts is not None and facts.shim_refusal is not None:
                log.info("%s: %s", spec.id, facts.shim_refusal)
            return None
        # a Unix socket path must stay under 108 bytes: not in the run directory, but in a
        # private (0700) directory of this supervisor's, removed by stop_all
        if self._socket_dir is None:
            self._socket_dir = tempfile.mkdtemp(prefix="chimera-")
        sock = os.path.join(self._socket_dir, f"{port}.sock")
        if self._plugin_dir is None:  # once: a scan of the installed distributions
            self._plugin_dir = "" if plugin.registered() else str(plugin.entry_point_dir(self.run_dir / "shim-plugin"))
        return ShimLaunch(
            socket=sock,
            limit_bytes=facts.start_limit_bytes,
            virtual_kv_bytes=facts.ceiling_bytes,
            entry_point_dir=self._plugin_dir or None,
            tp_size=spec.model.tp_size,
        )

    async def shim_ready(self, spec: InstanceSpec, shim: ShimLaunch, base_url: str, pid: int | None) -> str | None:
        """None once the shim answers (the ledger may reach it), else why the start failed."""
        try:  # every TP rank's shim: a rank without it would run with a fixed shard
            sts = await asyncio.gather(*(wait_ready(p, SHIM_READY_TIMEOUT_S) for p in shim.sockets))
            st = combine(sts)
        except (ShimUnavailable, ShimProtocolError) as exc:
            return (
                f"the server is up but its KV shim is not ({exc}); is cumem_shim importable "
                "by the server's Python? (mode static runs without it)"
            )
        log.info(
            "%s: KV shim up on %d rank(s): %d tokens virtual, limit %.2f GiB per GPU",
            spec.id,
            len(shim.sockets),
            st.capacity_tokens,
            st.limit_bytes / 2**30,
        )
        self.kv_endpoints[spec.id] = KVEndpoint(base_url, shim.socket, shim.tp_size, pid, spec.gpus)
        return None

    def post(self, event: Event) -> None:
        self._post(event)

    def spawn_watch(self, spec: InstanceSpec, proc: EngineProcess, shim_socket: str | None) -> None:
        """Watch a re-adopted engine as a kept task (adoption.py ``readopt``)."""
        self._spawn_task(self.watch(spec, proc, shim_socket), f"watch {spec.id}")

    def own(self, instance_id: str, proc: EngineProcess) -> None:
        """``proc`` (an adopted engine) is now this instance's."""
        self._procs[instance_id] = proc

    def reserve_ports(self, *ports: int) -> None:
        self._ports.update(ports)

    def _config_file(self) -> str | None:
        return str(self.auth.config_file) if self.auth is not None else None

    async def launch(
        self, spec: InstanceSpec, port: int, nccl_port: int, shim: ShimLaunch | None, config_file: str | None
    ) -> LaunchSpec:
        """The engine's command line and environment for these ports: pure but for the model
        directory, so a re-adopted engine's recorded command line can be compared with it."""
        facts = self.deployment.instances.get(spec.id) if self.deployment is not None else None
        launch = self.engine.launch_spec(
            LaunchRequest(
                instance=spec,
                host=self.host,
                port=port,
                nccl_port=nccl_port,
                listen_host=self.listen_host,
                model_dir=await self._model_dir(spec),
                shim=shim,
                max_total_tokens=facts.max_total_tokens if facts is not None else None,
                mem_fraction_static=facts.launch_mem_fraction if facts is not None else None,
                cuda_graph_max_bs=facts.cuda_graph_max_bs if facts is not None else None,
                max_running_requests=facts.max_running_requests if facts is not None else None,
                config_file=config_file,
            )
        )
        return replace(launch, env=attached(launch.env, self.mps))

    async def _start(self, spec: InstanceSpec) -> None:
        rec = self.adoption.take(spec.id)
        if rec is not None and await self.adoption.adopt(spec, rec):
            return  # a previous chimera-orch's engine serves it
        port, nccl_port = free_ports(2, host=self.listen_host, exclude=self._ports)
        self._ports.update((port, nccl_port))
        try:
            launch = await self.launch(spec, port, nccl_port, shim := self.shim_for(spec, port), self._config_file())
        except (ChimeraError, OSError, ImportError) as exc:
            self._post(StartFailed(spec.id, f"cannot prepare the engine command: {exc}"))
            return
        proc = EngineProcess(spec.id, launch, self.log_path(spec.id))
        self._procs[spec.id] = proc
        follower = LogFollower.at_end(proc.log_path)
        t0 = time.monotonic()
        record = StartupRecord(spec.id, spec.model.name, t0)
        try:
            await proc.spawn(self.detached)
            record.marks["spawned"] = time.monotonic()
            log.info("%s: spawned pid %s, log %s", spec.id, proc.pid, proc.log_path)
            await proc.wait_ready(self._client, on_wait=lambda _: follower.poll(time.monotonic()))
        except EngineStartError as exc:
            await proc.stop()
            self._post(StartFailed(spec.id, str(exc)))
            return
        except OSError as exc:
            self._post(StartFailed(spec.id, f"cannot spawn {launch.argv[0]}: {exc}"))
            return
        record.marks["probed"] = time.monotonic()
        follower.poll(proc.ready_at or record.marks["probed"])  # lines since the last poll
        record.marks.update(follower.seen)
        if proc.ready_at is not None:
            record.marks["ready"] = proc.ready_at
        # before the shim is handed to the ledger: its limit is still the start limit
        await self._check_footprint(spec, proc, launch.base_url, record)
        self.startups[spec.id] = record
        log.info("%s: startup %s", spec.id, json.dumps(record.as_dict()))
        await self._write_startups()
        if shim is not None and (why := await self.shim_ready(spec, shim, launch.base_url, proc.pid)):
            await proc.stop()
            self._post(StartFailed(spec.id, why))
            return
        self._post(
            Started(spec.id, Endpoint(spec.id, launch.base_url, launch.served_name), seconds=time.monotonic() - t0)
        )
        await self.adoption.record(spec.id, proc, port, nccl_port, shim.socket if shim is not None else None)
        await self.watch(spec, proc, shim.socket if shim is not None else None)

    async def watch(self, spec: InstanceSpec, proc: EngineProcess, shim_socket: str | None) -> None:
        """Until the ready engine exits: then clean up after it and report ``Exited`` (unless a
        failed wake stopped it and reports that itself)."""
        rc = await proc.wait_exit()
        self.kv_endpoints.pop(spec.id, None)
        await self.adoption.forget(spec.id)
        if shim_socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(shim_socket)
        if proc.condemned:  # stopped by a failed wake, which reports it (WakeFailed)
            return
        log.warning("%s: engine exited with code %s; last lines:\n%s", spec.id, rc, proc.log_tail())
        # the leader is gone; children of its group (SGLang's scheduler) may hold GPU memory
        # still: stop them and check before the loop (and the KV ledger) count it as free
        await self._kill(spec, proc)
        self._post(Exited(spec.id, rc))

    async def _probe(self, spec: InstanceSpec, timeout_s: float) -> None:
        """GET /model_info: SGLang's HTTP server answers it without the scheduler (also while
        paused), so a failure means the server process itself is stuck or gone; then GET /health,
        which fails while generation is paused or memory released (by anyone but chimera: the
        loop probes awake instances only)."""
        proc = self._procs.get(spec.id)
        if proc is None:
            self._post(Probed(spec.id, False, "no process"))
            return
        try:
            r = await self._client.get(proc.spec.base_url + MODEL_INFO.path, timeout=timeout_s)
        except httpx.HTTPError as exc:
            self._post(Probed(spec.id, False, f"GET {MODEL_INFO.path}: {type(exc).__name__} within {timeout_s:g} s"))
            return
        if r.status_code != 200:
            self._post(Probed(spec.id, False, f"GET {MODEL_INFO.path} answered {r.status_code}"))
            return
        # /model_info answers while paused or released; SGLang's /health generates one token, so
        # it fails for a server paused or released behind chimera's back (scrape.py)
        try:
            r = await self._client.get(proc.spec.base_url + HEALTH.path, timeout=timeout_s)
        except httpx.HTTPError as exc:
            self._post(Probed(spec.id, False, f"GET {HEALTH.path}: {type(exc).__name__} within {timeout_s:g} s"))
            return
        self._post(Probed(spec.id, r.status_code == 200, f"GET {HEALTH.path} answered {r.status_code}"))

    async def _park(self, spec: InstanceSpec) -> None:
        proc = self._procs[spec.id]
        if (checking := self._checking.get(spec.id)) is not None:
            await checking.wait()  # at most the probe's own timeout
        expected = spec.model.shape.weight_bytes // spec.model.tp_size
        try:
            assert proc.pid is not None
            res = await self.lifecycle.park(proc.spec.base_url, proc.pid, spec.gpus, expected)
        except (EngineError, httpx.HTTPError, OSError, ImportError) as exc:
            log.warning("%s: park failed: %s", spec.id, exc)
            self._post(ParkFailed(spec.id, str(exc)))
            return
        how = "per process" if res.after.per_process else "device-level"
        log.info(
            "%s: parked in %.3f s, freed %.2f GiB (%s reading)", spec.id, res.seconds, res.freed_bytes / 2**30, how
        )
        record = self.startups.get(spec.id)
        if record is not None and record.first_park_s is None:
            record.first_park_s = res.seconds
            await self._write_startups()
        self._post(Parked(spec.id, res.seconds, res.freed_bytes))

    async def _wake(self, spec: InstanceSpec) -> None:
        proc = self._procs[spec.id]
        try:
            woken = await self.lifecycle.resume(proc.spec.base_url)
        except (EngineError, httpx.HTTPError, ValueError) as exc:
            log.warning("%s: wake failed: %s; stopping it (it is restarted after a backoff)", spec.id, exc)
            # a half-woken server holds memory the ledger would otherwise give away: kill it,
            # check its memory is back, then report
            proc.condemned = True
            why = await self._kill(spec, proc)
            self._post(WakeFailed(spec.id, str(exc) + (f"; {why}" if why else "")))
            return
        log.info("%s: woken in %s", spec.id, woken.describe())
        self._post(Woken(spec.id, woken.seconds))
        checked = self._checking[spec.id] = asyncio.Event()
        try:
            await self._check_after_wake(spec, proc)
        finally:
            checked.set()
            if self._checking.get(spec.id) is checked:
                del self._checking[spec.id]

    async def _check_after_wake(self, spec: InstanceSpec, proc: EngineProcess) -> None:
        # the output checked beside the first requests: a wrong one stops the server (its
        # requests in flight get the engine-died envelope; watch() reports Exited, and the loop
        # restarts it after a backoff)
        await asyncio.sleep(WAKE_CHECK_DELAY_S)
        try:
            probe_s = await self.lifecycle.check(proc.spec.base_url, proc.probe_output)
        except (EngineError, httpx.HTTPError, ValueError) as exc:
            if proc.returncode is None:
                log.error("%s: after the wake %s; stopping it", spec.id, exc)
                await proc.stop()
            return
        log.info("%s: output after the wake checked in %.3f s", spec.id, probe_s)

    async def _kill(self, spec: InstanceSpec, proc: EngineProcess) -> str | None:
        """Stop the instance's whole process group and verify its GPU memory is released
        (memory.verify_released); None when it is, else why not (logged as an error)."""
        pids = group_pids(proc.pid) if proc.pid is not None else set()
        await proc.stop()
        why = await verify_released(self.lifecycle.probe, pids, spec.gpus)
        if why is not None:
            log.error("%s: %s", spec.id, why)
        return why

    async def _check_footprint(
        self, spec: InstanceSpec, proc: EngineProcess, base_url: str, record: StartupRecord
    ) -> None:
        """Read the server's GPU memory and compare it with its budget (summed over its GPUs);
        an overshoot is logged as a warning, never fatal: the server is up and serving."""
        facts = self.deployment.instances.get(spec.id) if self.deployment is not None else None
        if facts is None or proc.pid is None:
            return
        budget = facts.start_budget_bytes * len(spec.gpus)
        try:
            reading = await self.lifecycle.probe.read(proc.pid, spec.gpus, base_url)
        except (httpx.HTTPError, OSError, ImportError, KeyError, ValueError) as exc:
            log.warning("%s: cannot read its GPU memory after start: %s", spec.id, exc)
            return
        record.budget_bytes, record.measured_bytes = budget, reading.bytes
        record.per_process = reading.per_process
        self.observe("instance_gpu_bytes_budget", spec.model.name, budget, spec.id)
        self.observe("instance_gpu_bytes_measured", spec.model.name, reading.bytes, spec.id)
        _log_footprint(spec.id, budget, reading)

    async def _write_startups(self) -> None:
        async with self._startups_lock:  # the body taken inside: the last write is the newest
            body = json.dumps({iid: r.as_dict() for iid, r in self.startups.items()}, indent=1)
            try:
                await asyncio.to_thread(_write_atomic, self.run_dir / "startup.json", body)
            except OSError as exc:
                log.warning("cannot write %s/startup.json: %s", self.run_dir, exc)

    def retargeted(self, instance_id: str, probe_output: str) -> None:
        """A pooled server now holds other weights (orchestrator/pools/): its probe output, which
        a later wake is checked against, is the new model's."""
        proc = self._procs.get(instance_id)
        if proc is not None:
            proc.probe_output = probe_output

    def add_observer(self, observe: Callable[[InstanceView], None]) -> None:
        self._observers.append(observe)


def model_path_is_shape(model_path: str, shape_name: str) -> bool:
    """True when the model path names a shipped shape (known id or shape name), i.e. there is
    no directory of the user's to load."""
    return model_path in KNOWN_MODEL_IDS or model_path == shape_name


def _log_footprint(instance_id: str, budget: int, reading: MemoryReading) -> None:
    over = overshoot(budget, reading)
    gib = 2**30
    if over is None:
        log.info(
            "%s: GPU memory %.2f GiB (device-level reading, other servers in it); budget %.2f GiB not checked",
            instance_id,
            reading.bytes / gib,
            budget / gib,
        )
    elif over > 0:
        log.warning(
            "%s: OVER BUDGET: holds %.2f GiB of GPU memory, %.2f GiB over its budget of "
            "%.2f GiB; colocated servers may run out of memory",
            instance_id,
            reading.bytes / gib,
            over / gib,
            budget / gib,
        )
    else:
        log.info(
            "%s: GPU memory %.2f GiB within its budget of %.2f GiB", instance_id, reading.bytes / gib, budget / gib
        )


def _write_atomic(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(body)
    os.replace(tmp, path)
