"""``FakeDevice``: the ``Driver`` protocol in memory, as strict as the CUDA driver where it
matters, so the CPU tests and the sim engine run the shim's real bookkeeping.

It checks what the driver checks (alignment to the granularity, maps inside a reservation,
no overlapping maps, unmaps of whole mappings, access set only on mapped memory, freeing a
reservation only when nothing is mapped in it) and models physical memory: ``capacity_bytes``
of device memory, ``CUDA_ERROR_OUT_OF_MEMORY`` past it. ``calls`` counts calls per function,
``thread_calls`` per (thread name, function).

Thread-safe like the driver (one lock around each call). With ``strict_context``, a call from a
thread other than the creator that has not called ``bind_thread`` fails with
``CUDA_ERROR_INVALID_CONTEXT``, as a thread without a current context would. ``before_call`` (a
test seam) runs at the start of every call, outside the lock, with the call's name: a test can
block a thread there to order it against another.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cumem_shim.errors import DriverError
from cumem_shim.types import Handle

TWO_MIB = 2 << 20
_VA_BASE = 0x7F00_0000_0000


@dataclass
class _Mapping:
    size: int
    handle: int
    access: bool = False


@dataclass
class FakeDevice:
    capacity_bytes: int = 80 << 30
    granularity_bytes: int = TWO_MIB
    device: int = 0
    strict_context: bool = False
    before_call: Callable[[str], None] | None = None
    calls: Counter[str] = field(default_factory=Counter)
    thread_calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    _next_va: int = _VA_BASE
    _reserved: dict[int, int] = field(default_factory=dict)  # va -> size
    _handles: dict[int, int] = field(default_factory=dict)  # live handle -> size
    _released: set[int] = field(default_factory=set)  # released but still mapped
    _maps: dict[int, _Mapping] = field(default_factory=dict)  # va -> mapping
    _map_starts: list[int] = field(default_factory=list)  # sorted keys of _maps
    _mapped_handles: Counter[int] = field(default_factory=Counter)  # handle -> its mappings
    _next_handle: int = 1
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    _bound: set[int] = field(default_factory=lambda: {threading.get_ident()}, repr=False)

    # -- observation ---------------------------------------------------------------------
    @property
    def physical_bytes(self) -> int:
        """Physical memory held (created and not yet both released and unmapped)."""
        with self._lock:
            return sum(self._handles.values())

    @property
    def mapped_bytes(self) -> int:
        with self._lock:
            return sum(m.size for m in self._maps.values())

    def is_accessible(self, va: int) -> bool:
        """Would a kernel touching byte ``va`` succeed (mapped with access set)?"""
        with self._lock:
            m = self._mapping_at(va)
            return m is not None and m[1].access

    # -- Driver --------------------------------------------------------------------------
    def granularity(self, device: int) -> int:
        with self._call("cuMemGetAllocationGranularity"):
            self._check_device("cuMemGetAllocationGranularity", device)
            return self.granularity_bytes

    def reserve(self, size: int, alignment: int) -> int:
        with self._call("cuMemAddressReserve"):
            self._aligned("cuMemAddressReserve", size)
            va = -(-self._next_va // max(alignment, self.granularity_bytes)) * max(alignment, self.granularity_bytes)
            self._reserved[va] = size
            self._next_va = va + size + self.granularity_bytes  # a guard gap between ranges
            return va

    def free_address(self, va: int, size: int) -> None:
        with self._call("cuMemAddressFree"):
            if self._reserved.get(va) != size:
                raise DriverError("cuMemAddressFree", "CUDA_ERROR_INVALID_VALUE", "not a reservation")
            i = bisect.bisect_left(self._map_starts, va)
            if i < len(self._map_starts) and self._map_starts[i] < va + size:
                raise DriverError("cuMemAddressFree", "CUDA_ERROR_INVALID_VALUE", "pages still mapped")
            del self._reserved[va]

    def create(self, size: int, device: int) -> Handle:
        with self._call("cuMemCreate"):
            self._check_device("cuMemCreate", device)
            self._aligned("cuMemCreate", size)
            if self.physical_bytes + size > self.capacity_bytes:
                raise DriverError("cuMemCreate", "CUDA_ERROR_OUT_OF_MEMORY")
            h = self._next_handle
            self._next_handle += 1
            self._handles[h] = size
            return h

    def release(self, handle: Handle) -> None:
        with self._call("cuMemRelease"):
            h = self._handle("cuMemRelease", handle)
            if self._mapped_handles[h]:
                self._released.add(h)  # freed when unmapped, like the driver
            else:
                del self._handles[h]

    def map(self, va: int, size: int, handle: Handle) -> None:
        with self._call("cuMemMap"):
            h = self._handle("cuMemMap", handle)
            self._aligned("cuMemMap", va, size)
            if self._handles[h] != size:
                raise DriverError("cuMemMap", "CUDA_ERROR_INVALID_VALUE", "size is not the handle's")
            if not any(r <= va and va + size <= r + n for r, n in self._reserved.items()):
                raise DriverError("cuMemMap", "CUDA_ERROR_INVALID_VALUE", "outside any reservation")
            i = bisect.bisect_left(self._map_starts, va)
            if (i < len(self._map_starts) and self._map_starts[i] < va + size) or (
                i > 0 and self._map_starts[i - 1] + self._maps[self._map_starts[i - 1]].size > va
            ):
                raise DriverError("cuMemMap", "CUDA_ERROR_ALREADY_MAPPED")
            self._maps[va] = _Mapping(size, h)
            self._map_starts.insert(i, va)
            self._mapped_handles[h] += 1

    def set_access(self, va: int, size: int, device: int) -> None:
        with self._call("cuMemSetAccess"):
            self._check_device("cuMemSetAccess", device)
            for at in self._whole_mappings("cuMemSetAccess", va, size):
                self._maps[at].access = True

    def _whole_mappings(self, call: str, va: int, size: int) -> list[int]:
        """Starts of the mappings that exactly cover [va, va + size), as the driver requires
        (it acts on whole mappings only); raises the driver's error otherwise."""
        at, end, starts = va, va + size, []
        while at < end:
            m = self._maps.get(at)
            if m is None:
                raise DriverError(call, "CUDA_ERROR_INVALID_VALUE", f"{at:#x} is not the start of a mapping")
            starts.append(at)
            at += m.size
        if at != end:
            raise DriverError(call, "CUDA_ERROR_INVALID_VALUE", "range ends mid-mapping")
        return starts

    def unmap(self, va: int, size: int) -> None:
        with self._call("cuMemUnmap"):
            for s in self._whole_mappings("cuMemUnmap", va, size):
                m = self._maps.pop(s)
                del self._map_starts[bisect.bisect_left(self._map_starts, s)]
                self._mapped_handles[m.handle] -= 1
                if m.handle in self._released and not self._mapped_handles[m.handle]:
                    self._released.discard(m.handle)
                    del self._handles[m.handle]

    def synchronize(self) -> None:
        with self._call("cuCtxSynchronize"):
            pass

    def bind_thread(self) -> None:
        with self._call("cuCtxSetCurrent", binding=True):
            self._bound.add(threading.get_ident())

    # -- helpers -------------------------------------------------------------------------
    @contextmanager
    def _call(self, call: str, *, binding: bool = False) -> Iterator[None]:
        if self.before_call is not None:
            self.before_call(call)
        with self._lock:
            self.calls[call] += 1
            self.thread_calls[(threading.current_thread().name, call)] += 1
            if self.strict_context and not binding and threading.get_ident() not in self._bound:
                raise DriverError(
                    call, "CUDA_ERROR_INVALID_CONTEXT", "no context is current in this thread (bind_thread)"
                )
            yield

    def _check_device(self, call: str, device: int) -> None:
        if device != self.device:
            raise DriverError(call, "CUDA_ERROR_INVALID_DEVICE", f"device {device}")

    def _aligned(self, call: str, *values: int) -> None:
        for v in values:
            if v <= 0 or v % self.granularity_bytes:
                raise DriverError(
                    call, "CUDA_ERROR_INVALID_VALUE", f"{v} is not a positive multiple of {self.granularity_bytes}"
                )

    def _handle(self, call: str, handle: Handle) -> int:
        if not isinstance(handle, int) or handle not in self._handles or handle in self._released:
            raise DriverError(call, "CUDA_ERROR_INVALID_HANDLE", repr(handle))
        return handle

    def _mapping_at(self, va: int) -> tuple[int, _Mapping] | None:
        i = bisect.bisect_right(self._map_starts, va) - 1
        if i < 0:
            return None
        s = self._map_starts[i]
        m = self._maps[s]
        return (s, m) if va < s + m.size else None
