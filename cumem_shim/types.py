"""The shim's seams, as protocols: the CUDA driver (real: ``_driver.CudaDriver``; in memory:
``fake.FakeDevice``) and the free list of the allocator whose slots the shim backs (real:
``freelist_torch.TorchFreeList`` over SGLang's allocator; pure: ``freelist.CountingFreeList``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

# An opaque physical allocation handle (cuda-python's CUmemGenericAllocationHandle, an int in
# the fake device).
Handle = object
Handles = dict[tuple[int, int], Handle]  # (buffer, block) -> physical handle


class Driver(Protocol):
    """The CUDA virtual-memory calls the shim makes. Every method either succeeds or raises
    ``DriverError`` naming the call. Called from the thread that created the driver (the SGLang
    scheduler's) and from the map-ahead worker, after its ``bind_thread``; the cuMem* calls are
    thread-safe in the driver, an implementation keeps its own state safe."""

    def bind_thread(self) -> None:
        """cuCtxSetCurrent: make the context the driver was created in (SGLang's primary
        context) current in the calling thread; a thread calls it once before other calls."""
        ...

    def granularity(self, device: int) -> int:
        """cuMemGetAllocationGranularity (minimum) for pinned device memory, in bytes."""
        ...

    def reserve(self, size: int, alignment: int) -> int:
        """cuMemAddressReserve: a virtual range of ``size`` bytes; returns its address."""
        ...

    def free_address(self, va: int, size: int) -> None:
        """cuMemAddressFree of a whole reservation (every page must be unmapped)."""
        ...

    def create(self, size: int, device: int) -> Handle:
        """cuMemCreate: ``size`` bytes of physical memory on ``device``."""
        ...

    def release(self, handle: Handle) -> None:
        """cuMemRelease: the physical memory goes back once it is also unmapped."""
        ...

    def map(self, va: int, size: int, handle: Handle) -> None:
        """cuMemMap the whole of ``handle`` at ``va``."""
        ...

    def set_access(self, va: int, size: int, device: int) -> None:
        """cuMemSetAccess read/write for ``device`` over mapped ``[va, va+size)``."""
        ...

    def unmap(self, va: int, size: int) -> None:
        """cuMemUnmap ``[va, va+size)`` (whole mappings only)."""
        ...

    def synchronize(self) -> None:
        """cuCtxSynchronize: no kernel may still touch pages about to be unmapped."""
        ...


class FreeList(Protocol):
    """The free slots of one KV allocator, in allocator units (a unit = SGLang's page_size
    token slots; unit 0 is SGLang's padding slot and never free). Only units of mapped blocks
    may ever be free: the shim adds a block's units when it maps the block and removes them
    before it unmaps it. Free units are in the allocator's list, or *held* by the list for the
    shim (quarantined: out of SGLang's reach). Called from the scheduler thread only."""

    def free_units(self) -> int:
        """Free units in the allocator's list now, held ones not included (cheap: no GPU
        synchronization)."""
        ...

    def reset(self, blocks: Sequence[int]) -> None:
        """After the allocator's ``clear()``: exactly the units of ``blocks`` are free, in the
        list; nothing is held."""
        ...

    def add(self, blocks: Sequence[int]) -> None:
        """Newly mapped blocks: their units become free, to be handed out after the others."""
        ...

    def free_per_block(self) -> list[int]:
        """Free units in each block (index = block), held ones included. May synchronize with
        the GPU."""
        ...

    def remove(self, blocks: Sequence[int]) -> None:
        """Forget the units of these fully free blocks, in the list or held (they are about to
        be unmapped)."""
        ...

    # -- quarantine (quarantine.py): victims of a pending shrink ----------------------------
    def hold(self, blocks: Sequence[int]) -> None:
        """Take every free unit of these blocks out of the allocator's list and keep it held:
        SGLang can no longer allocate it. May synchronize with the GPU."""
        ...

    def unhold(self, blocks: Sequence[int]) -> None:
        """Give the held units of these blocks back to the allocator's list (at its back)."""
        ...

    def put_last(self, blocks: Sequence[int]) -> None:
        """Reorder the allocator's list so units of these blocks come after every other unit,
        the order otherwise kept: SGLang takes them only once the others are gone. No GPU
        synchronization."""
        ...

    def held_units(self) -> int:
        """Units held now (cheap: no GPU synchronization)."""
        ...

    def held_per_block(self) -> dict[int, int]:
        """Units held now, per block that has any (cheap: no GPU synchronization)."""
        ...


class MapCounts(NamedTuple):
    """Since the server started: blocks prepared by the map-ahead worker and adopted by the
    scheduler, and what allocations paid themselves (stats.py)."""

    prepared: int = 0
    adopted: int = 0
    inline_blocks: int = 0  # mapped on the scheduler thread inside an allocation
    inline_s: float = 0.0
    waits: int = 0  # allocations that waited for the worker's block in flight
    wait_s: float = 0.0
    ensures: int = 0  # allocations that needed more mapped blocks


class ShrinkCounts(NamedTuple):
    """How shrinks drained (quarantine.py): the victims now and, since the server started, what
    happened to them (stats.py)."""

    victims: int = 0  # blocks quarantined now
    held_tokens: int = 0  # free token slots of those blocks held back from SGLang now
    quarantined: int = 0  # blocks ever made victims
    released: int = 0  # victims given back (the limit rose; SGLang asked past available_size)
    unmapped: int = 0  # blocks unmapped by shrinks
    unmapped_under_load: int = 0  # of those, unmapped while tokens were in use
    sweeps: int = 0  # reclaims (each a GPU sync: free_per_block)


class Status(NamedTuple):
    """What ``status()`` answers. Bytes are physical (mapped) or granted (limit)."""

    mapped_bytes: int  # physical memory mapped for KV now (at least one block)
    used_tokens: int  # token slots in use (requests and SGLang's prefix cache)
    limit_bytes: int  # the limit in force (the last set_limit accepted)
    revision: int  # revision of that limit (0 = the start-up limit)
    capacity_tokens: int  # virtual pool size in tokens (SGLang's max_total_num_tokens)
    limit_tokens: int  # token slots the limit allows (whole blocks)
    block_bytes: int  # mapping granularity: one block across every layer's K and V
    block_tokens: int  # token slots per block
    draining: bool  # the limit is below what is in use: shrinking as tokens free
    maps: MapCounts = MapCounts()  # how the pool grew (map-ahead and in allocations)
    shrink: ShrinkCounts = ShrinkCounts()  # how shrinks drained (quarantined blocks)
