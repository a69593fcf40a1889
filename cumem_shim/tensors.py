"""Torch tensors over the shim's reserved range, through ``__cuda_array_interface__`` (no
copy, no torch allocator involved: the tensors never own or free the memory).

Each buffer's tensor starts at its offset in the range; only its first block is mapped when it
is made (enough for torch to find the device of the pointer). Its address never changes, so
SGLang's data_ptrs tables and captured CUDA graphs stay valid while blocks come and go.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cumem_shim.elastic import ElasticKV


class _DeviceBytes:
    """A CUDA-array-interface view of ``nbytes`` bytes at ``ptr`` (uint8, one dimension)."""

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (ptr, False),
            "strides": None,
            "version": 3,
        }


def buffer_tensors(kv: ElasticKV, shapes: Sequence[tuple[int, ...]], dtype: Any, device: Any) -> list[Any]:
    """One tensor per buffer of ``kv.layout``, of ``shapes[i]`` and ``dtype`` (any torch dtype,
    bfloat16 included: the bytes are viewed as ``dtype``)."""
    import torch

    lay = kv.layout
    if len(shapes) != len(lay.row_bytes):
        raise ValueError(f"{len(shapes)} shapes for {len(lay.row_bytes)} buffers")
    itemsize = torch.empty((), dtype=dtype).element_size()
    out = []
    for i, shape in enumerate(shapes):
        nbytes = math.prod(shape) * itemsize
        row = math.prod(shape[1:]) * itemsize
        if row != lay.row_bytes[i] or shape[0] > lay.slots:
            raise ValueError(
                f"buffer {i}: shape {tuple(shape)} does not fit the layout (row {lay.row_bytes[i]} B, {lay.slots} rows)"
            )
        raw = torch.as_tensor(_DeviceBytes(kv.base + lay.offsets[i], nbytes), device=device)
        out.append(raw.view(dtype).view(tuple(shape)))
    return out


def zero_block_zero(tensors: Sequence[Any], block_tokens: int) -> None:
    """Zero the always-mapped first block of every buffer (SGLang's buffers start zeroed;
    the padding slot 0 is read by padded requests). Synchronous: done before any forward."""
    import torch

    for t in tensors:
        t[: min(block_tokens, t.shape[0])].zero_()
    torch.cuda.synchronize(tensors[0].device if tensors else None)
