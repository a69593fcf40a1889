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
import signal
import socket
import sys
from collections.abc import Generator
from pathlib import Path

import uvicorn

import orchestrator
from orchestrator.config import Config
from orchestrator.control.router import Router
from orchestrator.dataplane.channel import SOCKET_NAME, Channel
from orchestrator.proxy.admission import AdmissionGate
from orchestrator.sockets import tcp_socket

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
        gate: AdmissionGate | None = None,
    ) -> None:
        """``router``: the primary proxy's own (the control loop, wrapped for adapters and
        pools); ``gate``: its admission gate (mode full), which the workers' requests pass too."""
        self.workers, self.run_dir, self.host, self.port = workers, run_dir, host, port
        self.hold_timeout_s = hold_timeout_s
        self._config = config
        self._channel = Channel(router, gate)
        self._admission = gate is not None
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        await asyncio.to_thread((self.run_dir / CONFIG_NAME).write_bytes, pickle.dumps(self._config))
        await self._channel.serve(self.run_dir / SOCKET_NAME)
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
                        f"--host={self.host}",
                        f"--port={self.port}",
                        f"--hold-timeout-s={self.hold_timeout_s}",
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
