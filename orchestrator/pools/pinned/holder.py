"""The pinned-weights holder: ``python -m orchestrator.pools.pinned.holder --socket PATH``, one
process per GPU host, started by chimera for pools with ``stage: pinned`` (docs/pools.md). It
imports torch and SGLang's own helpers (the ``sglang`` extra); chimera's control process does not.

It keeps staged checkpoints in pinned host RAM (each safetensors file's data section in one
``cudaHostAlloc`` buffer) and pushes one into a running SGLang server (0.5.17) on request:

1. the checkpoint is cut into buckets of consecutive tensors (layout.py), each one contiguous
   byte range;
2. each bucket is copied host -> GPU into a fresh buffer of this process (pinned: at the copy
   engine's speed, ~55 GB/s on the H200 against ~7 GB/s for the loader's pageable reads), on a
   side stream, the next bucket's copy running while the server loads the current one;
3. ``POST /update_weights_from_tensor`` with ``load_format: flattened_bucket``: the body holds a
   CUDA IPC handle to the buffer and each tensor's offsets, pickled by SGLang's
   ``MultiprocessingSerializer`` (``FlattenedTensorMetadata``), the same for each TP rank; the
   server's ``model.load_weights`` copies GPU to GPU. ``flush_cache`` only with the last bucket.
   A buffer is dropped once its POST answered; torch keeps a shared block from reuse until the
   server's process let go of it (after synchronising its stream), and ``ipc_collect`` frees it.

Requests, one JSON object per line on the Unix socket, one answer line each:
``{"op": "stage", "path"}``, ``{"op": "drop", "path"}``, ``{"op": "list"}``,
``{"op": "push", "path", "base_url", "device", "ranks", "headers"}``. Answers carry
``"ok"``; a failed one says why in ``"error"`` (``"staged": false`` when the checkpoint is not
held here: the caller loads it from disk instead).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from orchestrator.pools.pinned.layout import ITEMSIZE, Bucket, LayoutError, buckets, checkpoint_files, read_layout
from orchestrator.sglang.api import UPDATE_WEIGHTS_FROM_TENSOR

log = logging.getLogger("chimera.pinned")
READ_CHUNK = 64 << 20
ALIGN = 16  # a bucket keeps its offset modulo this within its GPU buffer: every tensor stays aligned
PUSH_TIMEOUT_S = 120.0


@dataclass
class Staged:
    buffers: list[Any]  # pinned uint8 tensors, one per file (its data section)
    buckets: list[Bucket]
    nbytes: int


class Holder:
    def __init__(self, bucket_bytes: int) -> None:
        import torch
        from sglang.srt.utils import MultiprocessingSerializer
        from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorMetadata

        monkey_patch_torch_reductions()  # the server maps devices by UUID, as SGLang's own senders do
        self.torch = torch
        self._serialize = MultiprocessingSerializer.serialize
        self._meta = FlattenedTensorMetadata
        self.bucket_bytes = bucket_bytes
        self.staged: dict[str, Staged] = {}
        self._loading: dict[str, asyncio.Task[Staged]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._client = httpx.AsyncClient(trust_env=False, timeout=PUSH_TIMEOUT_S)

    def _read(self, path: str) -> Staged:
        torch = self.torch
        layouts = [read_layout(p) for p in checkpoint_files(Path(path))]
        for f in layouts:
            for t in f.tensors:
                if t.begin % ITEMSIZE[t.dtype]:
                    raise LayoutError(f"{f.path}: tensor {t.name!r} is not aligned to its dtype in the file")
        buffers = []
        for f in layouts:
            buf = torch.empty(f.data_bytes, dtype=torch.uint8, pin_memory=True)
            view = memoryview(buf.numpy())
            with open(f.path, "rb", buffering=0) as fh:
                fh.seek(f.data_offset)
                got = 0
                while got < f.data_bytes:
                    n = fh.readinto(view[got : got + READ_CHUNK])
                    if not n:
                        raise LayoutError(f"{f.path}: ends {f.data_bytes - got} bytes early")
                    got += n
            buffers.append(buf)
        return Staged(buffers, buckets(layouts, self.bucket_bytes), sum(f.data_bytes for f in layouts))

    async def stage(self, path: str) -> dict[str, Any]:
        if path in self.staged:
            return {"ok": True, "bytes": self.staged[path].nbytes, "seconds": 0.0}
        t0 = time.monotonic()
        task = self._loading.get(path)
        if task is None:
            task = self._loading[path] = asyncio.ensure_future(asyncio.to_thread(self._read, path))
        try:
            staged = await task
        except (OSError, LayoutError, RuntimeError) as exc:  # RuntimeError: torch could not pin it
            return {"ok": False, "error": f"cannot stage {path}: {exc}"}
        finally:
            self._loading.pop(path, None)
        self.staged[path] = staged
        log.info("staged %s pinned: %.2f GB in %.1f s", path, staged.nbytes / 1e9, time.monotonic() - t0)
        return {"ok": True, "bytes": staged.nbytes, "seconds": time.monotonic() - t0}

    def drop(self, path: str) -> dict[str, Any]:
        self.staged.pop(path, None)
        return {"ok": True}

    async def push(self, path: str, base_url: str, device: int, ranks: int, headers: dict[str, str]) -> dict[str, Any]:
        staged = self.staged.get(path)
        if staged is None:
            return {"ok": False, "staged": False, "error": f"{path} is not staged pinned"}
        async with self._locks.setdefault(device, asyncio.Lock()):
            return await self._push(staged, base_url, device, ranks, headers)

    async def _push(
        self, staged: Staged, base_url: str, device: int, ranks: int, headers: dict[str, str]
    ) -> dict[str, Any]:
        torch = self.torch
        dev = torch.device("cuda", device)
        stream = torch.cuda.Stream(dev)

        def upload(b: Bucket) -> tuple[Any, Any]:
            pad = b.begin % ALIGN
            with torch.cuda.device(dev), torch.cuda.stream(stream):
                buf = torch.empty(pad + b.nbytes, dtype=torch.uint8, device=dev)
                buf[pad:].copy_(staged.buffers[b.file][b.begin : b.end], non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
            return buf, done

        t0 = time.monotonic()
        wait_s = post_s = 0.0
        todo = staged.buckets
        nxt = upload(todo[0])
        for i, b in enumerate(todo):
            buf, done = nxt
            tw = time.monotonic()
            await asyncio.to_thread(done.synchronize)
            wait_s += time.monotonic() - tw
            nxt = upload(todo[i + 1]) if i + 1 < len(todo) else (None, None)
            base = b.begin - b.begin % ALIGN
            meta = [
                self._meta(
                    name=t.name,
                    shape=torch.Size(t.shape),
                    dtype=getattr(torch, t.dtype),
                    start_idx=t.begin - base,
                    end_idx=t.end - base,
                    numel=t.end - t.begin,
                )
                for t in b.tensors
            ]
            payload = self._serialize({"flattened_tensor": buf, "metadata": meta}, output_str=True)
            body = {
                "serialized_named_tensors": [payload] * ranks,
                "load_format": "flattened_bucket",
                "flush_cache": i == len(todo) - 1,
            }
            tp = time.monotonic()
            try:
                r = await self._client.post(base_url + UPDATE_WEIGHTS_FROM_TENSOR.path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                return {"ok": False, "error": f"POST {UPDATE_WEIGHTS_FROM_TENSOR.path}: {type(exc).__name__}: {exc}"}
            post_s += time.monotonic() - tp
            if r.status_code != 200 or not _success(r):
                return {"ok": False, "error": f"update_weights_from_tensor answered {r.status_code}: {r.text[:300]}"}
            del buf, payload
            torch.cuda.ipc_collect()
        total = time.monotonic() - t0
        phases = {"copy_wait_s": wait_s, "post_s": post_s, "push_s": total}
        return {"ok": True, "phases": phases, "buckets": len(todo), "bytes": staged.nbytes}

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "stage":
            return await self.stage(str(msg["path"]))
        if op == "drop":
            return self.drop(str(msg["path"]))
        if op == "list":
            return {"ok": True, "staged": {p: s.nbytes for p, s in self.staged.items()}}
        if op == "push":
            return await self.push(
                str(msg["path"]),
                str(msg["base_url"]),
                int(msg.get("device", 0)),
                int(msg.get("ranks", 1)),
                dict(msg.get("headers") or {}),
            )
        return {"ok": False, "error": f"unknown op {op!r}"}


def _success(r: httpx.Response) -> bool:
    try:
        return bool(r.json().get("success"))
    except ValueError:
        return False


async def serve(socket_path: Path, bucket_bytes: int) -> None:
    holder = Holder(bucket_bytes)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    msg = json.loads(line)
                    if not isinstance(msg, dict):
                        raise TypeError("not a JSON object")
                    answer = await holder.handle(msg)
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": f"bad request: {exc}"}
                except Exception as exc:  # torch's (a GPU buffer not allocated...): said, not fatal
                    log.exception("request %s failed", line[:200])
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server = await asyncio.start_unix_server(on_client, path=str(socket_path), limit=1 << 20)
    os.chmod(socket_path, 0o600)
    log.info("holding pinned weights; requests on %s", socket_path)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.pools.pinned.holder",
        description="Hold pooled checkpoints in pinned host RAM and push them into SGLang servers (docs/pools.md).",
    )
    p.add_argument("--socket", type=Path, required=True, help="the Unix socket to answer on")
    p.add_argument("--bucket-mb", type=int, default=1024, help="GPU buffer per transfer, MiB (two in flight)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("the pinned holder needs torch (pip install 'chimera[sglang]')", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(a.socket, a.bucket_mb << 20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
