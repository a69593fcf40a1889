"""Pure-Python free lists (the ``FreeList`` protocol) for the sim engine and the CPU tests.

``SlotFreeList`` behaves like SGLang's ``TokenToKVPoolAllocator``: a list of free unit ids,
``alloc`` takes from the front, ``free`` appends; held (quarantined) units are kept aside per
block. ``CountingFreeList`` keeps only a free count per block and allocates from the fullest
block first, victims last: the sim engine uses it to model a perfectly compacting pool without
tracking every slot.
The real one over SGLang's GPU tensors is ``freelist_torch.TorchFreeList``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cumem_shim.pages import KVLayout


class SlotFreeList:
    def __init__(self, layout: KVLayout) -> None:
        self.layout = layout
        self.free: list[int] = []
        self.held: dict[int, list[int]] = {}  # block -> its units held out of ``free``

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
        self.held = {}

    def add(self, blocks: Sequence[int]) -> None:
        self.free.extend(u for b in sorted(blocks) for u in self.layout.units_of(b))

    def free_per_block(self) -> list[int]:
        counts = [0] * self.layout.num_blocks
        for u in self.free:
            counts[self.layout.block_of(u)] += 1
        for b, units in self.held.items():
            counts[b] += len(units)
        return counts

    def remove(self, blocks: Sequence[int]) -> None:
        gone = set(blocks)
        self.free = [u for u in self.free if self.layout.block_of(u) not in gone]
        for b in gone:
            self.held.pop(b, None)

    def hold(self, blocks: Sequence[int]) -> None:
        victims, keep = set(blocks), []
        for u in self.free:
            b = self.layout.block_of(u)
            if b in victims:
                self.held.setdefault(b, []).append(u)
            else:
                keep.append(u)
        self.free = keep

    def unhold(self, blocks: Sequence[int]) -> None:
        for b in sorted(blocks):
            self.free.extend(self.held.pop(b, []))

    def put_last(self, blocks: Sequence[int]) -> None:
        last = set(blocks)
        self.free.sort(key=lambda u: self.layout.block_of(u) in last)  # stable: order kept

    def held_units(self) -> int:
        return sum(len(units) for units in self.held.values())

    def held_per_block(self) -> dict[int, int]:
        return {b: len(units) for b, units in self.held.items() if units}


class CountingFreeList:
    def __init__(self, layout: KVLayout) -> None:
        self.layout = layout
        self.counts: dict[int, int] = {}  # mapped block -> free units in the list
        self.held: dict[int, int] = {}  # block -> free units held out of the list
        self.last: frozenset[int] = frozenset()  # blocks handed out only once the others are gone

    # -- the allocator side --------------------------------------------------------------
    def alloc(self, n: int) -> list[tuple[int, int]] | None:
        """Take ``n`` units, fullest blocks first (``put_last`` blocks after all others);
        returns (block, units) pieces."""
        if n > self.free_units():
            return None
        out: list[tuple[int, int]] = []
        for b in sorted(self.counts, key=lambda b: (b in self.last, self.counts[b], b)):
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
            if self.counts[b] + self.held.get(b, 0) + n > self.layout.block_capacity(b):
                raise ValueError(f"block {b}: freeing {n} units would exceed its capacity")
            self.counts[b] += n

    def release_any(self, n: int) -> None:
        """Free ``n`` used units from the emptiest blocks first (perfect compaction)."""
        for b in sorted(self.counts, key=lambda b: (-self.counts[b] - self.held.get(b, 0), -b)):
            room = self.layout.block_capacity(b) - self.counts[b] - self.held.get(b, 0)
            give = min(n, room)
            self.counts[b] += give
            n -= give
            if n == 0:
                return
        if n:
            raise ValueError(f"freeing {n} more units than are in use")

    def used_units(self) -> int:
        return sum(self.layout.block_capacity(b) - c - self.held.get(b, 0) for b, c in self.counts.items())

    # -- FreeList ------------------------------------------------------------------------
    def free_units(self) -> int:
        return sum(self.counts.values())

    def reset(self, blocks: Sequence[int]) -> None:
        self.counts = {b: self.layout.block_capacity(b) for b in sorted(blocks)}
        self.held, self.last = {}, frozenset()

    def add(self, blocks: Sequence[int]) -> None:
        for b in sorted(blocks):
            self.counts[b] = self.layout.block_capacity(b)

    def free_per_block(self) -> list[int]:
        out = [0] * self.layout.num_blocks
        for b, c in self.counts.items():
            out[b] = c + self.held.get(b, 0)
        return out

    def remove(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            if self.counts.get(b, 0) + self.held.get(b, 0) != self.layout.block_capacity(b):
                raise ValueError(f"block {b} is not fully free")
            del self.counts[b]
            self.held.pop(b, None)

    def hold(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            if self.counts.get(b):
                self.held[b] = self.held.get(b, 0) + self.counts[b]
                self.counts[b] = 0

    def unhold(self, blocks: Sequence[int]) -> None:
        for b in blocks:
            self.counts[b] += self.held.pop(b, 0)

    def put_last(self, blocks: Sequence[int]) -> None:
        self.last = frozenset(blocks)

    def held_units(self) -> int:
        return sum(self.held.values())

    def held_per_block(self) -> dict[int, int]:
        return {b: n for b, n in self.held.items() if n}
