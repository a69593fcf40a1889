"""The control plane's private channel to the secondary proxy processes: a Unix socket in the
run folder (mode 0700, so only chimera's user reaches it; never a TCP port), one connection per
worker, carrying frames ``(op, id, arg)`` (frames.py: pickled, length-prefixed, read and written
in batches). An HTTP call per acquire cost a worker more CPU than the proxying it saves; a frame
is a few microseconds. It exposes the control loop's Router, nothing else:

- ``acquire (model, timeout_s)`` -> ``ok Endpoint`` | ``err (message, retry_after_s)``:
  ``router.acquire`` of the primary proxy's own Router (the control loop, wrapped for LoRA
  adapters and shape pools: a request is held, its model woken, its adapter loaded or its pooled
  server re-targeted exactly as for the primary's own requests); ``cancel`` of that id (the
  worker's client left) cancels the hold, and an endpoint handed out at that moment is released
  (ControlLoop.acquire does that);
- ``release [endpoints]`` (whole endpoints: an adapter's is released by its served name),
  ``suspect (instance id, detail)``;
- mode full, local admission (proxy/admission.py) in the control plane's one gate, so that the
  workers' requests queue in deadline order with the primary's and count as KV demand:
  ``admit (model, prompt tokens, new tokens, instance id, arrival)`` -> ``admitted`` | ``shed
  (status, message, code, headers)`` (the 429 with its Retry-After) | ``err (message, None)``;
  then ``admit_done`` of that id when the request ended, or ``admit_cancel`` when its client
  left (queued: it leaves the queue; dispatched meanwhile: the same as done);
- ``views (proxy label, exposition, readings)`` -> ``views (models, instances)``: the control
  plane's views for the workers' /v1/models; the worker's own request series, which the
  primary's /metrics puts in labelled ``proxy`` (``proxy_metrics``; metrics/federate.py) and
  its dashboard adds in (``proxy_readings``; dashboard/readings.py).

Endpoints a worker acquired and had not released, and requests it had admitted and not ended,
when its connection ends (it died) are given back then: the loop's in-flight counts and the
gate's room never keep a dead worker's requests.
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
from orchestrator.dashboard.readings import Readings
from orchestrator.dataplane.frames import Frame, FrameWriter, read_frames
from orchestrator.errors import EngineUnavailable
from orchestrator.proxy.admission import AdmissionGate
from orchestrator.proxy.errors import ProxyError
from orchestrator.types import Endpoint

log = logging.getLogger("chimera.dataplane")
SOCKET_NAME = "control.sock"


def _forget(pending: dict[int, asyncio.Task[None]], rid: int) -> Callable[[asyncio.Task[None]], None]:
    def done(_task: asyncio.Task[None]) -> None:
        pending.pop(rid, None)

    return done


class Channel:
    def __init__(self, router: Router, gate: AdmissionGate | None = None) -> None:
        self.router = router
        self.gate = gate
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False
        self._reports: dict[asyncio.StreamWriter, tuple[str, str, Readings]] = {}  # per worker, its last

    async def serve(self, path: Path) -> None:
        await asyncio.to_thread(path.unlink, missing_ok=True)  # a previous run's
        self._server = await asyncio.start_unix_server(self._connection, path=str(path))
        os.chmod(path, 0o600)

    def proxy_metrics(self) -> list[tuple[str, str]]:
        """The live workers' (proxy label, exposition) as they last sent them (every VIEWS_S)."""
        return sorted((label, text) for label, text, _ in self._reports.values())

    def proxy_readings(self) -> list[Readings]:
        """The live workers' dashboard readings as they last sent them."""
        return [r for _, _, r in self._reports.values()]

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
        held: Counter[Endpoint] = Counter()  # endpoints handed out and not released yet
        admitting: dict[int, asyncio.Task[None]] = {}
        admitted: dict[int, tuple[str, str]] = {}  # id -> (instance id, gate id): dispatched, not ended
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
                for endpoint in arg:
                    held[endpoint] -= 1
                    self.router.release(endpoint)
            elif op == "admit":
                task = asyncio.create_task(self._admit(rid, arg, out, admitted))
                admitting[rid] = task
                task.add_done_callback(_forget(admitting, rid))
            elif op in ("admit_done", "admit_cancel"):
                if (t := admitting.pop(rid, None)) is not None:
                    t.cancel()  # still queued: the gate takes it out (or ends it, dispatched just now)
                elif (got := admitted.pop(rid, None)) is not None and self.gate is not None:
                    self.gate.done(*got)
            elif op == "suspect":
                self.router.suspect(*arg)
            elif op == "views":
                if arg is not None:
                    self._reports[writer] = arg
                out.send(("views", rid, (self.router.models(), self.router.instances())))

        try:
            await read_frames(reader, on_frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker is gone
        finally:
            tasks = [*pending.values(), *admitting.values()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for endpoint, n in held.items():
                for _ in range(max(n, 0)):
                    self.router.release(endpoint)
            if self.gate is not None:
                for iid, gid in admitted.values():
                    self.gate.done(iid, gid)
            if sum(n for n in held.values() if n > 0):
                log.warning(
                    "a proxy worker left with requests in flight; released %s",
                    {e.instance_id: n for e, n in held.items() if n > 0},
                )
            self._writers.discard(writer)
            self._reports.pop(writer, None)
            out.close()

    async def _acquire(self, rid: int, arg: tuple[str, float], out: FrameWriter, held: Counter[Endpoint]) -> None:
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
        held[ep] += 1
        out.send(("ok", rid, ep))

    async def _admit(
        self, rid: int, arg: tuple[str, int, int, str, float], out: FrameWriter, admitted: dict[int, tuple[str, str]]
    ) -> None:
        name, prompt_tokens, new_tokens, iid, arrival = arg
        spec = self.router.resolve(name)
        if self.gate is None or spec is None:  # no gate (not mode full): nothing to wait for
            out.send(("admitted", rid, None))
            return
        try:
            gid = await self.gate.admit_tokens(spec, prompt_tokens, new_tokens, iid, arrival)
        except ProxyError as exc:  # shed: the 429 with its Retry-After, rebuilt in the worker
            out.send(("shed", rid, (exc.status, exc.message, exc.code, exc.headers)))
            return
        except KeyError as exc:
            out.send(("err", rid, (str(exc), None)))
            return
        admitted[rid] = (iid, gid)
        out.send(("admitted", rid, None))
