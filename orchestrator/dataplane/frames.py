"""Frames on the control plane's channel (channel.py): length-prefixed pickled ``(op, id, arg)``
tuples (same code and same user on both ends). Under load a connection carries thousands a
second, so both directions batch: ``read_frames`` parses every frame a read brought (one
``read`` call for many frames, not two ``readexactly`` awaits each), and ``FrameWriter`` queues
the frames sent during one turn of the event loop and writes them in one call (one ``send``
system call, not one per frame)."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from typing import Any

Frame = tuple[str, int, Any]
READ_BYTES = 1 << 16
_HEADER = 4


def encode(frame: Frame) -> bytes:
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_HEADER, "big") + data


async def read_frames(reader: asyncio.StreamReader, on_frame: Callable[[Frame], None]) -> None:
    """Call ``on_frame`` for each frame, in order, until the other end closes (returns) or the
    connection breaks (raises ConnectionError); a frame cut off by the close raises
    IncompleteReadError."""
    buf = bytearray()
    while True:
        chunk = await reader.read(READ_BYTES)
        if not chunk:
            if buf:
                raise asyncio.IncompleteReadError(bytes(buf), None)
            return
        buf += chunk
        start = 0
        while len(buf) - start >= _HEADER:
            n = int.from_bytes(buf[start : start + _HEADER], "big")
            end = start + _HEADER + n
            if end > len(buf):
                break
            on_frame(pickle.loads(buf[start + _HEADER : end]))
            start = end
        del buf[:start]


class FrameWriter:
    """Frames to one connection, written once per event-loop turn. ``send`` never blocks (the
    transport buffers, as ``StreamWriter.write`` does)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._out: list[bytes] = []

    def send(self, frame: Frame) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(encode(frame))

    def _flush(self) -> None:
        data, self._out = b"".join(self._out), []
        if not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        if self._out:
            self._flush()
        self.writer.close()
