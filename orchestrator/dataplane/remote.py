"""The Router of a secondary proxy process (worker.py): the control plane's, reached over its
channel (channel.py, one connection). Names resolve from the same placements (the Config the
control plane wrote); ``acquire`` is one frame to the control loop, which holds the request and
wakes its model as for any other; a client that leaves while held sends ``cancel``, and an
endpoint that was handed out meanwhile is released. The views for /v1/models are refreshed
every ``VIEWS_S``. If the connection is lost (the control plane is gone) every call fails with
the 503 envelope and ``on_lost`` is called (the worker exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from orchestrator.config import Config, ModelSpec
from orchestrator.dashboard.readings import Readings
from orchestrator.dataplane.frames import Frame, FrameWriter, read_frames
from orchestrator.errors import EngineUnavailable
from orchestrator.proxy.admission import estimate_prompt_tokens, max_new_tokens
from orchestrator.proxy.errors import ProxyError
from orchestrator.types import Endpoint, InstanceView, ModelView

log = logging.getLogger("chimera.dataplane")
VIEWS_S = 1.0


class RemoteRouter:
    def __init__(
        self,
        config: Config,
        on_lost: Callable[[], None] | None = None,
        exposition: Callable[[], tuple[str, str, Readings]] | None = None,
    ) -> None:
        """``exposition``: this worker's (proxy label, exposition, dashboard readings), sent
        with each views refresh for the primary's /metrics and dashboard."""
        self.config = config
        self._on_lost = on_lost
        self._exposition = exposition
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._models: list[ModelView] = []
        self._instances: list[InstanceView] = []
        self._writer: FrameWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lost = False

    async def connect(self, path: Path) -> None:
        reader, writer = await asyncio.open_unix_connection(str(path))
        self._writer = FrameWriter(writer)
        self._tasks = [asyncio.create_task(self._read(reader)), asyncio.create_task(self._refresh_views())]

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()

    # ---- Router -------------------------------------------------------------------------

    def resolve(self, name: str) -> ModelSpec | None:
        return self.config.model(name)

    def known_names(self) -> list[str]:
        return self.config.names()

    def models(self) -> list[ModelView]:
        return self._models

    def instances(self) -> list[InstanceView]:
        return self._instances

    async def acquire(self, model: ModelSpec, timeout_s: float) -> Endpoint:
        rid = next(self._ids)
        fut = self._call("acquire", rid, (model.name, timeout_s))
        try:
            kind, arg = await fut
        except asyncio.CancelledError:  # the client left while held
            self._waiting.pop(rid, None)
            if fut.done() and not fut.cancelled() and fut.result()[0] == "ok":
                self.release(fut.result()[1])
            else:
                self._send(("cancel", rid, None))
            raise
        if kind == "ok":
            ep: Endpoint = arg
            return ep
        message, retry_after_s = arg
        raise EngineUnavailable(message, retry_after_s)

    def release(self, endpoint: Endpoint) -> None:
        self._send(("release", 0, [endpoint]))

    # ---- local admission (mode full), in the control plane's gate -------------------------

    async def admit(self, model: str, prompt_tokens: int, new_tokens: int, instance_id: str, arrival: float) -> int:
        """Wait for the request's turn in the control plane's gate; returns its id (pass it to
        ``admit_done`` when the request ends). Raises the gate's ProxyError (429) when it is
        shed, EngineUnavailable when the control plane is gone."""
        rid = next(self._ids)
        fut = self._call("admit", rid, (model, prompt_tokens, new_tokens, instance_id, arrival))
        try:
            kind, arg = await fut
        except asyncio.CancelledError:  # the client left while queued (or just as it was let go)
            self._waiting.pop(rid, None)
            self._send(("admit_cancel", rid, None))
            raise
        if kind == "admitted":
            return rid
        if kind == "shed":
            status, message, code, headers = arg
            raise ProxyError(status, message, code=code, headers=headers)
        message, retry_after_s = arg
        raise EngineUnavailable(message, retry_after_s)

    def admit_done(self, rid: int) -> None:
        self._send(("admit_done", rid, None))

    def suspect(self, instance_id: str, detail: str) -> None:
        self._send(("suspect", 0, (instance_id, detail)))

    # ---- the connection ------------------------------------------------------------------

    def _send(self, frame: Frame) -> None:
        if self._writer is not None and not self._lost:
            self._writer.send(frame)

    def _call(self, op: str, rid: int, arg: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._lost or self._writer is None:
            fut.set_exception(EngineUnavailable("the control plane is gone", retry_after_s=1.0))
            return fut
        self._waiting[rid] = fut
        self._writer.send((op, rid, arg))
        return fut

    async def _read(self, reader: asyncio.StreamReader) -> None:
        def on_frame(frame: Frame) -> None:
            kind, rid, arg = frame
            fut = self._waiting.pop(rid, None)
            if fut is None:
                if kind == "ok":  # answered after its cancel: give the endpoint back
                    self.release(arg)
                # an "admitted" after its admit_cancel: the control plane ended it on the cancel
            elif not fut.done():
                fut.set_result((kind, arg))

        try:
            await read_frames(reader, on_frame)
            log.error("the control plane's channel closed; this proxy stops")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            log.error("the control plane's channel closed (%s); this proxy stops", type(exc).__name__)
        self._lost = True
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(EngineUnavailable("the control plane is gone", retry_after_s=1.0))
        self._waiting.clear()
        if self._on_lost is not None:
            self._on_lost()

    async def _refresh_views(self) -> None:
        while not self._lost:
            with contextlib.suppress(EngineUnavailable):
                mine = self._exposition() if self._exposition is not None else None
                kind, (self._models, self._instances) = await self._call("views", next(self._ids), mine)
            await asyncio.sleep(VIEWS_S)


class RemoteGate:
    """A secondary proxy's admission gate (``app.state.admission``, proxy/admission.py ``Gate``):
    the control plane's one gate over the channel, so that every proxy's requests queue in one
    deadline order per GPU group and are shed alike."""

    def __init__(self, router: RemoteRouter) -> None:
        self._router = router

    @asynccontextmanager
    async def admitted(
        self, spec: ModelSpec, body: dict[str, Any], instance_id: str, arrival: float
    ) -> AsyncIterator[None]:
        rid = await self._router.admit(
            spec.name, estimate_prompt_tokens(body), max_new_tokens(body), instance_id, arrival
        )
        try:
            yield
        finally:
            self._router.admit_done(rid)
