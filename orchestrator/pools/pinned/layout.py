"""Where a checkpoint's tensors lie in its safetensors files, and how they are cut into the
buckets the pinned holder pushes (holder.py): pure, no torch.

A safetensors file is an 8-byte little-endian header length, a JSON header
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, offsets
relative to the end of the header) and the tensors' bytes, packed. A bucket is a run of
consecutive tensors of one file: one contiguous byte range, so the holder copies it to the GPU
in one transfer and SGLang's ``FlattenedTensorBucket`` (``load_format: flattened_bucket``)
views each tensor back out of it by its offsets.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

# safetensors dtype names -> torch's attribute names (the holder maps them to torch dtypes)
DTYPES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
ITEMSIZE = {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "bfloat16": 2, "float16": 2, "int16": 2} | {
    t: 1 for t in ("int8", "uint8", "bool", "float8_e4m3fn", "float8_e5m2")
}
MAX_HEADER = 100 << 20  # safetensors' own limit on a header


class LayoutError(ValueError):
    """Not a safetensors checkpoint this holder can stage (the message says which file and why)."""


@dataclass(frozen=True)
class TensorAt:
    name: str
    dtype: str  # torch's name (DTYPES' values)
    shape: tuple[int, ...]
    begin: int  # byte offsets within the file's data section
    end: int


@dataclass(frozen=True)
class FileLayout:
    path: Path
    data_offset: int  # where the data section starts in the file
    data_bytes: int
    tensors: tuple[TensorAt, ...]  # by offset


@dataclass(frozen=True)
class Bucket:
    file: int  # index into the checkpoint's files
    begin: int  # byte range within that file's data section
    end: int
    tensors: tuple[TensorAt, ...]  # offsets still relative to the data section

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def checkpoint_files(path: Path) -> list[Path]:
    """The checkpoint's ``*.safetensors`` files, sorted; a LayoutError when it has none."""
    if not path.is_dir():
        raise LayoutError(f"{path}: not a directory")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LayoutError(f"{path}: no *.safetensors files (only safetensors checkpoints are staged pinned)")
    return files


def read_layout(path: Path) -> FileLayout:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise LayoutError(f"{path}: shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise LayoutError(f"{path}: header of {n} bytes is not a safetensors header")
        raw = f.read(n)
        f.seek(0, 2)
        size = f.tell()
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise LayoutError(f"{path}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise LayoutError(f"{path}: header is not a JSON object")
    data_offset = 8 + n
    tensors = []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = t["dtype"], tuple(int(x) for x in t["shape"]), t["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise LayoutError(f"{path}: tensor {name!r} has no dtype, shape or data_offsets") from exc
        if dtype not in DTYPES:
            raise LayoutError(f"{path}: tensor {name!r} has dtype {dtype}, which the holder does not stage")
        if not 0 <= begin <= end <= size - data_offset:
            raise LayoutError(f"{path}: tensor {name!r} lies outside the file")
        tensors.append(TensorAt(name, DTYPES[dtype], shape, int(begin), int(end)))
    tensors.sort(key=lambda t: t.begin)
    return FileLayout(path, data_offset, size - data_offset, tuple(tensors))


def buckets(files: list[FileLayout], max_bytes: int) -> list[Bucket]:
    """Consecutive tensors of one file, up to ``max_bytes`` a bucket (a larger tensor is a
    bucket of its own): every tensor in exactly one bucket, in file and offset order."""
    out: list[Bucket] = []
    for i, f in enumerate(files):
        run: list[TensorAt] = []
        for t in f.tensors:
            if run and t.end - run[0].begin > max_bytes:
                out.append(Bucket(i, run[0].begin, run[-1].end, tuple(run)))
                run = []
            run.append(t)
        if run:
            out.append(Bucket(i, run[0].begin, run[-1].end, tuple(run)))
    return out
