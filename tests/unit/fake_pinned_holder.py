"""A stand-in for orchestrator/pools/pinned/holder.py with the same socket protocol and no torch:
``stage`` counts a checkpoint's bytes, ``push`` answers for staged ones, ``exit`` ends the process
(a holder that died)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path


def files_of(path: str) -> list[Path]:
    return [p for p in Path(path).iterdir() if p.is_file()] if Path(path).is_dir() else []


async def main(socket_path: Path) -> None:
    staged: dict[str, int] = {}

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            op = msg["op"]
            if op == "exit":
                os._exit(3)
            if op == "stage":
                files = files_of(msg["path"])
                if not files:
                    answer = {"ok": False, "error": f"cannot stage {msg['path']}: no files"}
                else:
                    staged[msg["path"]] = sum(p.stat().st_size for p in files)
                    answer = {"ok": True, "bytes": staged[msg["path"]], "seconds": 0.0}
            elif op == "drop":
                staged.pop(msg["path"], None)
                answer = {"ok": True}
            elif op == "list":
                answer = {"ok": True, "staged": staged, "pid": os.getpid()}
            elif op == "push" and msg["path"] not in staged:
                answer = {"ok": False, "staged": False, "error": "not staged"}
            elif op == "push":
                answer = {"ok": True, "phases": {"push_s": 0.01, "ranks": msg["ranks"], "device": msg["device"]}}
            else:
                answer = {"ok": False, "error": f"unknown op {op!r}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(on_client, path=str(socket_path))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--socket", type=Path, required=True)
    p.add_argument("--bucket-mb", type=int)
    asyncio.run(main(p.parse_args().socket))
    sys.exit(0)
