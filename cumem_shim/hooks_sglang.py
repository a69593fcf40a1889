"""The functions patched into SGLang's classes (what and why: hooks.py). Each wrapper keeps
the original as ``_chimera_shim_original`` and calls it unchanged when its object is not backed
by the shim. All run on the scheduler thread, inside SGLang's own calls."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

from cumem_shim import hooks
from cumem_shim.channel import ChannelServer
from cumem_shim.elastic import ElasticKV
from cumem_shim.errors import ShimConfigError
from cumem_shim.maptrace import MapTrace
from cumem_shim.pages import KVLayout
from cumem_shim.ranks import Follower, carry
from cumem_shim.settings import rank_socket

log = logging.getLogger("cumem_shim")
_MARK = "_chimera_shim_original"
_KV = "_chimera_kv"  # attribute on a shim-backed pool and on its allocator


def patch(classes: dict[str, type]) -> None:
    pool, conf = classes["MHATokenToKVPool"], classes["KVCacheConfigurator"]
    _wrap(pool, "_create_buffers_normal", _create_buffers_normal)
    _wrap(conf, "_profile_available_bytes", _profile_available_bytes)
    _wrap(conf, "configure", _configure)
    for name in ("TokenToKVPoolAllocator", "PagedTokenToKVPoolAllocator"):
        cls = classes[name]
        _wrap(cls, "clear", _clear)
        _wrap(cls, "available_size", _available_size)
        _wrap(cls, "alloc", _alloc)
    _wrap(classes["RadixCache"], "evict", _evict)
    paged = classes["PagedTokenToKVPoolAllocator"]
    _wrap(paged, "alloc_extend", _alloc_extend)
    _wrap(paged, "alloc_decode", _alloc_decode)
    if "SchedulerRequestReceiver" in classes:
        _wrap(classes["SchedulerRequestReceiver"], "_broadcast_reqs_across_ranks", _broadcast)


def _wrap(cls: type, name: str, hook: Callable[..., Any]) -> None:
    original = getattr(cls, name)
    if getattr(original, _MARK, None) is not None:
        return  # this process patched it already
    sig = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return hook(original, sig, self, *args, **kwargs)

    setattr(wrapper, _MARK, original)
    setattr(cls, name, wrapper)


def kv_of(obj: Any) -> ElasticKV | None:
    kv = getattr(obj, _KV, None)
    return kv if isinstance(kv, ElasticKV) else None


# -- KV pool -------------------------------------------------------------------------------
def _create_buffers_normal(original: Any, sig: Any, pool: Any) -> None:
    st = hooks.state()
    problems = []
    layout = getattr(pool, "kv_cache_layout", "nhd")
    if layout != "nhd" or getattr(pool, "use_hnd", False):
        problems.append(f"KV layout {layout!r} (only the default NHD layout)")
    if getattr(pool, "post_capture_active", False):
        problems.append("post-capture KV sizing (unset SGLANG_ENABLE_POST_CAPTURE_KV_SIZING)")
    if getattr(pool, "enable_custom_mem_pool", False):
        problems.append("a custom KV memory pool (PD disaggregation over NVLink)")
    ranks, tp = st.backend.world_size(), st.settings.tp_size
    if ranks != tp:
        problems.append(
            f"{ranks} ranks for a TP size of {tp} (CHIMERA_SHIM_TP_SIZE): the shim backs tensor "
            "parallelism only (no pipeline or data parallelism)"
        )
    if st.kv is not None:
        problems.append("a second KV pool in one process (a speculative-decoding draft model)")
    if problems:
        raise ShimConfigError(
            "cumem_shim cannot back this KV pool: "
            + "; ".join(problems)
            + ". Start this model without the shim (placements mode: static)"
        )
    k_shape, v_shape = (tuple(int(x) for x in s) for s in pool._kv_buffer_shapes())
    layers, itemsize = int(pool.layer_num), int(pool.store_dtype.itemsize)
    rows = int(pool.size) + int(pool.page_size)
    if k_shape[0] != rows or v_shape[0] != rows:
        raise ShimConfigError(
            f"cumem_shim: KV buffer shapes {k_shape}/{v_shape} do not have "
            f"size + page_size = {rows} rows; this SGLang's layout changed"
        )
    device = st.backend.device_index(pool.device)
    driver = st.backend.driver(device)
    lay = KVLayout(
        driver.granularity(device),
        int(pool.page_size),
        rows,
        (math.prod(k_shape[1:]) * itemsize,) * layers + (math.prod(v_shape[1:]) * itemsize,) * layers,
    )
    kv = ElasticKV(
        lay,
        driver,
        device,
        st.settings.limit_bytes,
        slack_tokens=st.settings.slack_tokens,
        map_ahead_blocks=st.settings.map_ahead_blocks,
        ranked=tp > 1,
        idle_fill_s=st.settings.idle_fill_s,
        # one file per TP rank, named as the ranks' sockets are
        trace=MapTrace(rank_socket(st.settings.map_trace, st.backend.rank() if tp > 1 else 0))
        if st.settings.map_trace
        else None,
    )
    tensors = st.backend.tensors(kv, [k_shape] * layers + [v_shape] * layers, pool.store_dtype, pool.device)
    st.backend.zero(tensors, lay.block_tokens)
    pool.k_buffer, pool.v_buffer = tensors[:layers], tensors[layers:]
    setattr(pool, _KV, kv)
    st.kv = kv
    rank = st.backend.rank() if tp > 1 else 0
    path = rank_socket(st.settings.socket, rank)
    st.server = ChannelServer(path, kv if rank == 0 else Follower(kv, rank, st.settings.socket)).start()
    log.warning(
        "cumem_shim: KV pool of %d tokens in a %.1f GiB virtual range (%d blocks of %d "
        "tokens, %.0f MiB each); limit %.2f GiB; map-ahead %d block(s), idle fill after %s; "
        "TP rank %d of %d; control socket %s",
        lay.capacity_units * lay.page_size,
        lay.reserve_bytes / 2**30,
        lay.num_blocks,
        lay.block_tokens,
        lay.block_bytes / 2**20,
        st.settings.limit_bytes / 2**30,
        st.settings.map_ahead_blocks,
        f"{st.settings.idle_fill_s:g} s" if st.settings.idle_fill_s else "never",
        rank,
        tp,
        path,
    )


def _profile_available_bytes(original: Any, sig: Any, conf: Any, *args: Any, **kwargs: Any) -> int:
    """The virtual KV budget: the configured one, else the whole GPU. The stock profile is
    not called: with other models resident it could find no free memory and refuse to start,
    though the shim needs none until tokens are allocated."""
    st = hooks.state()
    if st.settings.virtual_kv_bytes is not None:
        return st.settings.virtual_kv_bytes
    return st.backend.total_memory(st.backend.device_index(conf.device))


def _configure(original: Any, sig: Any, conf: Any, *args: Any, **kwargs: Any) -> Any:
    result = original(conf, *args, **kwargs)
    pool = getattr(result, "token_to_kv_pool", None)
    alloc = getattr(result, "token_to_kv_pool_allocator", None)
    if kv_of(pool) is None or kv_of(alloc) is None:
        raise ShimConfigError(
            f"cumem_shim was requested but this server's KV pool is {type(pool).__name__} with "
            f"{type(alloc).__name__}: the shim backs only MHATokenToKVPool with "
            "TokenToKVPoolAllocator or PagedTokenToKVPoolAllocator (no MLA, SWA, hybrid or "
            "quantized KV). Start this model without the shim (placements mode: static)"
        )
    return result


# -- allocators ----------------------------------------------------------------------------
def _clear(original: Any, sig: Any, alloc: Any) -> None:
    original(alloc)
    kv = kv_of(alloc)
    if kv is not None:
        kv.on_clear()
        return
    kv = kv_of(getattr(alloc, "_kvcache", None))
    if kv is None:
        return
    if int(alloc.page_size) != kv.layout.page_size:
        raise ShimConfigError(
            f"cumem_shim: allocator page_size {alloc.page_size} differs from "
            f"the pool's {kv.layout.page_size} (decode context parallelism?)"
        )
    setattr(alloc, _KV, kv)
    kv.attach(hooks.state().backend.freelist(alloc, kv.layout))


def _available_size(original: Any, sig: Any, alloc: Any) -> int:
    kv = kv_of(alloc)
    return int(original(alloc)) if kv is None else kv.available()


def _alloc(original: Any, sig: Any, alloc: Any, need_size: int, *args: Any, **kwargs: Any) -> Any:
    kv = kv_of(alloc)
    if kv is not None:
        kv.ensure(-(-int(need_size) // int(alloc.page_size)))
    out = original(alloc, need_size, *args, **kwargs)
    if kv is not None:
        kv.publish()
    return out


def _alloc_extend(original: Any, sig: Any, alloc: Any, *args: Any, **kwargs: Any) -> Any:
    kv = kv_of(alloc)
    if kv is not None:
        bound = sig.bind(alloc, *args, **kwargs).arguments
        tokens, reqs = int(bound["extend_num_tokens"]), len(bound["seq_lens_cpu"])
        kv.ensure(-(-tokens // int(alloc.page_size)) + reqs)  # each request may open a page
    out = original(alloc, *args, **kwargs)
    if kv is not None:
        kv.publish()
    return out


def _alloc_decode(original: Any, sig: Any, alloc: Any, *args: Any, **kwargs: Any) -> Any:
    kv = kv_of(alloc)
    if kv is not None:
        kv.ensure(len(sig.bind(alloc, *args, **kwargs).arguments["seq_lens_cpu"]))
    out = original(alloc, *args, **kwargs)
    if kv is not None:
        kv.publish()
    return out


# -- prefix cache --------------------------------------------------------------------------
def _evict(original: Any, sig: Any, tree: Any, *args: Any, **kwargs: Any) -> Any:
    kv = kv_of(getattr(tree, "token_to_kv_pool_allocator", None))
    if kv is not None:
        extra = kv.excess_units() * kv.layout.page_size
        if extra > 0:
            bound = sig.bind(tree, *args, **kwargs)
            params = bound.arguments["params"]
            bound.arguments["params"] = dataclasses.replace(params, num_tokens=int(params.num_tokens) + extra)
            return original(*bound.args, **bound.kwargs)
    return original(tree, *args, **kwargs)


# -- tensor parallelism --------------------------------------------------------------------
def _broadcast(original: Any, sig: Any, receiver: Any, recv_reqs: Any) -> Any:
    """Rank 0's newly accepted limit rides this step's broadcast to every rank (ranks.py)."""
    kv = hooks.state().kv
    if kv is None or not kv.ranked:
        return original(receiver, recv_reqs)
    return carry(kv, recv_reqs, lambda reqs: original(receiver, reqs))
