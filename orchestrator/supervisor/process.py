"""One engine process: spawn in its own process group, log to a file, wait until ready, stop.

Readiness is ``GET /model_info`` answering 200, never ``/health``: SGLang's /health runs a real
generate and fails while the server is paused or released.
Who calls: the supervisor's effects (control/effects.py), off the control loop. Every method
that waits is async and cancellable.

Engines outlive chimera-orch on purpose (no parent-death signal): a restarted control plane
re-adopts them (statefile.py, ``EngineProcess.adopt``), and a later ``up`` stops those it does
not adopt. An adopted engine is not chimera's child: its exit is watched through a pidfd.
A *detached* spawn (the node agents of ``up --ray``) starts the engine through a launcher
that exits at once, so the engine is nobody's child from the start: Ray kills the children of
an actor that dies, and an agent that Ray restarts re-adopts the engines it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from orchestrator.engines.base import LaunchSpec
from orchestrator.errors import EngineStartError
from orchestrator.sglang.api import GENERATE, MODEL_INFO

READY_PATH = MODEL_INFO.path
# After /model_info answers, one tiny greedy generate proves the server really serves (SGLang
# starts its HTTP server before its own warm-up forward, which JIT-compiles kernels for ~100 s
# on a fresh machine) and records the output that later wakes are compared with.
PROBE_PATH = GENERATE.path
PROBE_BODY = {
    "text": "chimera readiness probe: once upon a time",
    "sampling_params": {"max_new_tokens": 4, "temperature": 0.0},
}
POLL_INTERVAL_S = 0.25
# SGLang's own SIGTERM shutdown of a 1-GPU server takes a few seconds (scheduler, detokenizer);
# past this grace the whole process group gets SIGKILL.
STOP_GRACE_S = 15.0


class EngineProcess:
    def __init__(self, instance_id: str, spec: LaunchSpec, log_path: Path) -> None:
        self.instance_id = instance_id
        self.spec = spec
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self.probe_output: str | None = None  # text of the readiness probe at first start
        self.ready_at: float | None = None  # monotonic time /model_info first answered 200
        self.condemned = False  # stopped by the supervisor after a failure it reports itself
        self._adopted: int | None = None  # the pid of an engine a previous chimera started

    @classmethod
    def adopt(cls, instance_id: str, spec: LaunchSpec, log_path: Path, pid: int) -> EngineProcess:
        """An engine already running (a previous chimera-orch started it in its own group)."""
        proc = cls(instance_id, spec, log_path)
        proc._adopted = pid
        return proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else self._adopted

    @property
    def returncode(self) -> int | None:
        if self._adopted is not None:
            return None if _running(self._adopted) else ADOPTED_EXIT_UNKNOWN
        return self._proc.returncode if self._proc else None

    async def spawn(self, detached: bool = False) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if detached:
            await self._spawn_detached()
            return
        # A local file opened once per start; the child writes to it, not this loop.
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230
            log.write(f"$ {' '.join(self.spec.argv)}\n".encode())
            log.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                env=dict(self.spec.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() reaches every child
            )

    async def _spawn_detached(self) -> None:
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230 - as spawn
            log.write(f"$ {' '.join(self.spec.argv)}\n".encode())
        launcher = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LAUNCHER,
            str(self.log_path),
            *self.spec.argv,
            env=dict(self.spec.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await launcher.communicate()
        try:
            self._adopted = int(out.decode().strip())
        except ValueError:
            raise EngineStartError(
                f"{self.instance_id}: the engine launcher failed (exit {launcher.returncode})"
            ) from None

    async def wait_ready(
        self,
        client: httpx.AsyncClient,
        timeout_s: float | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        """Poll readiness until 200; raise EngineStartError if the process exits or time runs out."""
        assert self.pid is not None, "spawn() first"
        timeout_s = self.spec.ready_timeout_s if timeout_s is None else timeout_s
        start = time.monotonic()
        url = self.spec.base_url + READY_PATH
        while True:
            if self.returncode is not None:
                raise EngineStartError(
                    f"{self.instance_id}: engine exited with code {self.returncode} while "
                    f"starting; last lines:\n{self.log_tail()}",
                    str(self.log_path),
                )
            with contextlib.suppress(httpx.TransportError):
                r = await client.get(url, timeout=5.0)
                if r.status_code == 200:
                    break
            elapsed = time.monotonic() - start
            if elapsed > timeout_s:
                raise EngineStartError(
                    f"{self.instance_id}: not ready after {timeout_s:.0f} s (GET {READY_PATH} never answered 200)",
                    str(self.log_path),
                )
            if on_wait is not None:
                on_wait(elapsed)
            await asyncio.sleep(POLL_INTERVAL_S)
        self.ready_at = time.monotonic()
        left = max(1.0, timeout_s - (self.ready_at - start))
        self.probe_output = await self._probe(client, left)

    async def _probe(self, client: httpx.AsyncClient, timeout_s: float) -> str:
        url = self.spec.base_url + PROBE_PATH
        try:
            r = await client.post(url, json=PROBE_BODY, timeout=timeout_s)
        except httpx.TransportError as exc:
            raise EngineStartError(
                f"{self.instance_id}: readiness probe POST {PROBE_PATH} failed: {exc!r}; last "
                f"lines:\n{self.log_tail()}",
                str(self.log_path),
            ) from exc
        if r.status_code != 200:
            raise EngineStartError(
                f"{self.instance_id}: readiness probe POST {PROBE_PATH} answered {r.status_code}: {r.text[:300]}",
                str(self.log_path),
            )
        try:
            return str(r.json()["text"])
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineStartError(
                f"{self.instance_id}: readiness probe answer has no `text`: {r.text[:300]}", str(self.log_path)
            ) from exc

    async def wait_exit(self) -> int:
        if self._adopted is not None:
            await _wait_gone(self._adopted)
            return ADOPTED_EXIT_UNKNOWN
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the process group, then SIGKILL it after ``grace_s``. Idempotent."""
        if self._adopted is not None:
            pgid = self._adopted
            if _running(pgid):
                _killpg(pgid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(_wait_gone(pgid), grace_s)
                except TimeoutError:
                    _killpg(pgid, signal.SIGKILL)
                    await _wait_gone(pgid)
            _killpg(pgid, signal.SIGKILL)
            return ADOPTED_EXIT_UNKNOWN
        proc = self._proc
        if proc is None:
            return None
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        if proc.returncode is None:
            _killpg(pgid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                _killpg(pgid, signal.SIGKILL)
                await proc.wait()
        # The leader may be gone while children of its group linger (SGLang's schedulers).
        _killpg(pgid, signal.SIGKILL)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a hung or stopped engine honours nothing
        gentler); ``wait_exit`` then returns. No-op before spawn or once it is gone."""
        if self._adopted is not None:
            if _running(self._adopted):
                _killpg(self._adopted, signal.SIGKILL)
            return
        if self._proc is not None and self._proc.returncode is None:
            _killpg(self._proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# A detached spawn's launcher: starts the engine in its own session with its log, prints its
# pid and exits (the engine is re-parented to init or the host's subreaper).
_LAUNCHER = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,"
    " start_new_session=True)\n"
    "print(p.pid)\n"
)
ADOPTED_EXIT_UNKNOWN = -1  # an adopted engine is not our child: its exit status is not ours to read


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _wait_gone(pid: int) -> None:
    """Until ``pid`` has exited: a pidfd turns readable then (Linux ≥ 5.3); else poll."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        while _running(pid):  # noqa: ASYNC110 - nothing to wait on but the process table
            await asyncio.sleep(POLL_INTERVAL_S)
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, readable)
    try:
        if _running(pid):  # it may have gone before the reader was added
            await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
