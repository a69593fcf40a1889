"""Wires one chimera process together: control loop + supervisor + proxy (uvicorn), and tears
it all down on SIGINT/SIGTERM without leaving an engine process behind."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from rich.console import Console
from starlette.applications import Starlette

from cumem_shim.types import Status
from orchestrator.config import Config
from orchestrator.control.events import Tick
from orchestrator.control.loop import ControlLoop, cancel_and_wait
from orchestrator.control.router import Router
from orchestrator.control.scrape import ROUND_S as SCRAPE_ROUND_S
from orchestrator.control.scrape import Scraper
from orchestrator.dashboard.routes import Dashboard
from orchestrator.dataplane.pool import ProxyPool, QuietServer, reuseport_socket
from orchestrator.deployment import Deployment, derive
from orchestrator.engines import get_engine
from orchestrator.env import Env, engine_environ
from orchestrator.errors import ConfigError
from orchestrator.handover import hand_over
from orchestrator.kv.ledger import KVInstance, Ledger
from orchestrator.kv.runner import HttpKVEffects, KVEffects, KVRunner
from orchestrator.kv.wiring import GONE, GpuCapacity, kv_instances
from orchestrator.lora.client import HttpAdapterClient
from orchestrator.lora.residency import Residency
from orchestrator.lora.router import AdapterRouter
from orchestrator.metrics.gpu_seconds import GpuSeconds
from orchestrator.metrics.host_memory import HostBackups
from orchestrator.metrics.registry import ChimeraMetrics
from orchestrator.pools.holdings import Holdings
from orchestrator.pools.pinned.client import PinnedCache, PinnedHolder
from orchestrator.pools.retarget import HttpRetargeter
from orchestrator.pools.router import PoolRouter, pool_costs
from orchestrator.pools.staging import Stager
from orchestrator.progress import StartupProgress
from orchestrator.proxy import create_app
from orchestrator.proxy.admin import admin_routes
from orchestrator.proxy.admission import AdmissionGate
from orchestrator.proxy.auth import ClientKeys
from orchestrator.proxy.connections import raise_nofile
from orchestrator.proxy.drain import quiesce
from orchestrator.proxy.limits import RequestLimits, uvicorn_http_options
from orchestrator.proxy.upstream import Limits
from orchestrator.sglang.auth import new_key, write_config
from orchestrator.sockets import unix_socket_dir
from orchestrator.supervisor.mps import MpsError, attached
from orchestrator.supervisor.mps import for_run as mps_for_run
from orchestrator.supervisor.statefile import read_state, run_key
from orchestrator.supervisor.supervisor import Supervisor
from orchestrator.types import InstanceState, InstanceView, LoadSample, ModelView

if TYPE_CHECKING:  # `up --ray` only: its modules are imported when it runs (start-up time)
    from orchestrator.cluster.effects import RayEffects
    from orchestrator.cluster.nodes import Inventory

log = logging.getLogger("chimera")


TICK_S = 1.0  # idle eviction is decided on this period (thresholds are tens of seconds)


async def _ticker(control: ControlLoop, gpu_seconds: GpuSeconds) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        control.post(Tick())
        gpu_seconds.advance()


async def serve(
    cfg: Config,
    engine_name: str,
    host: str,
    port: int,
    run_dir: Path,
    hold_timeout_s: float,
    console: Console,
    admin_key: str | None = None,
    adopt_from: Path | None = None,
    keep_engines: bool = False,
    cluster: Inventory | None = None,
    client_keys: ClientKeys | None = None,
    proxies: int = 1,
    primary_share: float | None = None,
    sock: socket.socket | None = None,
    sock_outlives_us: bool = False,
) -> int:
    """Serve until SIGINT/SIGTERM (or SIGUSR1: stop, leaving the engines running). ``adopt_from``:
    a previous run's state file whose engines are re-adopted (supervisor/adoption.py);
    ``keep_engines``: leave the ready engines running on every exit, for the next ``up``.
    ``cluster``: the Ray cluster's nodes (``up --ray``): engines run under node agents
    (orchestrator/cluster/) instead of this process's supervisor, with the same API key; an agent
    that Ray restarts re-adopts its engines, and so do a new ``up``'s agents: ``adopt_from`` is
    then the previous run's folder, one state file per node (docs/multi-node.md).
    ``proxies``: proxy processes on ``port`` (SO_REUSEPORT), this one and ``proxies - 1``
    workers asking this control loop for every request's instance (orchestrator/dataplane/).
    ``sock``: the proxy's socket, already listening (the CLI binds it before its imports, so
    clients wait instead of being refused; with SO_REUSEPORT when ``proxies`` > 1); None = bind
    ``host:port`` here. ``sock_outlives_us``: ``sock`` was handed over by systemd (socket
    activation) and stays open after this process: a stop leaves new connections in its
    backlog for the next chimera instead of dropping them."""
    metrics = ChimeraMetrics()
    env = Env.read()
    # host.gpu_sharing: the MPS daemon started before any engine (supervisor/mps.py)
    ray = cluster is not None
    try:
        mps, sharing = await mps_for_run(cfg.host.gpu_sharing, engine_name, run_dir, env.mps_control, ray)
    except MpsError as exc:
        raise ConfigError([f"{exc}; host.gpu_sharing: timeslice runs without MPS"]) from None
    gpu_node = cluster.gpu_node() if cluster is not None else ()
    # every runtime fact of the placements file, read once
    dep = derive(cfg, serial_starts=env.serial_starts, gpu_node=gpu_node, sharing=sharing)
    # pools with stage: pinned: the holder's client (its process starts on first use, stops in `finally`)
    holder = _pinned_holder(cfg, engine_name, run_dir, attached(engine_environ(os.environ), mps), ray)
    # the key only chimera knows: every engine is started with it, every call to one carries it;
    # a run that re-adopts engines keeps their key
    if cluster is None:
        previous = read_state(adopt_from) if adopt_from is not None else None
        key = previous.key if previous is not None and previous.engines else None
    else:  # adopt_from is the previous run's folder: one state file per node
        previous, key = None, run_key(adopt_from) if adopt_from is not None else None
    auth = write_config(run_dir, key if key is not None else new_key())

    gpu_seconds = GpuSeconds(dep.instances, dep.gpu_bytes, metrics.gpu_seconds)  # by memory share
    host_backups = HostBackups(dep.instances, metrics.host_memory)  # parked weights in host RAM

    def publish(view: InstanceView) -> None:
        metrics.set_instance_state(view.model, view.id, view.gpus, str(view.state))
        gpu_seconds.observe(view)
        host_backups.observe(view)

    control: ControlLoop
    supervisor: Supervisor | RayEffects
    local: Supervisor | None = None  # this host's supervisor: the one that can leave engines up
    if cluster is None:
        local = Supervisor(
            get_engine(engine_name),
            cfg.host,
            run_dir,
            post=lambda ev: control.post(ev),
            observers=[publish],
            measure=metrics.record,
            deployment=dep,
            auth=auth,
            mps=mps,
        )
        local.watch_mps()
        local.keep_engines = keep_engines
        if previous is not None and adopt_from is not None:
            await local.adoption.prepare(previous, adopt_from)  # before the loop starts anything
        supervisor = local
    else:
        from orchestrator.cluster.effects import RayEffects

        supervisor = RayEffects(
            cluster,
            engine_name,
            cfg.host,
            run_dir,
            post=lambda ev: control.post(ev),
            observers=[publish],
            measure=metrics.record,
            deployment=dep,
            node_state=metrics.set_node_up,
            key=auth.key,
        )
        if adopt_from is not None:
            await supervisor.adopt_previous(adopt_from)  # before the loop starts anything
        supervisor.start_pumps()
    control = ControlLoop(dep, supervisor)
    kv = _kv_runner(dep, control, supervisor, metrics, gpu_seconds)  # modes elastic/full: the KV ledger's task
    progress = StartupProgress(
        console,
        [i for m in control.models() for i in m.instances],
        start_on_up={iid for iid, f in dep.instances.items() if f.serves_on_up},
    )
    supervisor.add_observer(progress.observe)
    for m in control.models():
        for v in m.instances:
            publish(v)
    router, switching = _router(cfg, dep, control, supervisor, auth.headers(), metrics, holder)
    dashboard = Dashboard(dep, router.models, metrics)  # the page at / and /dashboard
    supervisor.add_observer(dashboard.observe)
    detach_dashboard = dashboard.history.attach()  # the scheduler's decisions, off its log

    app = create_app(
        router,
        metrics,
        hold_timeout_s=hold_timeout_s,
        extra_routes=admin_routes(control, admin_key) + dashboard.routes(),
        upstream_limits=Limits(first_byte_s=env.upstream_first_byte_s, idle_s=env.upstream_idle_s),
        max_body_bytes=env.max_body_bytes,
        engine_headers=auth.headers(),
        client_keys=client_keys,
    )
    gate = _admission(dep, app, kv)  # mode full: the proxy's admission gate
    # the one /v1/loads poller (liveness in every mode); servers mid-switch are left out
    scraper = _scraper(control, kv, gate, auth.headers(), switching)
    raise_nofile()  # before the budget of client connections is derived from it
    limits = RequestLimits.from_env(env)
    http = uvicorn_http_options(limits)  # 431, 408, 503 below the app
    server = QuietServer(
        # ws="none": the proxy serves no websocket, and uvicorn's "auto" imports `websockets`
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="on", access_log=False, ws="none", **http
        )
    )
    # the workers route through the same Router (adapters, pools) and admission gate as this proxy
    pool = (
        ProxyPool(proxies - 1, run_dir, host, port, hold_timeout_s, cfg, router, app, gate, primary_share)
        if proxies > 1
        else None
    )
    if pool is not None:
        dashboard.proxies = pool.proxy_readings  # every process's requests on the page
    if sock is not None:
        sockets: list[socket.socket] | None = [sock]
    else:
        sockets = [reuseport_socket(host, port)] if pool is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:  # the proxy stops in `finally`: new connections first (drain.py)
        if stop.is_set():  # second Ctrl-C: don't wait for in-flight requests
            server.force_exit = True
            server.should_exit = True
        stop.set()

    def on_detach() -> None:  # SIGUSR1: an upgrade; the next `up` re-adopts the engines
        if local is not None:
            local.keep_engines = True
        on_signal()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGUSR1, on_detach)

    console.print(
        f"[bold]chimera[/] {engine_name} engine, {len(cfg.instances)} instance(s) of "
        f"{len(cfg.models)} model(s); engine logs in {run_dir}/"
    )
    control_task = asyncio.create_task(control.run(), name="control-loop")
    ticker_task = asyncio.create_task(_ticker(control, gpu_seconds), name="ticker")
    server_task = asyncio.create_task(server.serve(sockets), name="proxy")
    kv_task = asyncio.create_task(kv.run(), name="kv-ledger") if kv else None
    scrape_task = asyncio.create_task(scraper.run(), name="scraper")
    for t in (control_task, ticker_task, kv_task, scrape_task):
        if t is not None:
            t.add_done_callback(_report_death)
    try:
        if pool is not None:
            await pool.start(sockets[0] if sockets else None)
        with progress:
            waits = {asyncio.create_task(progress.settled_event.wait()), asyncio.create_task(stop.wait())}
            await asyncio.wait({server_task, *waits}, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        if server_task.done():
            console.print(f"[bold red]the proxy could not start on {host}:{port}[/]")
            return 1
        if not stop.is_set():
            _summary(console, control, router, host, port, _startup_seconds())
            failed = nothing_serves(control.models())
            if failed is not None:  # exit non-zero: a supervisor (systemd, Kubernetes) must see it
                console.print(f"[bold red]every model failed to start[/]; exiting with status 1\n{failed}")
                return 1
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({server_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
    finally:
        keep = local is not None and local.keep_engines
        console.print(
            "[bold]stopping[/]: proxy, then "
            + ("the control plane only: ready engines stay up for the next `up`" if keep else "every engine process")
        )
        if pool is not None:
            await pool.stop()
        if holder is not None:
            holder.stop()
        if server.started and not server.force_exit:
            # a stop that keeps the engines expects the next `up`: a holder keeps the listening
            # socket for it (handover.py), and clients wait in its backlog meanwhile
            handed = (
                keep
                and pool is None
                and sock is not None
                and not sock_outlives_us
                and hand_over(sock, run_dir, env.handover_s)
            )
            # no client let in is lost: new connections dropped (retried by the client's
            # kernel), or left in the backlog of a socket that outlives this process (socket
            # activation, handover) for the next chimera; the accept queue emptied and request
            # heads read before uvicorn closes
            await quiesce(server, drop_new=not (sock_outlives_us or handed))
        server.should_exit = True
        await asyncio.wait({server_task}, timeout=10)
        await cancel_and_wait(ticker_task)
        if kv_task is not None:
            await cancel_and_wait(kv_task)
        await cancel_and_wait(scrape_task)
        await control.shutdown()
        await cancel_and_wait(control_task)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        detach_dashboard()
        kept = local.adoption.kept() if local is not None and keep else set()
        if local is not None and kept:
            console.print(
                f"[green]stopped[/]: {len(kept)} engine(s) left running ({local.adoption.path}); "
                "the next `up` with this run folder re-adopts them"
            )
        else:
            console.print("[green]stopped[/]: no engine process left")
    return 0


def _startup_seconds() -> float | None:
    """Seconds since this process started, for the log line that measures a restart of the
    control plane; None where unknown. From /proc: the process's start in clock ticks since
    boot against CLOCK_BOOTTIME (psutil's create_time adds the boot time, which /proc/stat
    gives in whole seconds: up to a second off)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux: no such line
        return None


def nothing_serves(models: Sequence[ModelView]) -> str | None:
    """Why chimera serves nothing (one line per failed instance) when every model failed for
    good once start-up settled; None while any model is not failed (on-demand models count as
    serving: they start when asked)."""
    if not models or any(m.state is not InstanceState.FAILED for m in models):
        return None
    return "\n".join(f"  {i.id}: {i.error or 'failed'}" for m in models for i in m.instances)


def _report_death(task: asyncio.Task[None]) -> None:
    """A background task that ends by itself is a bug: say so at once, with its traceback."""
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s died; chimera goes on without it", task.get_name(), exc_info=task.exception())


def _router(
    cfg: Config,
    dep: Deployment,
    control: ControlLoop,
    supervisor: Supervisor | RayEffects,
    headers: Mapping[str, str],
    metrics: ChimeraMetrics,
    holder: PinnedHolder | None = None,
) -> tuple[Router, Callable[[str], bool] | None]:
    """The proxy's Router: the control loop; with LoRA adapters in the file, their requests sent
    to their base's servers (orchestrator/lora/); with shape pools, pooled models' requests to
    a re-targeted server of their pool (orchestrator/pools/). Also: whether an instance is being
    switched to other weights now (its /health fails meanwhile: the scraper leaves it alone)."""
    router: Router = control
    switching: Callable[[str], bool] | None = None
    if any(m.is_adapter for m in cfg.models):
        residency = Residency(HttpAdapterClient(headers))
        supervisor.add_observer(residency.observe)  # a server that went away lost its adapters
        router = AdapterRouter(router, residency, cfg.models)
    if cfg.pools:
        if not isinstance(supervisor, Supervisor) and any(p.stage_bytes for p in cfg.pools):
            # the stager reads checkpoints into this host's page cache; the servers read theirs
            raise ConfigError(["pools: stage_gb is not supported with --ray yet (set it to 0)"])
        server_of = {i.model.name: i.id for i in cfg.instances}
        pool_of = {s: p.name for p in cfg.pools for s in p.slots}
        holdings = Holdings(
            cfg.pools,
            on_hold=lambda slot, path: metrics.set_server_holds(server_of[slot], pool_of[slot], path),
            on_switch=lambda pool, ok: metrics.retargets.labels(pool, "ok" if ok else "failed").inc(),
        )
        supervisor.add_observer(holdings.observe)  # a restarted server holds its start weights
        slot_of = {iid: slot for slot, iid in server_of.items() if slot in pool_of}
        switching = lambda iid: iid in slot_of and holdings.switching(slot_of[iid])  # noqa: E731
        paths = {p.name: tuple(m.model_path for m in cfg.models if m.pool == p.name) for p in cfg.pools}
        staged = lambda pool, n: metrics.pool_staged_bytes.labels(pool).set(n)  # noqa: E731
        pinned = PinnedCache(holder) if holder is not None else None
        stager = Stager(cfg.pools, paths, holdings, on_staged=staged, pinned=pinned)
        router = PoolRouter(
            router,
            holdings,
            HttpRetargeter(headers, pinned=holder),
            cfg.models,
            lambda pool: pool_costs(dep, pool),
            supervisor.retargeted,
            stager=stager,
        )
    return router, switching


def _pinned_holder(cfg: Config, engine: str, run_dir: Path, env: Mapping[str, str], ray: bool) -> PinnedHolder | None:
    """The pinned holder's client where a pool has ``stage: pinned`` (the process itself starts
    on first use: orchestrator/pools/pinned/); a ConfigError where it cannot work."""
    pinned = [p.name for p in cfg.pools if p.stage == "pinned"]
    if not pinned:
        return None
    if ray:
        raise ConfigError([f"pools {', '.join(pinned)}: stage: pinned is not supported with --ray yet"])
    if engine != "sglang":
        raise ConfigError(
            [f"pools {', '.join(pinned)}: stage: pinned needs the sglang engine (it pushes weights through CUDA)"]
        )
    where, private = unix_socket_dir(run_dir, "pinned.sock", "chimera-pinned-")
    # device g is the placements file's GPU g, as for the servers (sglang/launch.py)
    env = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
    env |= {"PYTHONUNBUFFERED": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    return PinnedHolder(where / "pinned.sock", run_dir / "pinned-holder.log", env, private_dir=private)


def _kv_runner(
    dep: Deployment,
    control: ControlLoop,
    supervisor: Supervisor | RayEffects,
    metrics: ChimeraMetrics,
    gpu_seconds: GpuSeconds,
    effects: KVEffects | None = None,
) -> KVRunner | None:
    """The KV ledger over every GPU (modes elastic and full): splits each GPU's free memory
    among the shim-backed instances on it every second, and at once when an instance changes
    state (it wakes, parks, starts or stops)."""
    if not dep.ledger:
        return None
    facts = dep.instances
    # every GPU the control loop counts (up --ray: more once a node joins)
    capacity = GpuCapacity(dep.gpu_bytes, lambda: max(dep.config.gpu_count, len(control.gpu_node)))

    def instances() -> list[KVInstance]:
        views = [v for m in control.models() for v in m.instances]
        return kv_instances(views, dep)

    def report(iid: str, st: Status) -> None:
        metrics.set_kv(facts[iid].spec.model.name, iid, st.limit_bytes, st.mapped_bytes, st.used_tokens)
        gpu_seconds.kv_mapped(iid, st.mapped_bytes)

    def report_split(iid: str, need: int, target: int) -> None:
        metrics.set_kv_split(facts[iid].spec.model.name, iid, need, target)

    # its loads come from the scraper (``_scraper``): a sample older than two rounds is missing
    runner = KVRunner(
        Ledger(capacity),
        effects if effects is not None else _local_kv_effects(supervisor),
        instances,
        report=report,
        report_split=report_split,
        max_sample_age_s=2 * SCRAPE_ROUND_S,
    )

    def observe(view: InstanceView) -> None:
        if view.state in GONE:  # its shim is gone: a restart starts from its start-up limit
            runner.forget(view.id)
        runner.poke()

    supervisor.add_observer(observe)
    control.room = runner.room  # mode full: a due wake waits until its weights fit (plans.WakeGate)
    runner.room_freed = lambda: control.post(Tick())  # ... and goes as soon as they do
    return runner


def _local_kv_effects(supervisor: Supervisor | RayEffects) -> KVEffects:
    if isinstance(supervisor, Supervisor):
        # endpoints are filled as shims come up
        return HttpKVEffects(supervisor.http, supervisor.kv_endpoints, supervisor.lifecycle.probe)
    return supervisor.kv_effects()


def _admission(dep: Deployment, app: Starlette, kv: KVRunner | None = None) -> AdmissionGate | None:
    """Mode full: the proxy's admission gate (local admission on KV room, from the scraper's
    samples), which the proxy finds as ``app.state.admission``. Other modes: none (the proxy
    forwards at once). The requests it holds are KV demand the engines cannot show yet: the
    ledger counts them, and re-splits at once when one has to wait."""
    if not dep.timesharing:
        return None
    gate = AdmissionGate(dep)
    app.state.admission = gate
    if kv is not None:
        kv.held = gate.held_kv_tokens
        gate.on_held = kv.poke
    return gate


def _scraper(
    control: ControlLoop,
    kv: KVRunner | None,
    gate: AdmissionGate | None,
    headers: Mapping[str, str],
    switching: Callable[[str], bool] | None = None,
) -> Scraper:
    """The one poller of every awake instance's /v1/loads (250 ms), in every mode: it is the
    first to see a hung engine (liveness events to the control loop). Its sinks: the control
    loop (demand for the global scheduler; in modes static and elastic the loop records it and
    decides nothing from it), the KV runner (modes elastic and full: its observations) and, in
    mode full, the admission gate (KV room). A pooled server being switched to other weights is
    left out meanwhile: SGLang holds its requests and fails /health while it loads them, which
    is no hang (the switch has its own timeout, orchestrator/pools/retarget.py)."""
    sinks: list[Callable[[LoadSample], None]] = [control.post]
    if kv is not None:
        # the global scheduler's KV in use: the requests' tokens, not what the shim holds back
        sinks = [lambda s: control.post(kv.requests_view(s)), kv.observe]
    if gate is not None:
        sinks.append(gate.observe)
    return Scraper(
        control.instances if switching is None else (lambda: [v for v in control.instances() if not switching(v.id)]),
        sinks=sinks,
        liveness=control.post,
        window_s=control.config.liveness.window_s,
        headers=headers,
    )


def _summary(
    console: Console, control: ControlLoop, router: Router, host: str, port: int, took_s: float | None = None
) -> None:
    for m in router.models():
        names = ", ".join((m.spec.name, *m.spec.aliases))
        console.print(f"  {names:<40} {m.state}")
        for i in m.instances:
            if i.error:
                console.print(f"    [red]{i.id}: {i.error}[/]")
    console.print(
        f"  mode: {control.config.mode}"
        + (" (idle models park; requests for parked models wait while they wake)" if control.timesharing else "")
    )
    console.print(
        f"[bold green]serving[/] on http://{host}:{port}/v1 "
        f"(models: GET /v1/models, metrics: GET /metrics, dashboard: http://{host}:{port}/; Ctrl-C to stop)"
    )
    if took_s is not None:  # a restart that re-adopted its engines: the whole outage seen by clients
        console.print(f"  settled {took_s:.2f} s after the process started")
