"""How much GPU memory one engine instance holds: the proof that a park really freed memory.

- sglang engine: NVML per process, summed over the instance's process group (the server and its
  scheduler/detokenizer children), on the instance's GPUs. Where NVML cannot see processes (a
  container with its own PID namespace), the GPUs' used memory is read instead and the result
  says so (``per_process=False``); the control loop parks one instance at a time per GPU, so
  the device-level difference is still the instance's.
- sim engine: the simulated ledger in ``GET /server_info`` (``sim.memory.resident_bytes``, per
  GPU, times the instance's GPUs).

Either way a reading is the instance's total over its GPUs.

After a failure the supervisor kills the instance's process group and calls
``verify_released`` before it reports the failure, so the KV ledger never counts memory as free
that a half-dead server still holds: every process of the group gone and, where NVML sees
processes, none of them listed on the instance's GPUs.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Protocol

import httpx
import psutil

from orchestrator.sglang.api import SERVER_INFO


@dataclass(frozen=True)
class MemoryReading:
    bytes: int
    per_process: bool  # False: device-level used memory of the instance's GPUs
    # the same per GPU of the group, in the order of its GPUs (a TP group: each rank's process
    # on its own GPU); empty where the probe cannot tell GPUs apart
    per_gpu: tuple[int, ...] = ()


class MemoryProbe(Protocol):
    async def read(self, pid: int, gpus: tuple[int, ...], base_url: str) -> MemoryReading: ...


class SimMemoryProbe:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def read(self, pid: int, gpus: tuple[int, ...], base_url: str) -> MemoryReading:
        r = await self._client.get(base_url + SERVER_INFO.path, timeout=10)
        r.raise_for_status()
        # the sim reports each rank's bytes (one per GPU); like NVML's reading, the result sums them
        mem = r.json()["sim"]["memory"]
        ranks = mem.get("ranks") or [mem["resident_bytes"]] * len(gpus)
        per_gpu = tuple(int(b) for b in ranks)
        return MemoryReading(sum(per_gpu), True, per_gpu if len(per_gpu) == len(gpus) else ())


class NvmlMemoryProbe:
    async def read(self, pid: int, gpus: tuple[int, ...], base_url: str) -> MemoryReading:
        return await asyncio.to_thread(_nvml_read, pid, gpus)


def _group_pids(pid: int) -> set[int]:
    try:
        leader = psutil.Process(pid)
        return {pid, *(c.pid for c in leader.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def group_pids(pgid: int) -> set[int]:
    """Every live process of the process group ``pgid`` (an engine is its group's leader, so
    its children are found even after the leader died and they were re-parented)."""
    out = {pgid}
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.add(p.pid)
        except OSError:  # gone meanwhile, or not ours to see
            continue
    return _alive(out)  # zombies hold no memory


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def _nvml_holders(pids: set[int], gpus: tuple[int, ...]) -> set[int]:
    import pynvml

    pynvml.nvmlInit()
    try:
        held: set[int] = set()
        for g in gpus:
            h = pynvml.nvmlDeviceGetHandleByIndex(g)
            held.update(p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h) if p.pid in pids)
        return held
    finally:
        pynvml.nvmlShutdown()


RELEASE_TIMEOUT_S = 10.0  # the driver frees a killed process's memory within a second or so


async def verify_released(
    probe: MemoryProbe, pids: set[int], gpus: tuple[int, ...], timeout_s: float = RELEASE_TIMEOUT_S
) -> str | None:
    """None once the processes ``pids`` (a stopped instance's group) are gone and, with the NVML
    probe, no longer hold memory on ``gpus``; else (after ``timeout_s``) why not. The sim
    engine's memory is its process's own: gone with it."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = await asyncio.to_thread(_alive, pids)
        if not left and isinstance(probe, NvmlMemoryProbe):
            try:
                left = await asyncio.to_thread(_nvml_holders, pids, gpus)
            except Exception as exc:  # ImportError, OSError, pynvml.NVMLError (pynvml is optional)
                return f"cannot verify its GPU memory was released (NVML: {exc})"
        if not left:
            return None
        if time.monotonic() > deadline:
            return f"processes {sorted(left)} still hold its GPU memory {timeout_s:g} s after SIGKILL"
        await asyncio.sleep(0.2)


def _nvml_read(pid: int, gpus: tuple[int, ...]) -> MemoryReading:
    import pynvml

    pids = _group_pids(pid)
    pynvml.nvmlInit()
    try:
        per_gpu, per_device, seen = [], [], False
        for g in gpus:
            h = pynvml.nvmlDeviceGetHandleByIndex(g)
            per_device.append(int(pynvml.nvmlDeviceGetMemoryInfo(h).used))
            here = 0
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid in pids and p.usedGpuMemory is not None:
                    here += int(p.usedGpuMemory)
                    seen = True
            per_gpu.append(here)
        if seen:
            return MemoryReading(sum(per_gpu), True, tuple(per_gpu))
        return MemoryReading(sum(per_device), False, tuple(per_device))
    finally:
        pynvml.nvmlShutdown()


# A footprint within this of its budget is not an overshoot: NVML readings move by a few MiB on
# their own, and the torch allocator rounds its segments up.
OVERSHOOT_SLACK_BYTES = 256 * 2**20
OVERSHOOT_SLACK_FRACTION = 0.02


def overshoot(budget_bytes: int, reading: MemoryReading) -> int | None:
    """Bytes by which an instance's footprint exceeds its budget (both summed over its GPUs),
    0 within the slack, or None when the reading cannot say (device-level: other instances of
    the GPU are in it)."""
    if not reading.per_process:
        return None
    over = reading.bytes - budget_bytes
    slack = OVERSHOOT_SLACK_BYTES + OVERSHOOT_SLACK_FRACTION * budget_bytes
    return over if over > slack else 0
