"""The only importer of cuda-python (``cuda.bindings.driver``): one thin wrapper per CUDA
virtual-memory call, implementing ``types.Driver``. Every failure raises ``DriverError`` with
the call's name and its CUresult name. Thread-safe: a second thread (the map-ahead worker) calls
``bind_thread`` first to make the same context current there. Imported lazily
(``CudaDriver()``), so nothing else in the shim, and no CPU test, needs cuda-python.

Measured on an H100 with this driver API: granularity 2 MiB; 8 GiB mapped in 2 MiB pages in
0.25 s and unmapped in 0.19 s (about 60 and 45 us a page). bench/shim/map_bench.py measures the
shim's own plans.
"""

from __future__ import annotations

from typing import Any

from cumem_shim.errors import DriverError, ShimConfigError
from cumem_shim.types import Handle

_DRV: Any = None


def _drv() -> Any:
    global _DRV
    if _DRV is None:
        try:
            from cuda.bindings import driver  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ShimConfigError(
                "cumem_shim needs cuda-python (`cuda.bindings.driver`) in the SGLang server's "
                "environment: pip install 'cuda-python>=12' (SGLang 0.5.17 depends on "
                f"cuda-python>=13.0) ({exc})"
            ) from exc
        _DRV = driver
    return _DRV


def _name(err: Any) -> str:
    name = getattr(err, "name", None)
    return name if isinstance(name, str) else f"CUresult({err})"


def _check(call: str, result: Any) -> Any:
    """cuda-python returns ``(CUresult, *values)``; answer the value or raise."""
    drv = _drv()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != drv.CUresult.CUDA_SUCCESS:
        raise DriverError(call, _name(err))
    return values[0] if values else None


class CudaDriver:
    """The real driver for one device ordinal (as CUDA numbers the visible devices)."""

    def __init__(self, device: int) -> None:
        drv = _drv()
        self.device = device
        _check("cuInit", drv.cuInit(0))
        ctx = _check("cuCtxGetCurrent", drv.cuCtxGetCurrent())
        if ctx is None or int(ctx) == 0:  # no context yet (a benchmark without torch first)
            dev = _check("cuDeviceGet", drv.cuDeviceGet(device))
            ctx = _check("cuDevicePrimaryCtxRetain", drv.cuDevicePrimaryCtxRetain(dev))
            _check("cuCtxSetCurrent", drv.cuCtxSetCurrent(ctx))
        self._ctx = ctx  # the context torch (SGLang) made current: the primary context
        self._props: dict[int, Any] = {}
        self._access: dict[int, Any] = {}
        self._prop(device)  # filled here, so threads only read the caches
        self._access_desc(device)

    def _prop(self, device: int) -> Any:
        if device not in self._props:
            drv = _drv()
            prop = drv.CUmemAllocationProp()
            prop.type = drv.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
            prop.location.type = drv.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
            prop.location.id = device
            self._props[device] = prop
        return self._props[device]

    def _access_desc(self, device: int) -> Any:
        if device not in self._access:
            drv = _drv()
            desc = drv.CUmemAccessDesc()
            desc.location.type = drv.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
            desc.location.id = device
            desc.flags = drv.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
            self._access[device] = desc
        return self._access[device]

    # -- types.Driver ----------------------------------------------------------------------
    def bind_thread(self) -> None:
        _check("cuCtxSetCurrent", _drv().cuCtxSetCurrent(self._ctx))

    def granularity(self, device: int) -> int:
        drv = _drv()
        flag = drv.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM
        return int(_check("cuMemGetAllocationGranularity", drv.cuMemGetAllocationGranularity(self._prop(device), flag)))

    def reserve(self, size: int, alignment: int) -> int:
        return int(_check("cuMemAddressReserve", _drv().cuMemAddressReserve(size, alignment, 0, 0)))

    def free_address(self, va: int, size: int) -> None:
        _check("cuMemAddressFree", _drv().cuMemAddressFree(va, size))

    def create(self, size: int, device: int) -> Handle:
        handle: Handle = _check("cuMemCreate", _drv().cuMemCreate(size, self._prop(device), 0))
        return handle

    def release(self, handle: Handle) -> None:
        _check("cuMemRelease", _drv().cuMemRelease(handle))

    def map(self, va: int, size: int, handle: Handle) -> None:
        _check("cuMemMap", _drv().cuMemMap(va, size, 0, handle, 0))

    def set_access(self, va: int, size: int, device: int) -> None:
        _check("cuMemSetAccess", _drv().cuMemSetAccess(va, size, [self._access_desc(device)], 1))

    def unmap(self, va: int, size: int) -> None:
        _check("cuMemUnmap", _drv().cuMemUnmap(va, size))

    def synchronize(self) -> None:
        _check("cuCtxSynchronize", _drv().cuCtxSynchronize())
