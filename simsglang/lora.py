"""LoRA adapters on the sim, as SGLang 0.5.17 serves them (``--enable-lora``).

What is faithful (quoted from the 0.5.17 wheel):
- ``POST /load_lora_adapter {lora_name, lora_path, pinned}`` and ``POST /unload_lora_adapter
  {lora_name}`` answer ``LoRAUpdateOutput`` (``success``, ``error_message``, ``loaded_adapters``:
  name -> path), 200 on success and 400 otherwise (``http_server.py``).
- Without ``--enable-lora`` both fail: "LoRA is not enabled. Please set `--enable-lora` to enable
  LoRA." (``tokenizer_control_mixin.py``). Loading a name twice fails "Failed to load LoRA adapter
  X because it is already loaded" (``lora_manager.validate_new_adapter``); unloading an unknown
  name fails "LoRA with name X does not exist. Loaded LoRAs: ..." (``lora_registry.unregister``).
- An unload waits for the adapter's running requests (``lora_registry.wait_for_unload``).
- A request naming an adapter that was loaded once and unloaded since is re-loaded implicitly;
  one never loaded fails "Got LoRA adapter that has never been loaded: X"
  (``tokenizer_manager._resolve_lora_path``).
- ``--max-loaded-loras``: a load beyond it unloads the least recently used adapter.
- ``--max-loras-per-batch`` (default 8): a running batch holds at most that many distinct
  adapters, the base model counting as one; a waiting request that would exceed it is skipped
  and later ones may run (``scheduler._can_schedule_lora_req``). The batcher applies it.
- ``--enable-lora`` without ``--lora-paths`` needs ``--max-lora-rank`` and
  ``--lora-target-modules`` (``server_args.check_lora_server_args``): checked at start.

Modelled, not measured: an adapter load reads its weights (``adapter_bytes``) at the disk
bandwidth of ``orchestrator/perf/calibration.py`` plus a fixed overhead. An adapter's output
differs from the base's and from every other adapter's path (``weights_key``), so a request
routed to the wrong adapter shows in its output.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from orchestrator.perf import calibration as cal
from orchestrator.shapes import ModelShape

SleepFn = Callable[[float], Awaitable[None]]  # the server clock's sleep (virtual in tests)

DEFAULT_MAX_LORAS_PER_BATCH = 8  # server_args.py: max_loras_per_batch = 8
DEFAULT_SIM_LORA_RANK = 16  # when --max-lora-rank is not given (adapters from --lora-paths)


@dataclass(frozen=True)
class LoraSettings:
    enabled: bool = False
    max_loras_per_batch: int = DEFAULT_MAX_LORAS_PER_BATCH
    max_loaded_loras: int | None = None
    max_lora_rank: int | None = None
    target_modules: tuple[str, ...] = ()
    paths: tuple[tuple[str, str], ...] = ()  # --lora-paths as (name, path)


def check_settings(s: LoraSettings) -> str | None:
    """SGLang's start-up assertions on the LoRA flags (``check_lora_server_args``), or None."""
    if s.max_loras_per_batch <= 0:
        return "max_loras_per_batch must be positive"
    if not s.enabled:
        return None
    if not s.paths and not (s.max_lora_rank and s.target_modules):
        return (
            "When no initial --lora-paths is provided, you need to specify both --max-lora-rank "
            "and --lora-target-modules for LoRA initialization."
        )
    if s.max_loaded_loras is not None and s.max_loaded_loras < s.max_loras_per_batch:
        return (
            "max_loaded_loras should be greater than or equal to max_loras_per_batch. "
            f"max_loaded_loras={s.max_loaded_loras}, max_loras_per_batch={s.max_loras_per_batch}"
        )
    return None


def parse_lora_paths(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    """``--lora-paths`` entries ``<PATH>`` or ``<NAME>=<PATH>`` (the JSON form is not simulated)."""
    out = []
    for v in values or []:
        name, sep, path = v.partition("=")
        out.append((name, path) if sep else (v, v))
    return tuple(out)


def adapter_bytes(shape: ModelShape, rank: int) -> int:
    """bf16 A and B matrices of a rank-``rank`` adapter on every attention and MLP projection:
    ``rank * (in + out)`` per projection and layer."""
    h, i = shape.hidden_size, shape.intermediate_size
    kv = shape.num_kv_heads * shape.head_dim
    per_layer = (h + h) + 2 * (h + kv) + (h + h) + 3 * (h + i)  # q, k, v, o, gate, up, down
    return 2 * rank * per_layer * shape.num_layers


# Fixed cost of one load besides reading the weights (config parse, pool bookkeeping). Assumed,
# not measured: re-measure on the GPU (bench/gpu/pools.sh).
LORA_LOAD_OVERHEAD_S = 0.02


class LoraError(ValueError):
    """A refused LoRA operation (its message is SGLang's)."""


@dataclass
class LoraState:
    """The adapters of one sim server: registered (loaded, LRU order), every name ever loaded
    (SGLang's ``lora_ref_cache``) and running requests per adapter."""

    settings: LoraSettings
    shape: ModelShape
    speed: float = 1.0
    registry: OrderedDict[str, str] = field(default_factory=OrderedDict)  # name -> path
    ever: dict[str, str] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    loads: int = 0  # loads done (explicit and implicit), for tests and the bench
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # a request on some adapter ended

    def __post_init__(self) -> None:
        for name, path in self.settings.paths:
            self.registry[name] = self.ever[name] = path

    def loaded(self) -> dict[str, str]:
        return dict(self.registry)

    def load_seconds(self) -> float:
        rank = self.settings.max_lora_rank or DEFAULT_SIM_LORA_RANK
        return self.speed * (LORA_LOAD_OVERHEAD_S + adapter_bytes(self.shape, rank) / cal.DISK_LOAD_BW)

    def _enabled(self) -> None:
        if not self.settings.enabled:
            raise LoraError("LoRA is not enabled. Please set `--enable-lora` to enable LoRA.")

    async def load(self, name: str, path: str, sleep: SleepFn) -> None:
        self._enabled()
        async with self.lock:
            await self._load_locked(name, path, sleep)

    async def _load_locked(self, name: str, path: str, sleep: SleepFn) -> None:
        if name in self.registry:
            raise LoraError(f"Failed to load LoRA adapter {name} because it is already loaded")
        await sleep(self.load_seconds())
        self.registry[name] = self.ever[name] = path
        self.loads += 1
        limit = self.settings.max_loaded_loras
        while limit is not None and len(self.registry) > limit:
            lru = next(iter(self.registry))
            await self._unload_locked(lru)

    async def unload(self, name: str) -> None:
        self._enabled()
        async with self.lock:
            await self._unload_locked(name)

    async def _unload_locked(self, name: str) -> None:
        if name not in self.registry:
            raise LoraError(f"LoRA with name {name} does not exist. Loaded LoRAs: {list(self.registry)}")
        del self.registry[name]  # no new request may start on it
        while self.running.get(name, 0):
            self.released.clear()
            await self.released.wait()

    def check(self, name: str) -> str:
        """Before a request for adapter ``name`` is accepted: the adapter's path (the output
        depends on it), or LoraError with SGLang's refusal."""
        if not self.settings.enabled:
            raise LoraError(
                f"LoRA adapter '{name}' was requested, but LoRA is not enabled. Please launch the "
                "server with --enable-lora flag and preload adapters using --lora-paths or "
                "/load_lora_adapter endpoint."
            )
        if name not in self.ever:
            raise LoraError(
                f"Got LoRA adapter that has never been loaded: {name}\nAll loaded adapters: {list(self.ever)}."
            )
        return self.ever[name]

    async def acquire(self, name: str, sleep: SleepFn) -> None:
        """A checked request for adapter ``name`` starts: re-loads it if it was evicted, as
        SGLang does, and counts it running until ``release``."""
        if name not in self.registry:
            async with self.lock:
                if name not in self.registry:
                    await self._load_locked(name, self.ever[name], sleep)
        self.registry.move_to_end(name)
        self.running[name] = self.running.get(name, 0) + 1

    def release(self, name: str) -> None:
        self.running[name] -= 1
        if not self.running[name]:
            del self.running[name]
        self.released.set()
