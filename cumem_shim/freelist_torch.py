"""``TorchFreeList``: the ``FreeList`` protocol over a stock SGLang allocator's own tensors.

SGLang's ``TokenToKVPoolAllocator`` (page_size 1) and ``PagedTokenToKVPoolAllocator`` keep their
free units in ``free_pages`` (an int64 tensor on the GPU; ``alloc`` takes from the front) and,
when they must hand out sorted units (PD disaggregation), newly freed ones in ``release_pages``
until ``merge_and_sort_free()``. This class edits those two tensors in place of the allocator,
only on the scheduler thread, between SGLang's own calls.

Costs: ``free_units`` reads two lengths (no sync); ``free_per_block`` is a bincount and one
device-to-host copy (syncs); ``remove``/``prefer_full`` are a mask or a sort on the GPU. The
shim calls the last three only while a limit is being shrunk.
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

    def _units(self, blocks: Sequence[int]) -> Any:
        t = self._torch
        parts = [
            t.arange(r.start, r.stop, dtype=self.dtype, device=self.device)
            for r in (self.layout.units_of(b) for b in sorted(blocks))
            if len(r)
        ]
        return t.cat(parts) if parts else t.empty((0,), dtype=self.dtype, device=self.device)

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

    def add(self, blocks: Sequence[int]) -> None:
        self.a.free_pages = self._torch.cat((self.a.free_pages, self._units(blocks)))

    def free_per_block(self) -> list[int]:
        t = self._torch
        merged = t.cat((self.a.free_pages, self.a.release_pages))
        counts = t.bincount(merged // self.layout.block_units, minlength=self.layout.num_blocks)
        out: list[int] = counts.tolist()
        return out

    def remove(self, blocks: Sequence[int]) -> None:
        t = self._torch
        self._merge()
        gone = t.tensor(list(blocks), dtype=self.dtype, device=self.device)
        free = self.a.free_pages
        self.a.free_pages = free[~t.isin(free // self.layout.block_units, gone)]

    def prefer_full(self, free_per_block: Sequence[int]) -> None:
        t = self._torch
        self._merge()
        free = self.a.free_pages
        counts = t.tensor(list(free_per_block), dtype=self.dtype, device=self.device)
        key = counts[free // self.layout.block_units] * self.layout.total_units + free
        self.a.free_pages = free[t.argsort(key)]
