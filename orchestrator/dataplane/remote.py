"""The Router of a secondary proxy process (worker.py): the control plane's, reached through
its channel (channel.py). Names resolve from the same placements (the Config the control plane
wrote); ``acquire`` is one call to the control loop, which holds the request and wakes its model
as for any other; releases are batched (sent as soon as the previous batch is answered), so the
loop's in-flight counts lag by at most one round trip (an instance looks busy a little longer,
never idle too early). The views for /v1/models are refreshed every ``VIEWS_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle

import httpx

from orchestrator.config import Config, ModelSpec
from orchestrator.errors import EngineUnavailable
from orchestrator.types import Endpoint, InstanceView, ModelView

log = logging.getLogger("chimera.dataplane")
VIEWS_S = 1.0
BASE = "http://control"  # the host part is ignored on a Unix socket


class RemoteRouter:
    def __init__(self, config: Config, client: httpx.AsyncClient) -> None:
        self.config = config
        self._http = client
        self._released: list[str] = []
        self._wake = asyncio.Event()
        self._models: list[ModelView] = []
        self._instances: list[InstanceView] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._flush_releases()), asyncio.create_task(self._refresh_views())]

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._released:
            with contextlib.suppress(httpx.HTTPError):
                await self._http.post(f"{BASE}/release", json={"instances": self._released})

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
        try:
            # the control loop's hold timeout decides; the call itself gets a little more
            r = await self._http.post(
                f"{BASE}/acquire", json={"model": model.name, "timeout_s": timeout_s}, timeout=timeout_s + 10.0
            )
        except httpx.HTTPError as exc:
            raise EngineUnavailable(
                f"model {model.name!r}: the control plane did not answer ({type(exc).__name__})", retry_after_s=1.0
            ) from exc
        body = r.json()
        if r.status_code == 200:
            return Endpoint(body["instance_id"], body["base_url"], body["served_name"])
        raise EngineUnavailable(
            str(body.get("error", f"control plane: HTTP {r.status_code}")), body.get("retry_after_s")
        )

    def release(self, endpoint: Endpoint) -> None:
        self._released.append(endpoint.instance_id)
        self._wake.set()

    def suspect(self, instance_id: str, detail: str) -> None:
        self._tasks.append(asyncio.create_task(self._post("/suspect", {"instance_id": instance_id, "detail": detail})))

    # ---- background -----------------------------------------------------------------------

    async def _post(self, path: str, body: object) -> None:
        try:
            await self._http.post(f"{BASE}{path}", json=body)
        except httpx.HTTPError as exc:
            log.warning("control plane %s: %s", path, type(exc).__name__)

    async def _flush_releases(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._released = self._released, []
            if not batch:
                continue
            try:
                await self._http.post(f"{BASE}/release", json={"instances": batch})
            except httpx.HTTPError as exc:  # keep them for the next round
                log.warning("control plane /release: %s; retrying", type(exc).__name__)
                self._released = batch + self._released
                self._wake.set()
                await asyncio.sleep(0.1)

    async def _refresh_views(self) -> None:
        while True:
            try:
                r = await self._http.get(f"{BASE}/views")
                self._models, self._instances = pickle.loads(r.content)
            except (httpx.HTTPError, pickle.UnpicklingError) as exc:
                log.debug("control plane /views: %s", exc)
            await asyncio.sleep(VIEWS_S)
