"""The secondary proxy processes of ``up --proxies N`` and the control plane's side of them:
one listening socket per process on the same port (SO_REUSEPORT: the kernel spreads new
connections over the processes), the channel server on the run folder's Unix socket
(channel.py), the Config the workers read (pickled into the run folder), and the workers'
start and stop. A worker whose parent dies exits by itself (worker.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
from collections.abc import Generator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

import orchestrator
from orchestrator.config import Config
from orchestrator.control.router import Router
from orchestrator.dataplane.channel import SOCKET_NAME, Channel
from orchestrator.dataplane.primary import SOCKET_NAME as PRIMARY_SOCKET
from orchestrator.proxy.admission import AdmissionGate
from orchestrator.sockets import attach_bpf, tcp_socket, unix_socket_dir

log = logging.getLogger("chimera.dataplane")
CONFIG_NAME = "proxy-config.pickle"
STOP_S = 10.0
_ROOT = str(Path(orchestrator.__file__).resolve().parent.parent)  # the workers import this code


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: chimera owns SIGINT/SIGTERM (it must stop the
    engines after the proxy, and uvicorn would re-raise the signal on exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket that other processes may bind too (SO_REUSEPORT)."""
    sock = tcp_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


# Linux's SO_ATTACH_REUSEPORT_CBPF (asm-generic/socket.h) and classic BPF (linux/filter.h)
SO_ATTACH_REUSEPORT_CBPF = 51
_LD_RANDOM = (0x20, 0, 0, (-0x1000 + 56) & 0xFFFFFFFF)  # A = random u32 (SKF_AD_OFF + SKF_AD_RANDOM)
_MOD, _ADD, _JGE, _RET_K, _RET_A = 0x94, 0x04, 0x35, 0x06, 0x16
SHARE_STEPS = 1000  # the share's resolution


def steering_program(workers: int, primary_share: float) -> list[tuple[int, int, int, int]]:
    """The classic BPF program that picks a listening socket of the port's SO_REUSEPORT group
    for each new connection: the primary's (index 0: it listens first) with probability
    ``primary_share``, else one of the ``workers`` (1..workers) uniformly. An index past the
    sockets listening now (a worker not up yet, or gone) makes the kernel pick by hash among
    all, the primary included: nothing is refused."""
    cut = round(primary_share * SHARE_STEPS)
    return [
        _LD_RANDOM,
        (_MOD, 0, 0, SHARE_STEPS),
        (_JGE, 1, 0, cut),  # A >= cut: a worker
        (_RET_K, 0, 0, 0),
        (_MOD, 0, 0, workers),
        (_ADD, 0, 0, 1),
        (_RET_A, 0, 0, 0),
    ]


def steer(sock: socket.socket, workers: int, primary_share: float) -> bool:
    """Attach ``steering_program`` to the reuseport group of ``sock`` (the primary's listening
    socket); False where the kernel refuses it (not Linux, or older than 4.5): the kernel's even
    spread stays."""
    try:
        attach_bpf(sock, SO_ATTACH_REUSEPORT_CBPF, steering_program(workers, primary_share))
    except OSError as exc:
        log.warning("--primary-share: the kernel refused the steering program (%s); connections spread evenly", exc)
        return False
    return True


class PrimaryServer:
    """The primary's app on ``primary.sock`` in the pool's socket folder (its lifespan already
    runs in the server on the TCP port: none here)."""

    def __init__(self, app: ASGIApp, socket_dir: Path) -> None:
        self.path = socket_dir / PRIMARY_SOCKET
        self._server = QuietServer(
            uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, ws="none")
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # a previous run's
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.listen(512)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="primary-socket")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 10)
        except TimeoutError:
            self._task.cancel()
        self.path.unlink(missing_ok=True)


class ProxyPool:
    """``workers`` secondary proxies beside the control plane's own (which the app serves on a
    ``reuseport_socket``)."""

    def __init__(
        self,
        workers: int,
        run_dir: Path,
        host: str,
        port: int,
        hold_timeout_s: float,
        config: Config,
        router: Router,
        app: Starlette,
        gate: AdmissionGate | None = None,
        primary_share: float | None = None,
    ) -> None:
        """``router``: the primary proxy's own (the control loop, wrapped for adapters and
        pools); ``app``: the primary's app, also served to the workers on the run folder's
        ``primary.sock`` (its admin API, dashboard and /metrics, with the workers' request
        series); ``gate``: its admission gate (mode full), which the workers' requests pass too;
        ``primary_share``: the share of new connections the primary takes (``steer``; None: the
        kernel's even spread, 1 / (workers + 1))."""
        self.workers, self.run_dir, self.host, self.port = workers, run_dir, host, port
        self.hold_timeout_s = hold_timeout_s
        self._config = config
        self._channel = Channel(router, gate)
        self._admission = gate is not None
        self._primary_share = primary_share
        # the channel's and the primary's Unix sockets: in the run folder, or where a long run
        # folder's path would not fit a socket's
        self.socket_dir, self._private_dir = unix_socket_dir(run_dir, PRIMARY_SOCKET, "chimera-proxies-")
        self._primary = PrimaryServer(app, self.socket_dir)
        app.state.proxy_metrics = self._channel.proxy_metrics
        self.proxy_readings = self._channel.proxy_readings  # for the dashboard (app.py)
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, primary_sock: socket.socket | None = None) -> None:
        """``primary_sock``: the primary's listening socket, the first of the port's group."""
        if primary_sock is not None and self._primary_share is not None:
            if steer(primary_sock, self.workers, self._primary_share):
                log.info("the primary proxy takes %.0f%% of new connections", 100 * self._primary_share)
        await asyncio.to_thread((self.run_dir / CONFIG_NAME).write_bytes, pickle.dumps(self._config))
        await self._channel.serve(self.socket_dir / SOCKET_NAME)
        await self._primary.start()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)}
        for i in range(self.workers):
            log_file = await asyncio.to_thread(open, self.run_dir / f"proxy-{i + 1}.log", "ab")
            with log_file:
                self.procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "orchestrator.dataplane.worker",
                        f"--run-dir={self.run_dir}",
                        f"--socket-dir={self.socket_dir}",
                        f"--host={self.host}",
                        f"--port={self.port}",
                        f"--hold-timeout-s={self.hold_timeout_s}",
                        f"--index={i + 1}",
                        *(["--admission"] if self._admission else []),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=log_file,
                        env=env,
                    )
                )
        log.info(
            "%d secondary proxy process(es) on port %d (logs %s/proxy-*.log)", self.workers, self.port, self.run_dir
        )

    async def stop(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), STOP_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
        await self._channel.close()
        await self._primary.stop()
        if self._private_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
