"""``TorchFreeList``: the ``FreeList`` protocol over a stock SGLang allocator's own tensors.

SGLang's ``TokenToKVPoolAllocator`` (page_size 1) and ``PagedTokenToKVPoolAllocator`` keep their
free units in ``free_pages`` (an int64 tensor on the GPU; ``alloc`` takes from the front) and,
when they must hand out sorted units (PD disaggregation), newly freed ones in ``release_pages``
until ``merge_and_sort_free()``. This class edits those two tensors in place of the allocator,
only on the scheduler thread, between SGLang's own calls. Held (quarantined) units live here,
one tensor per victim block, out of SGLang's reach.

Costs: ``free_units``, ``held_units``, ``held_per_block`` read lengths (no sync);
``free_per_block`` is a bincount and one device-to-host copy (syncs); ``remove`` and ``hold``
are masks (a sync each: data-dependent sizes); ``put_last`` is a stable sort on the GPU (no
sync); ``unhold`` a concatenation. The shim calls all but the first three only while a shrink is
pending.

It mirrors ``freelist.SlotFreeList`` unit for unit, in the same order:
``tests/unit/test_shim_freelist_torch.py`` checks that (random operations on both, and a busy
server's shrink under load) wherever torch is installed, CPU torch included (the CPU CI has none:
skipped there); ``tests/gpu/test_shim_vmm.py::check_freelist`` runs it on CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cumem_shim.pages import KVLayout


class TorchFreeList:
    def __init__(self, allocator: Any, layout: KVLayout) -> None:
        import torch

        self._torch: Any = torch
        self.a = allocator
        self.layout = layout
        self.device = allocator.free_pages.device
        self.dtype = allocator.free_pages.dtype
        self.held: dict[int, Any] = {}  # block -> its units held out of free_pages (a tensor)

    def _units(self, blocks: Sequence[int]) -> Any:
        t = self._torch
        parts = [
            t.arange(r.start, r.stop, dtype=self.dtype, device=self.device)
            for r in (self.layout.units_of(b) for b in sorted(blocks))
            if len(r)
        ]
        return t.cat(parts) if parts else t.empty((0,), dtype=self.dtype, device=self.device)

    def _blocks(self, blocks: Sequence[int]) -> Any:
        return self._torch.tensor(sorted(blocks), dtype=self.dtype, device=self.device)

    def _merge(self) -> None:
        if len(self.a.release_pages) > 0:
            self.a.free_pages = self._torch.cat((self.a.free_pages, self.a.release_pages))
            self.a.release_pages = self.a.release_pages[:0]

    # -- FreeList --------------------------------------------------------------------------
    def free_units(self) -> int:
        return len(self.a.free_pages) + len(self.a.release_pages)

    def reset(self, blocks: Sequence[int]) -> None:
        self.a.free_pages = self._units(blocks)
        self.a.release_pages = self.a.free_pages[:0].clone()
        self.held = {}

    def add(self, blocks: Sequence[int]) -> None:
        self.a.free_pages = self._torch.cat((self.a.free_pages, self._units(blocks)))

    def free_per_block(self) -> list[int]:
        t = self._torch
        merged = t.cat((self.a.free_pages, self.a.release_pages, *self.held.values()))
        counts = t.bincount(merged // self.layout.block_units, minlength=self.layout.num_blocks)
        out: list[int] = counts.tolist()
        return out

    def remove(self, blocks: Sequence[int]) -> None:
        t = self._torch
        self._merge()
        free = self.a.free_pages
        self.a.free_pages = free[~t.isin(free // self.layout.block_units, self._blocks(blocks))]
        for b in blocks:
            self.held.pop(b, None)

    def hold(self, blocks: Sequence[int]) -> None:
        if not blocks:
            return
        t = self._torch
        self._merge()
        free, victims = self.a.free_pages, self._blocks(blocks)
        mask = t.isin(free // self.layout.block_units, victims)
        taken, self.a.free_pages = free[mask], free[~mask]
        if len(taken) == 0:
            return
        of = taken // self.layout.block_units
        taken = taken[t.sort(of, stable=True).indices]  # grouped by block in ``victims`` order, list order kept
        sizes = t.bincount(of, minlength=self.layout.num_blocks)[victims].tolist()
        for b, part in zip(sorted(blocks), t.split(taken, sizes), strict=True):
            if len(part):
                self.held[b] = t.cat((self.held[b], part)) if b in self.held else part

    def unhold(self, blocks: Sequence[int]) -> None:
        parts = [self.held.pop(b) for b in sorted(blocks) if b in self.held]
        if parts:
            self.a.free_pages = self._torch.cat((self.a.free_pages, *parts))

    def put_last(self, blocks: Sequence[int]) -> None:
        if not blocks:
            return
        t = self._torch
        self._merge()  # SGLang's merge_and_sort_free then finds nothing to sort in
        free = self.a.free_pages
        late = t.isin(free // self.layout.block_units, self._blocks(blocks)).to(t.int8)
        self.a.free_pages = free[t.sort(late, stable=True).indices]

    def held_units(self) -> int:
        return sum(len(h) for h in self.held.values())

    def held_per_block(self) -> dict[int, int]:
        return {b: len(h) for b, h in self.held.items() if len(h)}
