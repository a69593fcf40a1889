"""Pinned staging, chimera's side (orchestrator/pools/pinned/): where a safetensors checkpoint's
tensors lie and how they are cut into buckets (layout.py), the holder process started on first
use and again after it died (client.py, with a stand-in holder of the same protocol), and the
re-target that pushes a held checkpoint and loads any other from disk (retarget.py). The holder's
torch side runs on the GPU: bench/gpu/pools.py --stage pinned."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.config import parse_config
from orchestrator.errors import ConfigError
from orchestrator.pools.pinned.client import HolderError, PinnedCache, PinnedHolder
from orchestrator.pools.pinned.layout import LayoutError, TensorAt, buckets, checkpoint_files, read_layout
from orchestrator.pools.retarget import HttpRetargeter
from orchestrator.supervisor.process import PROBE_PATH

FAKE = [sys.executable, str(Path(__file__).with_name("fake_pinned_holder.py"))]


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> None:
    """tensors: name -> (dtype, shape, itemsize), packed in this order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, (dtype, shape, item) in tensors.items():
        n = item
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(range(256)) * (off // 256) + bytes(off % 256))


def test_read_layout_finds_every_tensor_in_offset_order(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    write_safetensors(f, {"b.weight": ("BF16", [4, 8], 2), "a.bias": ("F32", [8], 4), "c": ("I64", [3], 8)})
    lay = read_layout(f)
    assert [t.name for t in lay.tensors] == ["b.weight", "a.bias", "c"]
    assert [(t.dtype, t.shape, t.begin, t.end) for t in lay.tensors] == [
        ("bfloat16", (4, 8), 0, 64),
        ("float32", (8,), 64, 96),
        ("int64", (3,), 96, 120),
    ]
    assert lay.data_bytes == 120 and lay.data_offset + lay.data_bytes == f.stat().st_size


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x01", "shorter than"),
        (struct.pack("<Q", 1 << 40), "is not a safetensors header"),
        (struct.pack("<Q", 3) + b"{x}", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_a_file_that_is_not_safetensors_says_why(tmp_path: Path, content: bytes, why: str) -> None:
    f = tmp_path / "bad.safetensors"
    f.write_bytes(content)
    with pytest.raises(LayoutError, match=why):
        read_layout(f)


def test_unknown_dtypes_and_tensors_past_the_end_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "a.safetensors"
    write_safetensors(f, {"x": ("F4", [2], 1)})
    with pytest.raises(LayoutError, match="dtype F4"):
        read_layout(f)
    raw = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)  # 8 of the 16 bytes
    with pytest.raises(LayoutError, match="outside the file"):
        read_layout(f)


def test_checkpoint_files_needs_safetensors(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="not a directory"):
        checkpoint_files(tmp_path / "nowhere")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(LayoutError, match="only safetensors"):
        checkpoint_files(tmp_path)


@given(st.lists(st.lists(st.integers(1, 300), min_size=0, max_size=12), min_size=1, max_size=4), st.integers(1, 900))
def test_buckets_hold_every_tensor_once_contiguously_within_the_bound(files: list[list[int]], bound: int) -> None:
    from orchestrator.pools.pinned.layout import FileLayout

    layouts = []
    for i, sizes in enumerate(files):
        off, ts = 0, []
        for k, n in enumerate(sizes):
            ts.append(TensorAt(f"f{i}.t{k}", "uint8", (n,), off, off + n))
            off += n
        layouts.append(FileLayout(Path(f"f{i}"), 8, off, tuple(ts)))
    out = buckets(layouts, bound)
    assert [(b.file, t) for b in out for t in b.tensors] == [(i, t) for i, f in enumerate(layouts) for t in f.tensors]
    for b in out:
        assert b.begin == b.tensors[0].begin and b.end == b.tensors[-1].end
        assert all(x.end == y.begin for x, y in zip(b.tensors, b.tensors[1:], strict=False))  # contiguous
        assert b.nbytes <= bound or len(b.tensors) == 1  # only a tensor larger than the bound stands alone


def ckpt(tmp_path: Path, name: str, n: int) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"\0" * n)
    return str(d)


def test_the_holder_starts_on_first_use_and_again_after_it_died(tmp_path: Path) -> None:
    holder = PinnedHolder(tmp_path / "h.sock", tmp_path / "h.log", {}, argv=FAKE)
    try:
        assert holder.pid is None  # nothing started until asked
        cache = PinnedCache(holder)
        a = ckpt(tmp_path, "a", 1000)
        assert cache.read(a) == 1000
        first = holder.pid
        assert first is not None and holder.ask({"op": "list"}, 5)["staged"] == {a: 1000}
        with pytest.raises(HolderError):
            holder.ask({"op": "exit"}, 5)  # dies without an answer
        assert holder.ask({"op": "list"}, 5)["staged"] == {}  # a new one: what it held is gone
        assert holder.pid not in (None, first)
        with pytest.raises(HolderError, match="no files"):
            cache.read(str(tmp_path / "empty"))
    finally:
        holder.stop()
    assert not (tmp_path / "h.sock").exists() and holder.pid is None


def test_a_holder_that_cannot_start_says_so(tmp_path: Path) -> None:
    holder = PinnedHolder(
        tmp_path / "h.sock", tmp_path / "h.log", {}, argv=[sys.executable, "-c", "raise SystemExit(2)"]
    )
    with pytest.raises(HolderError, match="exited with code 2 at start"):
        holder.ask({"op": "list"}, 5)


class Engine:
    """The server's side over httpx.MockTransport: which routes were called, and the probe."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.url.path == PROBE_PATH:
            return httpx.Response(200, json={"text": " once"})
        return httpx.Response(200, json={"success": True, "message": "ok"})


async def test_a_staged_checkpoint_is_pushed_and_any_other_loaded_from_disk(tmp_path: Path) -> None:
    holder = PinnedHolder(tmp_path / "h.sock", tmp_path / "h.log", {}, argv=FAKE)
    engine = Engine()
    retargeter = HttpRetargeter({"authorization": "Bearer k"}, httpx.MockTransport(engine), pinned=holder)
    a, b = ckpt(tmp_path, "a", 10), ckpt(tmp_path, "b", 10)
    try:
        PinnedCache(holder).read(a)
        text, phases = await retargeter.switch("http://e", a, (2, 3))
        assert engine.paths == [PROBE_PATH] and text == " once"  # pushed by the holder: no disk load
        assert phases["push_s"] == 0.01 and phases["ranks"] == 2 and phases["device"] == 2
        _, phases = await retargeter.switch("http://e", b, (0,))
        assert engine.paths[1:] == ["/update_weights_from_disk", PROBE_PATH] and "update_weights_s" in phases
        holder.stop()
        holder._argv[:2] = [sys.executable, "-c", "raise SystemExit(1)"]  # a holder that cannot come back
        _, phases = await retargeter.switch("http://e", a, (0,))  # from disk, not a failed request
        assert engine.paths[3:] == ["/update_weights_from_disk", PROBE_PATH]
    finally:
        holder.stop()
        await retargeter.aclose()


async def test_a_push_that_failed_part_way_loads_from_disk_instead() -> None:
    class Failing:
        async def ask_async(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
            return {"ok": False, "error": "OutOfMemoryError: CUDA out of memory"}

    engine = Engine()
    retargeter = HttpRetargeter(transport=httpx.MockTransport(engine), pinned=Failing())  # type: ignore[arg-type]
    text, phases = await retargeter.switch("http://e", "/ck/a", (0,))
    assert engine.paths == ["/update_weights_from_disk", PROBE_PATH]  # every tensor loaded again
    assert "update_weights_s" in phases and text == " once"
    await retargeter.aclose()


def pool_file(stage: str | None, stage_gb: float | None) -> dict[str, Any]:
    pool: dict[str, Any] = {"name": "p", "servers": [{"gpus": [0]}]}
    pool |= {"stage": stage} if stage is not None else {}
    pool |= {"stage_gb": stage_gb} if stage_gb is not None else {}
    return {
        "models": [{"name": "m0", "model_path": "llama-3.1-8b", "pool": "p"}],
        "pools": [pool],
    }


def test_stage_is_page_cache_by_default_and_pinned_needs_a_budget() -> None:
    assert parse_config(pool_file(None, 10)).pools[0].stage == "page_cache"
    assert parse_config(pool_file("pinned", 40)).pools[0].stage == "pinned"
    with pytest.raises(ConfigError, match=r"pools\[0\].stage: pinned needs a `stage_gb`"):
        parse_config(pool_file("pinned", None))
    with pytest.raises(ConfigError, match=r"pools\[0\].stage: must be one of page_cache, pinned"):
        parse_config(pool_file("gpu", 10))


def test_pinned_staging_needs_the_sglang_engine_and_no_ray(tmp_path: Path) -> None:
    from orchestrator.app import _pinned_holder

    cfg = parse_config(pool_file("pinned", 40))
    with pytest.raises(ConfigError, match="needs the sglang engine"):
        _pinned_holder(cfg, "sim", tmp_path, {}, ray=False)
    with pytest.raises(ConfigError, match="not supported with --ray"):
        _pinned_holder(cfg, "sglang", tmp_path, {}, ray=True)
    holder = _pinned_holder(cfg, "sglang", tmp_path, {}, ray=False)
    assert holder is not None and holder.pid is None  # started on first use, not here
    assert _pinned_holder(parse_config(pool_file(None, 10)), "sglang", tmp_path, {}, ray=False) is None


def test_a_pinned_pool_switches_at_the_copy_engines_speed_in_the_cost_model() -> None:
    from orchestrator.deployment import derive
    from orchestrator.perf import calibration as cal
    from orchestrator.pools.router import pool_costs
    from orchestrator.shapes import load_shape

    weights = load_shape("llama-3.1-8b").weight_bytes
    pinned = pool_costs(derive(parse_config(pool_file("pinned", 40))), "p")
    page_cache = pool_costs(derive(parse_config(pool_file(None, 40))), "p")
    assert pinned.retarget_s == pytest.approx(
        cal.MEMORY_OP_OVERHEAD_S + weights / cal.HOST_TO_DEVICE_BW * cal.PINNED_PUSH_OVERHEAD_FACTOR
    )
    assert 0.2 < pinned.retarget_s < 0.5 < 5 < page_cache.retarget_s  # 0.35 s against 6.4 s for an 8B
    assert pinned.wake_s == page_cache.wake_s


async def test_what_a_dead_holder_held_is_staged_again(tmp_path: Path) -> None:
    import asyncio

    from orchestrator.pools.holdings import Holdings
    from orchestrator.pools.staging import Stager

    a = ckpt(tmp_path, "a", 1000)
    raw = {
        "models": [{"name": "m", "model_path": a, "shape": "llama-3.1-8b", "pool": "p"}],
        "pools": [{"name": "p", "servers": [{"gpus": [0]}], "stage": "pinned", "stage_gb": 1}],
    }
    cfg = parse_config(raw)
    holdings = Holdings(cfg.pools)
    holder = PinnedHolder(tmp_path / "h.sock", tmp_path / "h.log", {}, argv=FAKE)
    cache = PinnedCache(holder)
    # the stager's clock is the one the popularity was bumped on: on time.monotonic, hours of
    # uptime decay a bump at 0 to nothing, and nothing would be staged
    stager = Stager(cfg.pools, {"p": (a,)}, holdings, pinned=cache, clock=lambda: 1.0)
    try:
        holdings.bump("p", a, 0.0)
        stager.poke("p")
        await asyncio.wait_for(stager.done.wait(), 10)
        assert stager.staged["p"] == {a} and cache.lost({a}) == set()
        with pytest.raises(HolderError):
            holder.ask({"op": "exit"}, 5)  # the holder dies (and the next one holds nothing)
        assert cache.lost({a}) == {a}
        stager.poke("p")  # the next request: staged again in the new holder
        await asyncio.wait_for(stager.done.wait(), 10)
        assert stager.staged["p"] == {a} and holder.ask({"op": "list"}, 5)["staged"] == {a: 1000}
    finally:
        holder.stop()


def test_pinned_staging_counts_against_host_ram_beside_the_parked_backups() -> None:
    from orchestrator.cli.main import _check_host_memory

    def cfg(stage: str | None) -> Any:
        raw = pool_file(stage, 30)
        raw |= {"mode": "full", "host": {"gpus": 1, "host_memory_gb": 64}}
        raw["pools"][0]["servers"] = [{"gpus": [0]}, {"gpus": [0]}]  # two 8B servers: 30 GiB of backups
        return parse_config(raw)

    _check_host_memory(cfg(None), "sim")  # 30 GiB of backups in 80% of 64 GB: fits
    with pytest.raises(ConfigError, match=r"beside the pools' pinned staging \(27.9 GiB of stage_gb\)"):
        _check_host_memory(cfg("pinned"), "sim")  # 30 more pinned: does not
