"""The patches into stock SGLang (0.5.17 verified; 0.5.23 has the same names). ``install``
resolves every target first and refuses, naming each missing piece, before patching anything.

- ``KVCacheConfigurator._profile_available_bytes`` (srt/mem_cache/kv_cache_configurator.py):
  answers the *virtual* KV budget, so SGLang sizes its pool as if it had the whole GPU (its
  ``--max-total-tokens`` cap still applies).
- ``MHATokenToKVPool._create_buffers_normal`` (srt/mem_cache/memory_pool.py): the 2·L K/V
  buffers become tensors over one reserved range (``ElasticKV``); block 0 is mapped; the
  control channel starts.
- ``TokenToKVPoolAllocator`` / ``PagedTokenToKVPoolAllocator`` (srt/mem_cache/allocator/):
  ``clear`` binds the allocator to the pool's ``ElasticKV`` and keeps only mapped units free;
  ``available_size`` answers what the limit allows; ``alloc``/``alloc_extend``/``alloc_decode``
  map blocks first. ``free`` is untouched: freed units stay free in mapped blocks until a shrink
  unmaps whole free blocks.
- ``RadixCache.evict`` (srt/mem_cache/radix_cache.py): while a shrink drains, each eviction
  SGLang makes (it evicts only when it needs room) also evicts the tokens held above the limit,
  so a busy server's prefix cache shrinks too (an idle one is flushed by the orchestrator).
- ``SchedulerRequestReceiver._broadcast_reqs_across_ranks``
  (srt/managers/scheduler_components/request_receiver.py), only for TP > 1: rank 0 broadcasts
  each step's requests to the other ranks; the shim's limit rides along (ranks.py), so every
  rank applies it in the same step.
- ``KVCacheConfigurator.configure``: after it, the server's pool and allocator must both be
  shim-backed, or start-up fails (e.g. an MLA model, a quantized KV cache, an SWA allocator).

Runs in every SGLang process that loads plugins; only the scheduler creates a pool.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cumem_shim.channel import ChannelServer
from cumem_shim.elastic import ElasticKV
from cumem_shim.errors import ShimConfigError
from cumem_shim.pages import KVLayout
from cumem_shim.settings import Settings
from cumem_shim.types import Driver, FreeList

log = logging.getLogger("cumem_shim")
MEM = "sglang.srt.mem_cache"
# (module, class, {method: parameter names it must have})
TARGETS: tuple[tuple[str, str, dict[str, tuple[str, ...]]], ...] = (
    (f"{MEM}.memory_pool", "MHATokenToKVPool", {"_create_buffers_normal": ("self",), "_kv_buffer_shapes": ("self",)}),
    (
        f"{MEM}.kv_cache_configurator",
        "KVCacheConfigurator",
        {"_profile_available_bytes": ("self", "pre_model_load_memory"), "configure": ("self", "pre_model_load_memory")},
    ),
    (
        f"{MEM}.allocator.token",
        "TokenToKVPoolAllocator",
        {"alloc": ("self", "need_size"), "available_size": ("self",), "clear": ("self",)},
    ),
    (f"{MEM}.radix_cache", "RadixCache", {"evict": ("self", "params")}),
    (
        f"{MEM}.allocator.paged",
        "PagedTokenToKVPoolAllocator",
        {
            "alloc": ("self", "need_size"),
            "available_size": ("self",),
            "clear": ("self",),
            "alloc_extend": ("self", "seq_lens_cpu", "extend_num_tokens"),
            "alloc_decode": ("self", "seq_lens_cpu"),
        },
    ),
)

# patched only for TP > 1 (a TP-1 server needs nothing of it)
TP_TARGET: tuple[str, str, dict[str, tuple[str, ...]]] = (
    "sglang.srt.managers.scheduler_components.request_receiver",
    "SchedulerRequestReceiver",
    {"_broadcast_reqs_across_ranks": ("self", "recv_reqs")},
)


@dataclass(frozen=True)
class Backend:
    """What the pool hook needs from CUDA and torch (tests pass CPU stand-ins)."""

    driver: Callable[[int], Driver]
    tensors: Callable[[ElasticKV, Sequence[tuple[int, ...]], Any, Any], list[Any]]
    zero: Callable[[Sequence[Any], int], None]
    freelist: Callable[[Any, KVLayout], FreeList]
    device_index: Callable[[Any], int]
    total_memory: Callable[[int], int]
    world_size: Callable[[], int]
    rank: Callable[[], int] = lambda: 0


def cuda_backend() -> Backend:
    import torch

    from cumem_shim._driver import CudaDriver
    from cumem_shim.freelist_torch import TorchFreeList
    from cumem_shim.tensors import buffer_tensors, zero_block_zero

    def device_index(device: Any) -> int:
        idx = torch.device(device).index
        return int(idx) if idx is not None else int(torch.cuda.current_device())

    def world_size() -> int:
        dist = torch.distributed
        return int(dist.get_world_size()) if dist.is_initialized() else 1

    def rank() -> int:
        dist = torch.distributed
        return int(dist.get_rank()) if dist.is_initialized() else 0

    return Backend(
        CudaDriver,
        buffer_tensors,
        zero_block_zero,
        TorchFreeList,
        device_index,
        lambda d: int(torch.cuda.get_device_properties(d).total_memory),
        world_size,
        rank,
    )


class _Process:
    """The shim's state in this process (one pool per scheduler process)."""

    def __init__(self, settings: Settings, backend: Backend | None) -> None:
        self.settings = settings
        self._backend = backend
        self.kv: ElasticKV | None = None
        self.server: ChannelServer | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = cuda_backend()
        return self._backend


_STATE: _Process | None = None


def resolve(tp_size: int = 1) -> dict[str, type]:
    """Import every target class and check its methods; raise naming all that is missing."""
    classes: dict[str, type] = {}
    problems: list[str] = []
    for module, name, methods in TARGETS + ((TP_TARGET,) if tp_size > 1 else ()):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{module}.{name} ({type(exc).__name__}: {exc})")
            continue
        classes[name] = cls
        for meth, params in methods.items():
            fn = getattr(cls, meth, None)
            if not callable(fn):
                problems.append(f"{module}.{name}.{meth} (missing)")
                continue
            have = set(inspect.signature(fn).parameters)
            lacking = [p for p in params if p not in have]
            if lacking:
                problems.append(f"{module}.{name}.{meth} (no parameter {', '.join(lacking)})")
    if problems:
        raise ShimConfigError(
            f"this SGLang ({_sglang_version()}) lacks what the shim patches: "
            + "; ".join(problems)
            + ". Supported: 0.5.17 and 0.5.23; run this server without "
            "CHIMERA_SHIM_SOCKET (placements mode: static) or use a supported SGLang"
        )
    return classes


def install(settings: Settings, backend: Backend | None = None) -> None:
    """Patch SGLang's classes (idempotent per process)."""
    global _STATE
    classes = resolve(settings.tp_size)
    _STATE = _Process(settings, backend)
    from cumem_shim import hooks_sglang

    hooks_sglang.patch(classes)


def state() -> _Process:
    if _STATE is None:
        raise ShimConfigError("cumem_shim hooks ran before install()")
    return _STATE


def _sglang_version() -> str:
    try:
        return "sglang " + str(importlib.import_module("sglang").__version__)
    except (ImportError, AttributeError):
        return "sglang of unknown version"
