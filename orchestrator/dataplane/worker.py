"""One secondary proxy process of ``up --proxies N`` (pool.py starts it): the same proxy app as
the control plane's (orchestrator/proxy/), on the same port (SO_REUSEPORT), with the control
plane's Router over its channel (remote.py). Its own /metrics count its own requests only.
Exits on SIGTERM, and by itself when its parent (the control plane) or the channel is gone.

    python -m orchestrator.dataplane.worker --run-dir RUN --host H --port P --hold-timeout-s S \
        --index N [--admission]

``--admission`` (mode full): its requests wait in the control plane's admission gate
(remote.py ``RemoteGate``), as the primary proxy's do. Routes it does not serve itself (the admin
API, the dashboard, /metrics) go to the primary (primary.py); its own request series reach the
primary's /metrics labelled ``proxy="N"``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import signal
from pathlib import Path

import uvicorn
import yaml

from orchestrator.config import Config
from orchestrator.dashboard import readings
from orchestrator.dataplane.channel import SOCKET_NAME
from orchestrator.dataplane.pool import CONFIG_NAME, QuietServer, reuseport_socket
from orchestrator.dataplane.primary import to_primary_route
from orchestrator.dataplane.remote import RemoteGate, RemoteRouter
from orchestrator.env import Env
from orchestrator.metrics.registry import ChimeraMetrics
from orchestrator.proxy import create_app
from orchestrator.proxy.auth import deployment_keys
from orchestrator.proxy.connections import raise_nofile
from orchestrator.proxy.limits import RequestLimits, uvicorn_http_options
from orchestrator.proxy.upstream import Limits
from orchestrator.sglang.auth import CONFIG_NAME as AUTH_NAME

PARENT_CHECK_S = 1.0


def engine_headers(run_dir: Path) -> dict[str, str]:
    key = yaml.safe_load((run_dir / AUTH_NAME).read_text())["api-key"]
    return {"Authorization": f"Bearer {key}"}


async def serve(
    run_dir: Path,
    host: str,
    port: int,
    hold_timeout_s: float,
    index: int = 1,
    admission: bool = False,
    socket_dir: Path | None = None,
) -> None:
    """``socket_dir``: where the channel's and the primary's sockets are (the run folder unless
    its path is too long for them: pool.py)."""
    socket_dir = socket_dir or run_dir
    config: Config = pickle.loads((run_dir / CONFIG_NAME).read_bytes())  # written by pool.py, same user
    env = Env.read()
    server: QuietServer | None = None

    def lost() -> None:
        if server is not None:
            server.should_exit = True

    metrics = ChimeraMetrics()
    router = RemoteRouter(
        config, on_lost=lost, exposition=lambda: (str(index), metrics.render()[0].decode(), readings.read(metrics))
    )
    await router.connect(socket_dir / SOCKET_NAME)
    app = create_app(
        router,
        metrics,
        hold_timeout_s=hold_timeout_s,
        upstream_limits=Limits(first_byte_s=env.upstream_first_byte_s, idle_s=env.upstream_idle_s),
        max_body_bytes=env.max_body_bytes,
        engine_headers=engine_headers(run_dir),
        client_keys=deployment_keys(config, env),  # the same keys as the primary proxy's
        own_metrics=False,  # the primary's, with this process's request series in it
        extra_routes=[to_primary_route(socket_dir)],  # admin API, dashboard, /metrics: the primary's
    )
    if admission:
        app.state.admission = RemoteGate(router)  # proxy/admission.py finds it there
    raise_nofile()
    limits = RequestLimits.from_env(env)
    http = uvicorn_http_options(limits)  # 431, 408, 503 below the app, as in the primary proxy
    server = QuietServer(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, **http))
    parent = os.getppid()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: setattr(server, "should_exit", True))

    async def orphaned() -> None:
        while os.getppid() == parent:  # noqa: ASYNC110 - a pid to poll, no event to wait on
            await asyncio.sleep(PARENT_CHECK_S)
        server.should_exit = True

    watch = asyncio.create_task(orphaned())
    try:
        await server.serve(sockets=[reuseport_socket(host, port)])
    finally:
        watch.cancel()
        await router.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="orchestrator.dataplane.worker")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hold-timeout-s", type=float, required=True)
    p.add_argument("--socket-dir", type=Path, default=None, help="the control plane's sockets (default: --run-dir)")
    p.add_argument("--index", type=int, default=1, help="this process's number, its proxy label in /metrics")
    p.add_argument("--admission", action="store_true", help="pass the control plane's admission gate (mode full)")
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    asyncio.run(serve(a.run_dir, a.host, a.port, a.hold_timeout_s, a.index, a.admission, a.socket_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
