"""Loading and unloading an adapter on an engine (SGLang's ``/load_lora_adapter`` and
``/unload_lora_adapter``, orchestrator/sglang/lora.py). Errors become ``AdapterError`` with the
engine's message; an engine that already is where chimera wants it (after chimera restarted
and re-adopted it) counts as success."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from orchestrator.errors import EngineUnavailable
from orchestrator.sglang.api import LOAD_LORA_ADAPTER, UNLOAD_LORA_ADAPTER, Route
from orchestrator.sglang.lora import ALREADY_LOADED, NOT_LOADED, load_body, unload_body

# An adapter load reads ~100 MB (rank 16 on an 8B) from disk; an unload waits for the adapter's
# running requests to finish, so it gets as long as a request may take.
TIMEOUT_S = 600.0


class AdapterError(EngineUnavailable):
    """The engine refused or failed a load or unload (transient for the client: 503)."""


class AdapterClient(Protocol):
    async def load(self, base_url: str, name: str, path: str) -> None: ...

    async def unload(self, base_url: str, name: str) -> None: ...


class HttpAdapterClient:
    def __init__(self, headers: Mapping[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None):
        self._client = httpx.AsyncClient(
            trust_env=False, timeout=TIMEOUT_S, headers=dict(headers or {}), transport=transport
        )

    async def load(self, base_url: str, name: str, path: str) -> None:
        await self._call(base_url, LOAD_LORA_ADAPTER, load_body(name, path), ok_if=ALREADY_LOADED)

    async def unload(self, base_url: str, name: str) -> None:
        await self._call(base_url, UNLOAD_LORA_ADAPTER, unload_body(name), ok_if=NOT_LOADED)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, base_url: str, route: Route, body: dict[str, Any], ok_if: str) -> None:
        what = f"{route.path} {body['lora_name']!r} on {base_url}"
        try:
            resp = await self._client.request(route.method, base_url + route.path, json=body)
        except httpx.HTTPError as exc:
            raise AdapterError(f"{what} failed: {type(exc).__name__}: {exc}", retry_after_s=1.0) from exc
        try:
            data = resp.json()
        except ValueError:
            data = {}
        if resp.is_success and data.get("success", True):
            return
        message = str(data.get("error_message") or data.get("message") or resp.text[:300])
        if ok_if in message:
            return
        raise AdapterError(f"{what} was refused ({resp.status_code}): {message}", retry_after_s=1.0)
