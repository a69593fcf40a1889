"""Pure-Python free lists (the ``FreeList`` protocol) for the sim engine and the CPU tests.

``SlotFreeList`` behaves like SGLang's ``TokenToKVPoolAllocator``: a list of free unit ids,
``alloc`` takes from the front, ``free`` appends. ``CountingFreeList`` keeps only a free count
per block and allocates from the fullest block first (the order ``prefer_full`` asks for): the
sim engine uses it to model a perfectly compacting pool without tracking every slot.
The real one over SGLang's GPU tensors is ``freelist_torch.TorchFreeList``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cumem_shim.pages import KVLayout


class SlotFreeList:
    def __init__(self, layout: KVLayout) -> None:
        self.layout = layout
        self.free: list[int] = []

    # -- the allocator side (what SGLang does) -------------------------------------------
    def alloc(self, n: int) -> list[int] | None:
        if n > len(self.free):
            return None
        out, self.free = self.free[:n], self.free[n:]
        return out

    def release(self, units: Iterable[int]) -> None:
        self.free.extend(units)

    # -- FreeList ------------------------------------------------------------------------
    def free_units(self) -> int:
        return len(self.free)

    def reset(self, blocks: Sequence[int]) -> None:
        self.free = [u for b in sorted(blocks) for u in self.layout.units_of(b)]

    def add(self, blocks: Sequence[int]) -> None:
        self.free.extend(u for b in sorted(blocks) for u in self.layout.units_of(b))

    def free_per_block(self) -> list[int]:
        counts = [0] * self.layout.num_blocks
        for u in self.free:
            counts[self.layout.block_of(u)] += 1
        return counts

    def remove(self, blocks: Sequence[int]) -> None:
        gone = set(blocks)
        self.free = [u for u in self.free if self.layout.block_of(u) not in gone]

    def prefer_full(self, free_per_block: Sequence[int]) -> None:
        self.free.sort(key=lambda u: (free_per_block[self.layout.block_of(u)], u))


class CountingFreeList:
    def __init__(self, layout: KVLayout) -> None:
        self.layout = layout
        self.counts: dict[int, int] = {}  # mapped block -> free units, in preference order

    # -- the allocator side --------------------------------------------------------------
    def alloc(self, n: int) -> list[tuple[int, int]] | None:
        """Take ``n`` units, fullest blocks first; returns (block, units) pieces."""
        if n > self.free_units():
            return None
        out: list[tuple[int, int]] = []
        for b in sorted(self.counts, key=lambda b: (self.counts[b], b)):
            if n == 0:
                break
            take = min(n, self.counts[b])
            if take:
                self.counts[b] -= take
                out.append((b, take))
                n -= take
        return out

    def release(self, pieces: Iterable[tuple[int, int]]) -> None:
        for b, n in pieces:
            if self.counts[b] + n > self.layout.block_capacity(b):
                raise ValueError(f"block {b}: freeing {n} units would exceed its capacity")
            self.counts[b] += n

    def release_any(self, n: int) -> None:
        """Free ``n`` used units from the emptiest blocks first (perfect compaction)."""
        for b in sorted(self.counts, key=lambda b: (-self.counts[b], -b)):
            room = self.layout.block_capacity(b) - self.counts[b]
            give = min(n, room)
            self.counts[b] += give
            n -= give
            if n == 0:
                return
        if n:
            raise ValueError(f"freeing {n} more units than are in use")

    def used_units(self) -> int:
        return sum(self.layout.block_capacity(b) - c for b, c in self.counts.items())

    # -- FreeList ------------------------------------------------------------------------
    def free_units(self) -> int:
        return sum(self.counts.values())

    def reset(self, blocks: Sequence[int]) -> None:
        self.counts = {b: self.layout.block_capacity(b) for b in sorted(blocks)}

    def add(self, blocks: Sequence[int]) -> None:
        for b in sorted(blocks):
            self.counts[b] = self.layout.block_capacity(b)

    def free_per_block(self) -> list[int]:
        out = [0] * self.layout.num_blocks
        for b, c in self.counts.items():
            out[b] = c
        return out

    def remove(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            if self.counts.get(b) != self.layout.block_capacity(b):
                raise ValueError(f"block {b} is not fully free")
            del self.counts[b]

    def prefer_full(self, free_per_block: Sequence[int]) -> None:
        pass  # alloc already takes the fullest block first
