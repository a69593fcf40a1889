"""Helpers of tests/gpu/test_shim_sglang.py (no tests here): one stock SGLang server process,
its HTTP API through urllib (nothing beyond SGLang's own wheels is needed on the device), and
the shim's control channel through a plain socket."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cumem_shim import plugin
from cumem_shim import settings as env
from orchestrator.supervisor.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
# the lent H100 carries no FA3 kernels (tests/gpu/prepare_wheels.sh)
DEFAULT_ARGS = "--attention-backend triton --sampling-backend pytorch --grammar-backend none"


def launch_argv(model: str, extra: list[str]) -> list[str]:
    port, nccl = free_ports(2)
    return [
        sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        model,
        "--load-format",
        "dummy",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--nccl-port",
        str(nccl),
        "--disable-cuda-graph",
        "--sleep-on-idle",
        "--random-seed",
        "0",
        *shlex.split(os.environ.get("CHIMERA_SGLANG_ARGS") or DEFAULT_ARGS),
        *extra,
    ]


def shim_env(ep_dir: Path, sock: str, limit: int, virtual: int) -> dict[str, str]:
    """The environment the orchestrator's adapter gives a server with the shim."""
    plugin.entry_point_dir(ep_dir)
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ep_dir), str(ROOT), e.get("PYTHONPATH")) if p)
    e.update(env.server_env(sock, limit, virtual))
    e["PYTHONUNBUFFERED"] = "1"
    return e


class Server:
    def __init__(self, argv: list[str], environ: dict[str, str], log: Path, sock: str | None = None) -> None:
        self.base = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
        self.log, self.sock = log, sock
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(argv, env=environ, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                self.post("/generate", {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 2}}, timeout=30)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(2)
        raise TimeoutError(f"{self.base} not ready after {timeout_s} s:\n{self.log_text()[-4000:]}")

    def _call(self, req: urllib.request.Request, timeout: float) -> Any:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        try:
            return json.loads(body)
        except ValueError:
            return body.decode(errors="replace")

    def get(self, path: str, timeout: float = 30) -> Any:
        return self._call(urllib.request.Request(self.base + path), timeout)

    def post(self, path: str, body: Any, timeout: float = 300) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        return self._call(req, timeout)

    def shim(self, op: str, **kw: Any) -> dict[str, Any]:
        """One control-channel call; answers ``status`` (status) or the whole reply."""
        assert self.sock is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.sock)
            s.sendall(json.dumps({"op": op, **kw}).encode() + b"\n")
            out: dict[str, Any] = json.loads(s.makefile("rb").readline())
        assert out["ok"], out
        return out["status"] if op == "status" else out  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def gpu_mib_of_tree(pid: int) -> int | None:
    """GPU memory (MiB) of ``pid`` and its descendants per NVML; None if unknown (no pynvml,
    or NVML sees other pids, as in some containers)."""
    try:
        import psutil
        import pynvml
    except ImportError:
        return None
    pids = {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        used = [
            p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h) if p.pid in pids and p.usedGpuMemory
        ]
    finally:
        pynvml.nvmlShutdown()
    return sum(used) >> 20 if used else None
