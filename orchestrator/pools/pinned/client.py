"""chimera's side of the pinned holder (holder.py): the process spawned on first use, asked over
its Unix socket, and stopped with chimera. No torch here.

Who asks: the pool's Stager (``PinnedCache``: stage and drop, from its reading thread) and the
re-target (``HttpRetargeter``: push, falling back to ``/update_weights_from_disk`` when the
checkpoint is not held or the holder cannot be reached). A holder that died is started again
by the next request; what it held is staged again as the Stager asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.pools.staging import PageCache

log = logging.getLogger("chimera.pools")
START_TIMEOUT_S = 180.0  # importing torch and SGLang's helpers on a cold host
STOP_GRACE_S = 5.0


class HolderError(OSError):
    """The holder could not be started or reached, or did not answer (an OSError: the Stager
    treats it as a failed read)."""


class PinnedHolder:
    def __init__(
        self,
        socket_path: Path,
        log_path: Path,
        env: Mapping[str, str],
        bucket_mb: int = 1024,
        argv: Sequence[str] | None = None,  # tests: another holder program
        private_dir: bool = False,  # the socket's folder is ours alone: removed at stop
    ) -> None:
        self._private_dir = private_dir
        self.socket_path = socket_path
        self._log_path = log_path
        self._env = dict(env)
        self._argv = list(argv) if argv is not None else [sys.executable, "-m", "orchestrator.pools.pinned.holder"]
        self._argv += ["--socket", str(socket_path), "--bucket-mb", str(bucket_mb)]
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.generation = 0  # processes started so far: what one held, the next does not

    def ask(self, msg: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        """One request and its answer (blocking); HolderError when the holder is not there or
        does not answer in time. A holder found dead (refused, reset, no answer and exited) is
        started again and asked once more: every request is whole (a push loads every tensor)."""
        for attempt in (1, 2):
            self._ensure()
            try:
                return self._ask(msg, timeout_s)
            except OSError as exc:
                if attempt == 1 and self._exited(1.0):
                    log.warning("pinned holder gone (%s); starting it again", exc)
                    continue
                if isinstance(exc, HolderError):
                    raise
                raise HolderError(f"pinned holder: {msg.get('op')} failed: {exc}") from exc
        raise AssertionError("unreachable")

    def _ask(self, msg: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(self.socket_path))
            s.sendall(json.dumps(msg).encode() + b"\n")
            with s.makefile("rb") as f:
                line = f.readline()
        if not line:
            raise HolderError(f"pinned holder: {msg.get('op')}: no answer (it exited? see {self._log_path})")
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise HolderError(f"pinned holder: {msg.get('op')}: answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise HolderError(f"pinned holder: {msg.get('op')}: answer is not an object")
        return answer

    def _exited(self, wait_s: float) -> bool:
        """Whether the holder's process has exited (waiting up to ``wait_s`` for it to)."""
        proc = self._proc
        if proc is None:
            return True
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
        return proc.poll() is not None

    async def ask_async(self, msg: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        return await asyncio.to_thread(self.ask, msg, timeout_s)

    def _ensure(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            if self._proc is not None:
                log.warning("pinned holder exited with code %s; starting it again", self._proc.returncode)
            self.socket_path.unlink(missing_ok=True)
            with open(self._log_path, "ab") as out:
                self.generation += 1
                try:
                    self._proc = subprocess.Popen(
                        self._argv, stdout=out, stderr=subprocess.STDOUT, env=self._env, start_new_session=True
                    )
                except OSError as exc:
                    raise HolderError(f"cannot start the pinned holder ({self._argv[0]}): {exc}") from exc
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise HolderError(
                        f"the pinned holder exited with code {self._proc.returncode} at start (see {self._log_path})"
                    )
                if self._listening():
                    return
                time.sleep(0.1)
            self._proc.kill()
            raise HolderError(f"the pinned holder did not answer within {START_TIMEOUT_S:g} s (see {self._log_path})")

    def _listening(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.socket_path))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.socket_path.unlink(missing_ok=True)
        if self._private_dir:
            with contextlib.suppress(OSError):
                self.socket_path.parent.rmdir()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None


class PinnedCache(PageCache):
    """The Stager's host RAM as the holder's pinned buffers (a pool's ``stage: pinned``)."""

    def __init__(self, holder: PinnedHolder, timeout_s: float = 900.0) -> None:
        super().__init__()
        self._holder = holder
        self._timeout_s = timeout_s
        self._generation: dict[str, int] = {}  # path -> the holder process that staged it

    def read(self, path: str) -> int:
        answer = self._holder.ask({"op": "stage", "path": path}, self._timeout_s)
        if not answer.get("ok"):
            raise HolderError(str(answer.get("error")))
        self._generation[path] = self._holder.generation
        return int(answer.get("bytes", 0))

    def lost(self, paths: Iterable[str]) -> set[str]:
        """Of ``paths`` staged here, those a holder that has exited since held (no process call)."""
        return {p for p in paths if self._generation.get(p) != self._holder.generation}

    def drop(self, path: str) -> None:
        self._holder.ask({"op": "drop", "path": path}, 60.0)
