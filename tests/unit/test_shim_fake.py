"""cumem_shim.fake.FakeDevice is as strict as the CUDA driver where the shim could go wrong."""

from __future__ import annotations

import pytest

from cumem_shim.errors import DriverError
from cumem_shim.fake import TWO_MIB, FakeDevice

G = TWO_MIB


def test_map_access_unmap_release_round_trip() -> None:
    dev = FakeDevice(capacity_bytes=8 * G)
    va = dev.reserve(16 * G, G)
    h = dev.create(2 * G, 0)
    dev.map(va, 2 * G, h)
    assert not dev.is_accessible(va)
    dev.set_access(va, 2 * G, 0)
    assert dev.is_accessible(va + G + 5) and not dev.is_accessible(va + 2 * G)
    assert dev.physical_bytes == dev.mapped_bytes == 2 * G
    dev.release(h)  # still mapped: memory stays until the unmap
    assert dev.physical_bytes == 2 * G
    dev.unmap(va, 2 * G)
    assert dev.physical_bytes == dev.mapped_bytes == 0
    dev.free_address(va, 16 * G)
    assert dev.calls["cuMemMap"] == 1


def test_driver_rules_are_enforced() -> None:
    dev = FakeDevice(capacity_bytes=4 * G)
    va = dev.reserve(8 * G, G)
    h = dev.create(G, 0)
    with pytest.raises(DriverError, match="cuMemMap failed: CUDA_ERROR_INVALID_VALUE"):
        dev.map(va + 1, G, h)  # unaligned
    with pytest.raises(DriverError, match="outside any reservation"):
        dev.map(va + 8 * G, G, h)
    dev.map(va, G, h)
    with pytest.raises(DriverError, match="CUDA_ERROR_ALREADY_MAPPED"):
        dev.map(va, G, dev.create(G, 0))
    with pytest.raises(DriverError, match="cuMemSetAccess"):
        dev.set_access(va, 2 * G, 0)  # the second page is not mapped
    with pytest.raises(DriverError, match="cuMemAddressFree"):
        dev.free_address(va, 8 * G)  # a page is still mapped
    with pytest.raises(DriverError, match="CUDA_ERROR_OUT_OF_MEMORY"):
        dev.create(4 * G, 0)
    with pytest.raises(DriverError, match="CUDA_ERROR_INVALID_DEVICE"):
        dev.create(G, 1)
    with pytest.raises(DriverError, match="cuMemUnmap"):
        dev.unmap(va, 2 * G)  # ends in an unmapped page
    dev.unmap(va, G)
    dev.release(h)
    with pytest.raises(DriverError, match="CUDA_ERROR_INVALID_HANDLE"):
        dev.release(h)


def test_out_of_memory_is_transient_and_says_what_to_do() -> None:
    err = DriverError("cuMemCreate", "CUDA_ERROR_OUT_OF_MEMORY")
    assert err.transient and "lower the limits" in str(err)
    assert not DriverError("cuMemMap", "CUDA_ERROR_INVALID_VALUE").transient
