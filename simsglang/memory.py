"""What a simulated server holds on its GPU, per SGLang memory tag, across park and wake.

Owned by the server (server.py); ``/release_memory_occupation`` and
``/resume_memory_occupation`` (park.py) move tags in and out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from orchestrator.perf.model import MemoryPlan
from orchestrator.sglang.api import MEMORY_TAGS


@dataclass
class MemoryTags:
    """What is resident on each GPU of the instance, per SGLang memory tag. Owned by the server;
    ``/release_memory_occupation`` and ``/resume_memory_occupation`` move tags in and out.

    Faithful to torch_memory_saver as SGLang uses it: without --enable-memory-saver a release is
    a silent no-op (200, nothing freed); without --enable-weights-cpu-backup released weights
    come back as garbage (the server then produces different output until weights are
    reloaded)."""

    plan: MemoryPlan
    memory_saver: bool = True
    weights_cpu_backup: bool = True
    released: set[str] = field(default_factory=set)
    releases: int = 0  # the first release pays for allocating the pinned host backup
    weights_intact: bool = True
    # With cumem_shim the KV pool is not in torch_memory_saver's region: what it holds is the
    # shim's mapped pages, whatever tags are released (set by sim/shim_channel.py).
    shim_kv_bytes: Callable[[], int] | None = None
    tp_size: int = 1  # one scheduler process per rank, each on its own GPU with an equal shard

    @staticmethod
    def normalize(tags: Iterable[str] | None) -> list[str]:
        """Tags of a request; none or empty = all (SGLang's rule). Unknown tags raise."""
        out = list(tags or MEMORY_TAGS)
        unknown = [t for t in out if t not in MEMORY_TAGS]
        if unknown:
            raise ValueError(f"unknown memory tags {unknown}; use any of {list(MEMORY_TAGS)}")
        return out

    def to_release(self, tags: Iterable[str] | None) -> list[str]:
        """The tags a release would really free (none without the memory saver)."""
        if not self.memory_saver:
            return []
        return [t for t in self.normalize(tags) if t not in self.released]

    def release(self, tags: Iterable[str] | None) -> list[str]:
        """Drop tags; returns those that were resident (the ones that cost time)."""
        moved = self.to_release(tags)
        self.released.update(moved)
        self.releases += 1
        if "weights" in moved and not self.weights_cpu_backup:
            self.weights_intact = False
        return moved

    def to_resume(self, tags: Iterable[str] | None) -> list[str]:
        return [t for t in self.normalize(tags) if t in self.released]

    def resume(self, tags: Iterable[str] | None) -> list[str]:
        moved = self.to_resume(tags)
        self.released.difference_update(moved)
        return moved

    @property
    def can_serve(self) -> bool:
        return not (self.released & {"weights", "kv_cache"})

    def resident_bytes(self) -> int:
        return self.plan.context_bytes + sum(self._tag_bytes(t) for t in MEMORY_TAGS)

    def _tag_bytes(self, tag: str) -> int:
        if tag == "kv_cache" and self.shim_kv_bytes is not None:
            return self.shim_kv_bytes()
        return 0 if tag in self.released else self.plan.bytes_of(tag)

    def snapshot(self) -> dict[str, object]:
        p = self.plan
        return {
            "gpu_bytes": p.gpu_bytes,
            "context_bytes": p.context_bytes,
            "weights_bytes": self._tag_bytes("weights"),
            "kv_cache_bytes": self._tag_bytes("kv_cache"),
            "cuda_graph_bytes": self._tag_bytes("cuda_graph"),
            "resident_bytes": self.resident_bytes(),
            "ranks": [self.resident_bytes()] * self.tp_size,  # per rank's GPU (the sim's are equal)
            "released": {t: t in self.released for t in MEMORY_TAGS},
            "memory_saver": self.memory_saver,
            "weights_cpu_backup": self.weights_cpu_backup,
            "weights_intact": self.weights_intact,
        }
