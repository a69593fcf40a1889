"""cumem_shim's hooks on SGLang's real classes (skipped unless sglang and torch are installed:
a GPU host, or a developer machine with the wheel). CPU tensors and the fake device stand in
for CUDA; everything else is the installed SGLang's own code: the plugin loader, the pool and
the allocator."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumem_shim import hooks, plugin
from cumem_shim import settings as env
from cumem_shim.fake import FakeDevice
from cumem_shim.settings import Settings

torch = pytest.importorskip("torch")
pytest.importorskip("sglang.srt.mem_cache.memory_pool")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def installed() -> Iterator[Path]:
    from cumem_shim.freelist_torch import TorchFreeList

    d = Path(tempfile.mkdtemp(prefix="shimreal", dir="/tmp"))
    backend = hooks.Backend(
        driver=lambda dev: FakeDevice(),
        tensors=lambda kv, shapes, dtype, device: [torch.zeros(s, dtype=dtype) for s in shapes],
        zero=lambda t, n: None,
        freelist=TorchFreeList,
        device_index=lambda d: 0,
        total_memory=lambda d: 80 << 30,
        world_size=lambda: 1,
    )
    hooks.install(Settings(str(d / "kv.sock"), 2 * 8 * (1 << 20), None, 64, 0), backend)
    yield d / "kv.sock"
    st = hooks.state()
    if st.server is not None:
        st.server.close()
    hooks._STATE = None


def test_real_pool_and_allocator_follow_the_limit(installed: Path) -> None:
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    pool = MHATokenToKVPool(
        100_000,
        page_size=1,
        dtype=torch.bfloat16,
        head_num=4,
        head_dim=64,
        layer_num=2,
        device="cpu",
        enable_memory_saver=False,
    )
    kv = hooks.state().kv
    assert kv is not None and pool.k_buffer[0].shape == (100_001, 4, 64)
    alloc = TokenToKVPoolAllocator(100_000, torch.bfloat16, "cpu", pool, need_sort=False)
    assert alloc.available_size() == 2 * 4096 - 1 and len(alloc.free_pages) == 4095
    got = alloc.alloc(6000)
    assert got is not None and kv.mapped == {0, 1}
    alloc.free(got)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(installed))
        s.sendall(b'{"op":"set_limit","bytes":0,"revision":1}\n')
        assert json.loads(s.makefile("rb").readline())["applied"]
    assert alloc.available_size() == 4095 and kv.mapped == {0}


def test_sglangs_plugin_loader_finds_and_runs_the_shim(tmp_path: Path) -> None:
    plugin.entry_point_dir(tmp_path / "ep")
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_SHIM")}
    base["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "ep"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    code = (
        "from sglang.srt.plugins import load_plugins; load_plugins(); "
        "from cumem_shim import hooks; print('INSTALLED', hooks._STATE is not None)"
    )
    bad = {**base, env.SOCKET: str(tmp_path / "x.sock"), env.STRICT_IDLE_CHECK: "0"}
    r = subprocess.run([sys.executable, "-c", code], env=bad, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and env.LIMIT_BYTES in r.stderr and "INSTALLED" not in r.stdout
    r = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "INSTALLED False" in r.stdout  # not asked for: inactive
