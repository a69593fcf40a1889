"""The CUDA MPS control daemon of one run (host.gpu_sharing resolved to ``mps``): started before
the first engine, every engine attached to it, quit after the last one, restarted when it dies.

An engine attaches at CUDA init through the environment (``CUDA_MPS_PIPE_DIRECTORY``,
``CUDA_MPS_LOG_DIRECTORY``: ``MpsDaemon.env``); the daemon then starts one MPS server that runs
the kernels of every attached process at once. The pipe directory holds Unix sockets, whose path
must stay under 108 bytes: it is ``<run folder>/mps/pipe`` when short enough, else a private
directory under the temporary directory (removed at ``quit``); the daemon's logs are in
``<run folder>/mps/log``.

Death: engines attached to a dead daemon's server cannot run kernels any more (their next CUDA
call fails, or they hang). ``watch`` polls the daemon (``get_server_list``) every ``check_s``;
when it stops answering, ``on_death`` is told first (the supervisor kills every engine it
spawned under that daemon, so each exits and takes the control loop's restart-with-backoff path
like any engine that exits), then the daemon is started again, with a growing pause between
attempts that fail; the engines restarted after their backoff attach to the new one.

The process calls go through ``Control`` (``BinaryControl`` runs the binary); tests hand the
daemon a stand-in script instead of nvidia-cuda-mps-control.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator.errors import ChimeraError
from orchestrator.perf.sharing import resolve
from orchestrator.types import GpuSharing, GpuSharingOption

log = logging.getLogger("chimera.mps")
CONTROL = "nvidia-cuda-mps-control"
_SOCKET_ROOM = 60  # bytes left under the 108-byte sun_path limit for the daemon's socket names
CALL_TIMEOUT_S = 30.0


class MpsError(ChimeraError):
    """The MPS control daemon could not be started or reached; the message says which."""


def find_control(override: str | None = None) -> str | None:
    """The control binary: ``override`` (CHIMERA_MPS_CONTROL) if given, else the one on PATH."""
    return shutil.which(override or CONTROL)


@dataclass(frozen=True)
class MpsDirs:
    pipe: Path
    log: Path
    private: bool  # pipe is a temporary directory of ours (removed at quit)

    @classmethod
    def under(cls, run_dir: Path) -> MpsDirs:
        pipe, private = run_dir / "mps" / "pipe", False
        if len(os.fsencode(pipe.absolute())) > 108 - _SOCKET_ROOM:
            pipe, private = Path(tempfile.mkdtemp(prefix="chimera-mps-")), True
        return cls(pipe, run_dir / "mps" / "log", private)

    def env(self) -> dict[str, str]:
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe), "CUDA_MPS_LOG_DIRECTORY": str(self.log)}


class Control(Protocol):
    """The daemon's process calls: (exit code, output) of the control binary run with ``args``
    and ``stdin`` in an environment that has ``env`` added."""

    async def __call__(self, args: tuple[str, ...], stdin: str, env: Mapping[str, str]) -> tuple[int, str]: ...


class BinaryControl:
    def __init__(self, binary: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.binary = binary
        self.timeout_s = timeout_s

    async def __call__(self, args: tuple[str, ...], stdin: str, env: Mapping[str, str]) -> tuple[int, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **env},
            )
        except OSError as exc:
            return 127, f"cannot run {self.binary}: {exc}"
        try:
            out, _ = await asyncio.wait_for(proc.communicate(stdin.encode()), self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return 124, f"{self.binary} {' '.join(args)} did not answer within {self.timeout_s:g} s"
        return proc.returncode or 0, out.decode(errors="replace").strip()


class MpsDaemon:
    def __init__(
        self,
        control: Control,
        dirs: MpsDirs,
        check_s: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.control = control
        self.dirs = dirs
        self.check_s = check_s
        self._sleep = sleep
        self.restarts = 0  # times the daemon was found dead and started again

    def env(self) -> dict[str, str]:
        """What an engine's environment needs to attach to this daemon."""
        return self.dirs.env()

    async def start(self) -> None:
        """``nvidia-cuda-mps-control -d``; raises MpsError with the binary's own words."""
        for d in (self.dirs.pipe, self.dirs.log):
            d.mkdir(parents=True, exist_ok=True)
        rc, out = await self.control(("-d",), "", self.env())
        if rc != 0:
            raise MpsError(f"cannot start the CUDA MPS daemon (exit code {rc}): {out[:300]}")
        if not await self.alive():
            raise MpsError(f"the CUDA MPS daemon started but does not answer on {self.dirs.pipe}")
        log.info("CUDA MPS daemon up: pipe %s, log %s", self.dirs.pipe, self.dirs.log)

    async def alive(self) -> bool:
        rc, _ = await self.control((), "get_server_list\n", self.env())
        return rc == 0

    async def quit(self) -> None:
        """``echo quit | nvidia-cuda-mps-control``, after the engines stopped; never raises."""
        rc, out = await self.control((), "quit\n", self.env())
        if rc != 0:
            log.warning("the CUDA MPS daemon did not quit cleanly (exit code %s): %s", rc, out[:300])
        if self.dirs.private:
            shutil.rmtree(self.dirs.pipe, ignore_errors=True)

    async def watch(self, on_death: Callable[[str], None], max_pause_s: float = 60.0) -> None:
        """Until cancelled: poll the daemon; when dead, ``on_death(why)`` then start it again
        (pauses of check_s doubling up to ``max_pause_s`` while starting fails)."""
        while True:
            await self._sleep(self.check_s)
            if await self.alive():
                continue
            why = f"the CUDA MPS daemon ({self.dirs.pipe}) stopped answering"
            log.error("%s: stopping its engines, starting it again", why)
            on_death(why)
            pause = self.check_s
            while True:
                try:
                    await self.start()
                    break
                except MpsError as exc:
                    log.error("%s; next attempt in %g s", exc, pause)
                    await self._sleep(pause)
                    pause = min(pause * 2, max_pause_s)
            self.restarts += 1


def attached(env: Mapping[str, str], daemon: MpsDaemon | None) -> Mapping[str, str]:
    """An engine's environment, attached to ``daemon`` (unchanged without one)."""
    return env if daemon is None else {**env, **daemon.env()}


async def for_run(
    option: GpuSharingOption, engine: str, run_dir: Path, binary: str | None, ray: bool = False
) -> tuple[MpsDaemon | None, GpuSharing]:
    """``host.gpu_sharing`` resolved for this run (perf/sharing.py ``resolve``) and, for MPS, its
    daemon started. ``binary``: CHIMERA_MPS_CONTROL. ``auto`` falls back to time-slicing, with a
    warning, where the daemon cannot start or under ``--ray`` (the node agents start no daemon);
    ``mps`` asked for raises MpsError there instead."""
    found = find_control(binary)
    sharing, why = resolve(option, engine, found is not None)
    if sharing == "mps" and ray:
        if option == "mps":
            raise MpsError("host.gpu_sharing: mps is not supported with --ray (node agents start no MPS daemon)")
        sharing, why = "timeslice", "host.gpu_sharing: auto, --ray (node agents start no MPS daemon)"
    if sharing == "timeslice":
        log.info("GPU sharing: time-slicing (%s)", why)
        return None, sharing
    if found is None:
        raise MpsError(f"host.gpu_sharing: mps, but {binary or CONTROL} is not on PATH")
    daemon = MpsDaemon(BinaryControl(found), MpsDirs.under(run_dir))
    try:
        await daemon.start()
    except MpsError as exc:
        if option == "mps":
            raise
        log.warning("GPU sharing: time-slicing (%s; %s)", why, exc)
        return None, "timeslice"
    log.info("GPU sharing: MPS (%s)", why)
    return daemon, sharing
