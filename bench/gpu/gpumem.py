"""The GPU's used memory while a rate of the experiment runs (NVML, device-level, every
``interval_s``): the proof that chimera kept within ``host.gpu_memory_gb`` while the KV ledger
handed memory out. No NVML (a CPU host, the sim engine): no samples."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GpuMemorySampler:
    gpu: int = 0
    interval_s: float = 0.5
    used_bytes: list[int] = field(default_factory=list)

    async def run(self) -> None:
        """Until cancelled; returns at once where NVML cannot be read."""
        try:
            nvml = await asyncio.to_thread(_open, self.gpu)
        except Exception:  # ImportError, pynvml.NVMLError: nothing to sample here
            return
        mod, handle = nvml
        try:
            while True:
                self.used_bytes.append(int((await asyncio.to_thread(mod.nvmlDeviceGetMemoryInfo, handle)).used))
                await asyncio.sleep(self.interval_s)
        finally:
            mod.nvmlShutdown()

    def summary(self) -> dict[str, float] | None:
        """Peak and mean used GiB over the samples; None without any."""
        if not self.used_bytes:
            return None
        gib = 2**30
        return {
            "peak_gib": round(max(self.used_bytes) / gib, 2),
            "mean_gib": round(sum(self.used_bytes) / len(self.used_bytes) / gib, 2),
            "samples": len(self.used_bytes),
        }


def _open(gpu: int) -> tuple[Any, Any]:
    import pynvml

    pynvml.nvmlInit()
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(gpu)
