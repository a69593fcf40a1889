"""The control plane's private channel to the secondary proxy processes: a Unix socket in the
run folder (mode 0700, so only chimera's user reaches it; never a TCP port), one connection per
worker, carrying frames ``(op, id, arg)`` (frames.py: pickled, length-prefixed, read and written
in batches). An HTTP call per acquire cost a worker more CPU than the proxying it saves; a frame
is a few microseconds. It exposes the control loop's Router, nothing else:

- ``acquire (model, timeout_s)`` -> ``ok Endpoint`` | ``err (message, retry_after_s)``:
  ``router.acquire`` (the request is held and its model woken exactly as for the primary
  proxy's own requests); ``cancel`` of that id (the worker's client left) cancels the hold, and
  an endpoint handed out at that moment is released (ControlLoop.acquire does that);
- ``release [instance ids]``, ``suspect (instance id, detail)``;
- ``views`` -> ``views (models, instances)``, for the workers' /v1/models and /metrics.

Endpoints a worker acquired and had not released when its connection ends (it died) are
released then: the loop's in-flight counts never keep a dead worker's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from orchestrator.control.router import Router
from orchestrator.dataplane.frames import Frame, FrameWriter, read_frames
from orchestrator.errors import EngineUnavailable
from orchestrator.types import Endpoint

log = logging.getLogger("chimera.dataplane")
SOCKET_NAME = "control.sock"


def _forget(pending: dict[int, asyncio.Task[None]], rid: int) -> Callable[[asyncio.Task[None]], None]:
    def done(_task: asyncio.Task[None]) -> None:
        pending.pop(rid, None)

    return done


class Channel:
    def __init__(self, router: Router) -> None:
        self.router = router
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False

    async def serve(self, path: Path) -> None:
        await asyncio.to_thread(path.unlink, missing_ok=True)  # a previous run's
        self._server = await asyncio.start_unix_server(self._connection, path=str(path))
        os.chmod(path, 0o600)

    async def close(self) -> None:
        self._closed = True
        for w in list(self._writers):  # the workers see the end of the channel and stop
            w.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending: dict[int, asyncio.Task[None]] = {}
        held: Counter[str] = Counter()  # endpoints handed out and not released yet
        if self._closed:  # accepted while closing
            writer.close()
            return
        self._writers.add(writer)
        out = FrameWriter(writer)

        def on_frame(frame: Frame) -> None:
            op, rid, arg = frame
            if op == "acquire":
                task = asyncio.create_task(self._acquire(rid, arg, out, held))
                pending[rid] = task
                task.add_done_callback(_forget(pending, rid))
            elif op == "cancel":
                if (t := pending.pop(rid, None)) is not None:
                    t.cancel()
            elif op == "release":
                for iid in arg:
                    held[iid] -= 1
                    self.router.release(Endpoint(iid, "", ""))
            elif op == "suspect":
                self.router.suspect(*arg)
            elif op == "views":
                out.send(("views", rid, (self.router.models(), self.router.instances())))

        try:
            await read_frames(reader, on_frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker is gone
        finally:
            for t in list(pending.values()):
                t.cancel()
            await asyncio.gather(*pending.values(), return_exceptions=True)
            for iid, n in held.items():
                for _ in range(max(n, 0)):
                    self.router.release(Endpoint(iid, "", ""))
            if sum(n for n in held.values() if n > 0):
                log.warning("a proxy worker left with requests in flight; released %s", +held)
            self._writers.discard(writer)
            out.close()

    async def _acquire(self, rid: int, arg: tuple[str, float], out: FrameWriter, held: Counter[str]) -> None:
        name, timeout_s = arg
        spec = self.router.resolve(name)
        if spec is None:
            out.send(("err", rid, (f"unknown model {name!r}", None)))
            return
        try:
            ep = await self.router.acquire(spec, timeout_s)
        except EngineUnavailable as exc:
            out.send(("err", rid, (str(exc), exc.retry_after_s)))
            return
        held[ep.instance_id] += 1
        out.send(("ok", rid, ep))
