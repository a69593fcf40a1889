"""cumem_shim on a real CUDA GPU, without SGLang: the map/unmap benchmark, torch tensors over the
reserved range, a CUDA graph that keeps working while other blocks are mapped and unmapped, the
torch free list on CUDA tensors, and the map-ahead worker (blocks prepared by a second thread,
adopted by this one without a driver call, written and read by torch). Results go to
$CHIMERA_GPU_OUT/map_bench.json and map_ahead.json when set.

The CUDA work runs in one child process (``python -m tests.gpu.test_shim_vmm``): the pytest
process itself never creates a CUDA context, which would hold GPU memory until the end of the
suite (tests/gpu/test_zz_shutdown.py checks that everything is given back)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cumem_shim.elastic import ElasticKV
from cumem_shim.freelist import CountingFreeList
from cumem_shim.pages import KVLayout, mha_layout

pytestmark = pytest.mark.gpu
MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def child() -> dict[str, str]:
    r = subprocess.run(
        [sys.executable, "-m", "tests.gpu.test_shim_vmm"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert r.returncode == 0 and lines, f"child failed ({r.returncode}):\n{r.stderr[-4000:]}"
    out: dict[str, str] = json.loads(lines[-1])
    return out


@pytest.mark.parametrize("check", ["bench", "tensors", "graph", "freelist", "map_ahead"])
def test_on_the_gpu(child: dict[str, str], check: str) -> None:
    assert child[check] == "ok", child[check]


def _driver() -> Any:
    import torch

    from cumem_shim._driver import CudaDriver

    torch.cuda.init()
    torch.cuda.set_device(0)
    return CudaDriver(0)


def _pool(drv: Any) -> tuple[ElasticKV, CountingFreeList, list[Any]]:
    import torch

    from cumem_shim.tensors import buffer_tensors, zero_block_zero

    lay = mha_layout(
        granularity=drv.granularity(0), page_size=1, size=64 * 1024, layers=4, heads=8, head_dim=128
    )  # 1024-token blocks, 8 buffers
    kv = ElasticKV(lay, drv, 0, 2 * lay.block_bytes)
    free = CountingFreeList(lay)
    kv.attach(free)
    tensors = buffer_tensors(kv, [(lay.slots, 8, 128)] * 8, torch.bfloat16, "cuda:0")
    zero_block_zero(tensors, lay.block_tokens)
    return kv, free, tensors


def check_bench(drv: Any) -> None:
    from bench.shim.map_bench import run

    res = run(reps=7)
    print(json.dumps({"map_bench": res}))
    out = os.environ.get("CHIMERA_GPU_OUT")
    if out:
        Path(out, "map_bench.json").write_text(json.dumps(res, indent=1))
    assert res["granularity"] == 2 * MIB
    assert res["pages"][10]["batched"]["map_ms"] <= 3.0, res["pages"]


def _rows(lay: KVLayout, block: int) -> slice:
    return slice(block * lay.block_tokens, (block + 1) * lay.block_tokens)


def check_tensors(drv: Any) -> None:
    import torch

    kv, free, tensors = _pool(drv)
    lay = kv.layout
    ptrs = [t.data_ptr() for t in tensors]
    kv.set_limit(8 * lay.block_bytes, 1)
    kv.available()
    kv.ensure(4 * lay.block_units - 1)  # blocks 0..3
    assert kv.mapped == {0, 1, 2, 3}
    for i, t in enumerate(tensors):
        t[: 4 * lay.block_tokens].fill_(i + 1)
    torch.cuda.synchronize()
    assert all(float(t[3 * lay.block_tokens + 7, 3, 5]) == i + 1 for i, t in enumerate(tensors))
    kv.set_limit(lay.block_bytes, 2)
    kv.available()  # nothing is allocated: blocks 1..3 go
    assert kv.mapped == {0}
    assert [t.data_ptr() for t in tensors] == ptrs
    assert all(bool((t[_rows(lay, 0)] == i + 1).all()) for i, t in enumerate(tensors))
    kv.set_limit(8 * lay.block_bytes, 3)
    kv.available()
    kv.ensure(3 * lay.block_units)  # map again, in place
    for t in tensors:
        t[_rows(lay, 2)].fill_(-2)
    torch.cuda.synchronize()
    assert all(float(t[_rows(lay, 2)].sum()) == -2 * lay.block_tokens * 8 * 128 for t in tensors)


def check_graph(drv: Any) -> None:
    import torch

    kv, free, tensors = _pool(drv)
    lay = kv.layout
    kv.set_limit(16 * lay.block_bytes, 1)
    kv.available()
    kv.ensure(2 * lay.block_units - 1)  # block 1 mapped: rows the graph touches
    free.alloc(2 * lay.block_units - 1)  # in use: a shrink must not unmap them
    k = tensors[5]
    idx = torch.tensor([5, lay.block_tokens + 30], device="cuda:0")
    one = torch.ones((2, 8, 128), dtype=torch.bfloat16, device="cuda:0")
    k[idx] = 0
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        k.index_add_(0, idx, one)  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        k.index_add_(0, idx, one)
    graph.replay()
    torch.cuda.synchronize()
    assert float(k[5, 0, 0]) == 2 and float(k[lay.block_tokens + 30, 7, 127]) == 2
    for rev in range(2, 6):  # map blocks 2..9, then give them back, four times
        kv.ensure(free.free_units() + 8 * lay.block_units)
        assert len(kv.mapped) >= 10
        kv.set_limit(2 * lay.block_bytes, rev * 2)
        kv.available()
        assert kv.mapped == {0, 1}
        kv.set_limit(16 * lay.block_bytes, rev * 2 + 1)
        kv.available()
        graph.replay()
    torch.cuda.synchronize()
    assert float(k[5, 0, 0]) == 6 and float(k[lay.block_tokens + 30, 7, 127]) == 6


def check_freelist(drv: Any) -> None:
    import torch

    from cumem_shim.freelist_torch import TorchFreeList

    lay = KVLayout(2 * MIB, 1, 4 * 4096, (512, 512))  # 4096-token blocks, 4 blocks
    alloc = SimpleNamespace(
        free_pages=torch.arange(1, lay.total_units, device="cuda:0"),
        release_pages=torch.empty((0,), dtype=torch.int64, device="cuda:0"),
    )
    fl = TorchFreeList(alloc, lay)
    fl.reset([0, 2])
    assert fl.free_units() == 4095 + 4096
    alloc.free_pages = alloc.free_pages[100:]  # SGLang took 100 units of block 0
    fl.add([3])
    assert fl.free_per_block() == [3995, 0, 4096, 4096]
    alloc.free_pages = alloc.free_pages[alloc.free_pages != 8192]  # SGLang took a unit of block 2
    alloc.release_pages = torch.tensor([1, 2, 3], device="cuda:0")  # PD's sorted free path
    fl.hold([2])  # quarantine block 2: its free units leave SGLang's list
    assert len(alloc.release_pages) == 0 and fl.free_units() == 3998 + 4096 and fl.held_units() == 4095
    assert fl.held_per_block() == {2: 4095} and fl.free_per_block() == [3998, 0, 4095, 4096]
    alloc.free_pages = torch.cat((alloc.free_pages, torch.tensor([8192], device="cuda:0")))  # freed
    fl.hold([2])  # the next sweep holds it too
    assert fl.held_units() == 4096 and fl.free_units() == 3998 + 4096
    fl.put_last([3])  # block 3's units behind every other, the order otherwise kept
    assert alloc.free_pages.tolist() == [*range(101, 4096), 1, 2, 3, *range(12288, 16384)]
    fl.unhold([2])
    assert fl.held_units() == 0 and fl.free_per_block() == [3998, 0, 4096, 4096]
    fl.remove([2, 3])
    assert fl.free_per_block() == [3998, 0, 0, 0]


class _Recording:
    """The real driver, counting calls per (thread name, method)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls, self._lock = inner, Counter[tuple[str, str]](), threading.Lock()

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)

        def call(*args: Any) -> Any:
            with self._lock:
                self.calls[(threading.current_thread().name, name)] += 1
            return fn(*args)

        return call

    def on(self, thread: str) -> int:
        with self._lock:
            return sum(n for (t, _), n in self.calls.items() if t == thread)


def check_map_ahead(drv: Any) -> None:
    """Llama-3.1-8B's layout (64 buffers, 1024-token blocks of 128 MiB): the worker prepares
    two blocks in its own thread (its own current context), the scheduler thread adopts them
    with no driver call and torch writes and reads them; a shrink gives prepared blocks back."""
    import torch

    from cumem_shim.tensors import buffer_tensors, zero_block_zero

    rec = _Recording(drv)
    me = threading.current_thread().name
    lay = mha_layout(granularity=drv.granularity(0), page_size=1, size=64 * 1024, layers=32, heads=8, head_dim=128)
    assert lay.block_tokens == 1024 and lay.block_bytes == 128 * MIB
    kv = ElasticKV(lay, rec, 0, 8 * lay.block_bytes, map_ahead_blocks=2)
    free = CountingFreeList(lay)
    kv.attach(free)
    tensors = buffer_tensors(kv, [(lay.slots, 8, 128)] * 64, torch.bfloat16, "cuda:0")
    zero_block_zero(tensors, lay.block_tokens)
    res: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        kv.ensure(0)  # arms the worker
        assert kv.settle(60), "the worker did not prepare in 60 s"
        res["prepare_2_blocks_ms"] = (time.perf_counter() - t0) * 1e3
        assert sorted(kv._worker.prepared) == [1, 2] and kv.mapped == {0}, (kv._worker.prepared, kv.mapped)
        assert kv.status().mapped_bytes == 3 * lay.block_bytes
        assert rec.on("cumem-shim-map-ahead") == 2 * 3 * 64 + 1  # create+map+access, bind
        before = rec.on(me)
        t0 = time.perf_counter()
        kv.ensure(free.free_units() + 2 * lay.block_units)  # blocks 1 and 2
        res["adopt_2_blocks_ms"] = (time.perf_counter() - t0) * 1e3
        assert rec.on(me) == before and kv.mapped == {0, 1, 2} and kv.stats.adopted == 2
        for i, t in enumerate(tensors):
            t[lay.block_tokens : 3 * lay.block_tokens].fill_(i + 1)
        torch.cuda.synchronize()
        assert all(float(t[2 * lay.block_tokens + 1000, 7, 127]) == i + 1 for i, t in enumerate(tensors))
        assert kv.settle(60) and sorted(kv._worker.prepared) == [3, 4]
        kv.set_limit(4 * lay.block_bytes, 1)
        kv.available()  # 3 mapped + 2 prepared > 4: block 4 goes back
        assert kv.settle(60) and sorted(kv._worker.prepared) == [3] and kv.discards == 1
        kv.set_limit(16 * lay.block_bytes, 2)
        kv.available()
        assert kv.settle(60) and sorted(kv._worker.prepared) == [3, 4]
        free.alloc(free.free_units())
        t0 = time.perf_counter()
        kv.ensure(3 * lay.block_units)  # adopt 3, 4; map 5 here
        res["adopt_2_map_1_ms"] = (time.perf_counter() - t0) * 1e3
        assert kv.mapped == {0, 1, 2, 3, 4, 5}
        worker = kv._worker.thread
    finally:
        kv.close()
    assert worker is not None and not worker.is_alive()
    res["calls"] = {f"{t}:{c}": n for (t, c), n in sorted(rec.calls.items())}
    print(json.dumps({"map_ahead": res}))
    out = os.environ.get("CHIMERA_GPU_OUT")
    if out:
        Path(out, "map_ahead.json").write_text(json.dumps(res, indent=1))
    assert res["adopt_2_blocks_ms"] < 1.0, res


CHECKS: dict[str, Callable[[Any], None]] = {
    "bench": check_bench,
    "tensors": check_tensors,
    "graph": check_graph,
    "freelist": check_freelist,
    "map_ahead": check_map_ahead,
}


def main() -> None:
    """In the child: run every check, print one JSON line {check: "ok" | traceback}."""
    drv = _driver()
    out = {}
    for name, fn in CHECKS.items():
        try:
            fn(drv)
            out[name] = "ok"
        except Exception:  # reported to the parent test, which fails with it
            out[name] = traceback.format_exc()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
