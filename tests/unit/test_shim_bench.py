"""bench/shim/map_bench.py's measuring code, run on the fake device (the GPU host runs it for
real through tests/gpu/test_shim_vmm.py)."""

from __future__ import annotations

from bench.shim.map_bench import bench_blocks, bench_pages, probe_unmap_run
from cumem_shim.fake import FakeDevice


def test_page_and_block_benchmarks_run_and_leave_nothing_mapped() -> None:
    dev = FakeDevice()
    for batched in (True, False):
        res = bench_pages(dev, 0, 10, 2, batched)
        assert res["map_ms"] >= 0 and res["unmap_ms"] >= 0
    calls = dev.calls["cuMemSetAccess"]
    bench_pages(dev, 0, 10, 1, True)
    assert dev.calls["cuMemSetAccess"] == calls + 1  # one access call for the whole run
    blocks = bench_blocks(dev, 0, 2)
    assert blocks["block_tokens"] == 1024 and blocks["pages_per_block"] == 64
    assert set(blocks) >= {"1_blocks", "10_blocks"}
    assert dev.mapped_bytes == dev.physical_bytes == 0 and not dev._reserved


def test_unmap_probe_reports_what_the_driver_says() -> None:
    assert probe_unmap_run(FakeDevice(), 0) == "ok"  # the fake accepts whole mappings in one call
