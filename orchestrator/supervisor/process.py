"""One engine process: spawn in its own process group, log to a file, wait until ready, stop.

Readiness is ``GET /model_info`` answering 200, never ``/health``: SGLang's /health runs a real
generate and fails while the server is paused or released.
Who calls: the supervisor's effects (control/effects.py), off the control loop. Every method
that waits is async and cancellable.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

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
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Child-side: get SIGTERM if chimera-orch dies without cleaning up (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EngineProcess:
    def __init__(self, instance_id: str, spec: LaunchSpec, log_path: Path) -> None:
        self.instance_id = instance_id
        self.spec = spec
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self.probe_output: str | None = None  # text of the readiness probe at first start
        self.ready_at: float | None = None  # monotonic time /model_info first answered 200
        self.condemned = False  # stopped by the supervisor after a failure it reports itself

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
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
                preexec_fn=_die_with_parent,
            )

    async def wait_ready(
        self,
        client: httpx.AsyncClient,
        timeout_s: float | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        """Poll readiness until 200; raise EngineStartError if the process exits or time runs out."""
        assert self._proc is not None, "spawn() first"
        timeout_s = self.spec.ready_timeout_s if timeout_s is None else timeout_s
        start = time.monotonic()
        url = self.spec.base_url + READY_PATH
        while True:
            if self._proc.returncode is not None:
                raise EngineStartError(
                    f"{self.instance_id}: engine exited with code {self._proc.returncode} while "
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
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the process group, then SIGKILL it after ``grace_s``. Idempotent."""
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


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
