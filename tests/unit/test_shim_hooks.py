"""cumem_shim's SGLang hooks and plugin entry point, against a stand-in for the part of SGLang
0.5.17 they patch: a package written into a temporary directory and imported as ``sglang``,
with the wheel's module paths, class and method names and signatures, and the allocators'
semantics (free_pages from the front, frees appended, unit 0 reserved) without the kernels.
The hook tests need torch (CPU is enough) and skip without it; the GPU host runs them too."""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cumem_shim import hooks
from cumem_shim.errors import ShimConfigError
from cumem_shim.fake import FakeDevice
from cumem_shim.settings import Settings

torch = pytest.importorskip("torch")

FILES = {
    "sglang/__init__.py": '__version__ = "0.5.17-fake"\n',
    "sglang/srt/__init__.py": "",
    "sglang/srt/mem_cache/__init__.py": "",
    "sglang/srt/mem_cache/memory_pool.py": """
import torch

class MHATokenToKVPool:
    def __init__(self, size, page_size, dtype, head_num, head_dim, layer_num, device,
                 enable_memory_saver=False, v_head_dim=None, post_capture_active=False):
        self.size, self.page_size, self.dtype, self.store_dtype = size, page_size, dtype, dtype
        self.head_num, self.head_dim, self.layer_num, self.device = head_num, head_dim, layer_num, device
        self.v_head_dim = v_head_dim if v_head_dim is not None else head_dim
        self.kv_cache_layout, self.use_hnd = "nhd", False
        self.post_capture_active, self.enable_custom_mem_pool = post_capture_active, False
        self._create_buffers()

    def _create_buffers(self):
        self._create_buffers_normal()
        self.k_data_ptrs = [x.data_ptr() for x in self.k_buffer]

    def _kv_buffer_shapes(self):
        rows = self.size + self.page_size
        return (rows, self.head_num, self.head_dim), (rows, self.head_num, self.v_head_dim)

    def _create_buffers_normal(self):
        k_shape, v_shape = self._kv_buffer_shapes()
        self.k_buffer = [torch.zeros(k_shape, dtype=self.store_dtype) for _ in range(self.layer_num)]
        self.v_buffer = [torch.zeros(v_shape, dtype=self.store_dtype) for _ in range(self.layer_num)]

    def set_kv_buffer(self, layer, loc, k, v):
        self.k_buffer[layer][loc] = k
        self.v_buffer[layer][loc] = v
""",
    "sglang/srt/mem_cache/kv_cache_configurator.py": """
from dataclasses import dataclass
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator

@dataclass
class Result:
    max_total_num_tokens: int
    token_to_kv_pool: object
    token_to_kv_pool_allocator: object

class KVCacheConfigurator:
    def __init__(self, device, page_size, layers, heads, head_dim, dtype, token_bytes, cap=None):
        self.device, self.page_size, self.layers, self.heads = device, page_size, layers, heads
        self.head_dim, self.dtype, self.token_bytes, self.cap = head_dim, dtype, token_bytes, cap

    def _profile_available_bytes(self, pre_model_load_memory):
        return 1 << 20  # a crowded GPU: the stock profile finds almost nothing

    def configure(self, *, pre_model_load_memory):
        tokens = self._profile_available_bytes(pre_model_load_memory) // self.token_bytes
        tokens = tokens // self.page_size * self.page_size
        if self.cap is not None:
            tokens = min(tokens, self.cap)
        pool = MHATokenToKVPool(tokens, self.page_size, self.dtype, self.heads, self.head_dim,
                                self.layers, self.device)
        cls = TokenToKVPoolAllocator if self.page_size == 1 else PagedTokenToKVPoolAllocator
        if cls is TokenToKVPoolAllocator:
            alloc = cls(tokens, self.dtype, self.device, pool, need_sort=False)
        else:
            alloc = cls(tokens, self.page_size, self.dtype, self.device, pool, need_sort=False)
        return Result(tokens, pool, alloc)
""",
    "sglang/srt/mem_cache/radix_cache.py": """
import dataclasses

@dataclasses.dataclass
class EvictParams:
    num_tokens: int = 0

class RadixCache:
    def __init__(self, allocator):
        self.token_to_kv_pool_allocator = allocator
        self.asked = []

    def evict(self, params):
        self.asked.append(params.num_tokens)
        return params.num_tokens
""",
    "sglang/srt/mem_cache/allocator/__init__.py": "",
    "sglang/srt/mem_cache/allocator/token.py": """
import torch

class TokenToKVPoolAllocator:
    def __init__(self, size, dtype, device, kvcache, need_sort):
        self.size, self.page_size, self.dtype, self.device = size, 1, dtype, device
        self._kvcache, self.need_sort = kvcache, need_sort
        self.clear()

    def clear(self):
        self.free_pages = torch.arange(1, self.size + 1, dtype=torch.int64)
        self.release_pages = torch.empty((0,), dtype=torch.int64)

    def available_size(self):
        return len(self.free_pages) + len(self.release_pages)

    def merge_and_sort_free(self):
        if len(self.release_pages) > 0:
            self.free_pages = torch.sort(torch.cat((self.free_pages, self.release_pages)))[0]
            self.release_pages = torch.empty((0,), dtype=torch.int64)

    def alloc(self, need_size):
        if self.need_sort and need_size > len(self.free_pages):
            self.merge_and_sort_free()
        if need_size > len(self.free_pages):
            return None
        out, self.free_pages = self.free_pages[:need_size], self.free_pages[need_size:]
        return out

    def free(self, free_index):
        if free_index.numel() == 0:
            return
        if self.need_sort:
            self.release_pages = torch.cat((self.release_pages, free_index))
        else:
            self.free_pages = torch.cat((self.free_pages, free_index))
""",
    "sglang/srt/mem_cache/allocator/paged.py": """
import torch

class PagedTokenToKVPoolAllocator:
    def __init__(self, size, page_size, dtype, device, kvcache, need_sort):
        self.size, self.page_size, self.dtype, self.device = size, page_size, dtype, device
        self._kvcache, self.need_sort = kvcache, need_sort
        self.num_pages = size // page_size
        self.clear()

    def clear(self):
        self.free_pages = torch.arange(1, self.num_pages + 1, dtype=torch.int64)
        self.release_pages = torch.empty((0,), dtype=torch.int64)

    def available_size(self):
        return (len(self.free_pages) + len(self.release_pages)) * self.page_size

    def alloc(self, need_size):
        n = need_size // self.page_size
        if n > len(self.free_pages):
            return None
        pages, self.free_pages = self.free_pages[:n], self.free_pages[n:]
        return (pages[:, None] * self.page_size + torch.arange(self.page_size)).reshape(-1)

    def alloc_extend(self, prefix_lens, prefix_lens_cpu, seq_lens, seq_lens_cpu, last_loc,
                     extend_num_tokens, num_new_pages=None):
        need = sum(-(-int(s) // self.page_size) - -(-int(p) // self.page_size)
                   for s, p in zip(seq_lens_cpu, prefix_lens_cpu))
        if need > len(self.free_pages):
            return None
        pages, self.free_pages = self.free_pages[:need], self.free_pages[need:]
        return (pages[:, None] * self.page_size + torch.arange(self.page_size)).reshape(-1)

    def alloc_decode(self, seq_lens, seq_lens_cpu, last_loc):
        need = sum(1 for s in seq_lens_cpu if (int(s) - 1) % self.page_size == 0)
        if need > len(self.free_pages):
            return None
        pages, self.free_pages = self.free_pages[:need], self.free_pages[need:]
        return pages * self.page_size

    def free(self, free_index):
        if free_index.numel() == 0:
            return
        self.free_pages = torch.cat((torch.unique(free_index // self.page_size), self.free_pages))
""",
}


def install_fake(root: Path) -> None:
    """Write the package under ``root`` and make it importable as ``sglang`` (ahead of a real
    one, as on the GPU host)."""
    _purge()
    for rel, text in FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    sys.path.insert(0, str(root))


def uninstall_fake(root: Path) -> None:
    sys.path.remove(str(root))
    _purge()


def _purge() -> None:
    for name in [m for m in sys.modules if m == "sglang" or m.startswith("sglang.")]:
        del sys.modules[name]


class Rig:
    """The fake SGLang with the shim installed over a FakeDevice and CPU tensors."""

    def __init__(self, root: Path, world: int = 1, map_ahead: int = 0) -> None:
        from cumem_shim.freelist_torch import TorchFreeList

        install_fake(root)
        self.sock = str(root / "kv.sock")
        self.devices: list[FakeDevice] = []

        def driver(device: int) -> FakeDevice:
            self.devices.append(FakeDevice())
            return self.devices[-1]

        backend = hooks.Backend(
            driver=driver,
            tensors=lambda kv, shapes, dtype, device: [torch.zeros(s, dtype=dtype) for s in shapes],
            zero=lambda tensors, n: None,
            freelist=TorchFreeList,
            device_index=lambda d: 0,
            total_memory=lambda d: 80 << 30,
            world_size=lambda: world,
        )
        self.limit = 2 * (2 << 20) * 4  # two blocks of tiny-llama's layout
        hooks.install(Settings(self.sock, self.limit, None, 64, map_ahead), backend)
        from sglang.srt.mem_cache.kv_cache_configurator import KVCacheConfigurator

        self.Configurator = KVCacheConfigurator

    def configure(self, page_size: int = 1, cap: int | None = 100_000) -> Any:
        conf = self.Configurator("cpu", page_size, 2, 4, 64, torch.bfloat16, 2048, cap)
        return conf.configure(pre_model_load_memory=0)

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.sock)
            s.sendall(json.dumps(request).encode() + b"\n")
            out: dict[str, Any] = json.loads(s.makefile("rb").readline())
            return out

    def close(self, root: Path) -> None:
        st = hooks._STATE
        if st is not None and st.server is not None:
            st.server.close()
        if st is not None and st.kv is not None:
            st.kv.close()  # stops a map-ahead worker
        hooks._STATE = None
        uninstall_fake(root)


@pytest.fixture
def rig() -> Iterator[Rig]:
    root = Path(tempfile.mkdtemp(prefix="shimhk", dir="/tmp"))  # a short socket path
    r = Rig(root)
    yield r
    r.close(root)


def test_pool_is_virtual_and_admission_follows_the_limit(rig: Rig) -> None:
    res = rig.configure()
    pool, alloc = res.token_to_kv_pool, res.token_to_kv_pool_allocator
    assert res.max_total_num_tokens == 100_000  # the stock profile would have found 512
    kv = hooks.state().kv
    assert kv is not None and pool.k_buffer[0].shape == (100_001, 4, 64)
    assert kv.mapped == {0} and kv.layout.block_tokens == 4096
    assert alloc.available_size() == 2 * 4096 - 1
    assert len(alloc.free_pages) == 4095  # only block 0's units are really free
    got = alloc.alloc(6000)
    assert got is not None and len(got) == 6000 and kv.mapped == {0, 1}
    assert alloc.available_size() == 2 * 4096 - 1 - 6000
    assert kv.status().used_tokens == 6000


def test_set_limit_over_the_socket_grows_and_shrinks(rig: Rig) -> None:
    res = rig.configure()
    alloc = res.token_to_kv_pool_allocator
    out = rig.ask({"op": "set_limit", "bytes": 5 * 4 * (2 << 20), "revision": 1})
    assert out["ok"] and out["applied"]
    assert alloc.available_size() == 5 * 4096 - 1
    held = alloc.alloc(5 * 4096 - 1)
    assert held is not None and alloc.available_size() == 0
    rig.ask({"op": "set_limit", "bytes": 0, "revision": 2})
    assert alloc.available_size() == 64  # below use: slack for running requests only
    alloc.free(held[:15_000])
    alloc.available_size()
    kv = hooks.state().kv
    assert kv is not None and len(kv.mapped) < 5
    alloc.free(held[15_000:])
    alloc.available_size()
    status = rig.ask({"op": "status"})["status"]
    assert kv.mapped == {0} and status["mapped_bytes"] == 4 * (2 << 20)
    assert status["revision"] == 2 and status["used_tokens"] == 0


def test_paged_allocator_maps_before_extend_and_decode(rig: Rig) -> None:
    res = rig.configure(page_size=16)
    alloc = res.token_to_kv_pool_allocator
    kv = hooks.state().kv
    assert kv is not None and kv.layout.block_units == 256
    lens = torch.tensor([3000, 2000])
    out = alloc.alloc_extend(torch.zeros(2), torch.zeros(2), lens, lens, None, 5000)
    assert out is not None and kv.mapped == {0, 1}
    assert alloc.alloc_decode(lens + 1, lens + 1, None) is not None


def test_map_ahead_setting_reaches_the_pool() -> None:
    root = Path(tempfile.mkdtemp(prefix="shimhk", dir="/tmp"))
    r = Rig(root, map_ahead=2)
    try:
        res = r.configure()
        alloc = res.token_to_kv_pool_allocator
        kv = hooks.state().kv
        assert kv is not None and kv.map_ahead == 2
        assert alloc.alloc(10) is not None  # the first allocation starts the worker
        assert kv.settle(10)
        dev = r.devices[0]
        assert kv.mapped == {0} and dev.physical_bytes == 2 * kv.layout.block_bytes  # limit
        before = dev.thread_calls.copy()
        assert alloc.alloc(4096) is not None  # adopts block 1: no driver call here
        assert kv.mapped == {0, 1} and kv.stats.adopted == 1 and dev.thread_calls == before
    finally:
        r.close(root)


def test_a_second_pool_in_one_process_is_refused(rig: Rig) -> None:
    rig.configure()
    with pytest.raises(ShimConfigError, match="second KV pool"):
        rig.configure()


def test_tensor_parallel_is_refused() -> None:
    root = Path(tempfile.mkdtemp(prefix="shimhk", dir="/tmp"))
    r = Rig(root, world=2)
    try:
        with pytest.raises(ShimConfigError, match="2 ranks for a TP size of 1"):
            r.configure()
    finally:
        r.close(root)


def test_patches_are_idempotent_and_keep_the_original(rig: Rig) -> None:
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator

    first = TokenToKVPoolAllocator.alloc
    hooks.install(hooks.state().settings, hooks.state().backend)
    assert TokenToKVPoolAllocator.alloc is first
    assert first._chimera_shim_original.__qualname__ == "TokenToKVPoolAllocator.alloc"


def test_evictions_take_back_what_is_held_above_the_limit(rig: Rig) -> None:
    from sglang.srt.mem_cache.radix_cache import EvictParams, RadixCache

    alloc = rig.configure().token_to_kv_pool_allocator
    tree = RadixCache(alloc)
    held = alloc.alloc(6000)
    assert held is not None
    tree.evict(EvictParams(10))
    rig.ask({"op": "set_limit", "bytes": 0, "revision": 1})
    alloc.available_size()  # the scheduler applies the limit: 6000 in use, 4095 allowed
    tree.evict(params=EvictParams(10))
    assert tree.asked == [10, 10 + 6000 - 4095]
