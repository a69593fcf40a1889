"""Switching a pooled server to another model of its shape, in SGLang's terms (0.5.17):

1. ``POST /update_weights_from_disk {"model_path": ..., "flush_cache": true}`` loads the new
   weights in place (``UpdateWeightFromDiskReqInput``; answer ``{"success", "message",
   "num_paused_requests"}``, 400 on failure, after which SGLang rolls back to the old weights).
   Never on a parked server: measured on the H100 to kill it (CUDA invalid argument). The
   router only switches a server it has acquired awake from the control loop.
   ``flush_cache: true`` empties the prefix cache under the update's own lock, so no prefix
   cached for the old weights can serve the new model: SGLang's scheduler flushes right after
   the load and asserts that the flush succeeded (``WeightUpdater.flush_cache_after_weight_update``),
   so ``success: true`` means flushed. A separate ``POST /flush_cache`` afterwards is not sent:
   it is refused with a 400 whenever the scheduler is not fully idle, and on the H200 it was
   (SGLang's own start-up warm-up request, queued behind the update, arrived with it).
2. The probe (the supervisor's greedy 4-token ``/generate``): its output is compared with the
   model's own reference (kept from its first load) and must differ from the previous
   model's (a switch that did not take shows the old output).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

import httpx

from orchestrator.errors import EngineUnavailable
from orchestrator.sglang.api import UPDATE_WEIGHTS_FROM_DISK
from orchestrator.supervisor.process import PROBE_BODY, PROBE_PATH

TIMEOUT_S = 600.0  # a 70B from a cold disk


class RetargetError(EngineUnavailable):
    """The switch failed (the engine's message); the request gets a 503 and may retry."""


class Retargeter(Protocol):
    async def switch(self, base_url: str, model_path: str) -> tuple[str, dict[str, float]]:
        """Load ``model_path`` (the prefix cache flushed with it); returns the probe's output and
        each phase's seconds."""
        ...


class HttpRetargeter:
    def __init__(self, headers: Mapping[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None):
        self._client = httpx.AsyncClient(
            trust_env=False, timeout=TIMEOUT_S, headers=dict(headers or {}), transport=transport
        )

    async def switch(self, base_url: str, model_path: str) -> tuple[str, dict[str, float]]:
        phases: dict[str, float] = {}
        t0 = time.monotonic()
        body = {"model_path": model_path, "flush_cache": True}
        r = await self._post(base_url + UPDATE_WEIGHTS_FROM_DISK.path, body)
        if r.status_code != 200 or not r.json().get("success"):
            raise RetargetError(f"update_weights_from_disk({model_path}) on {base_url} failed: {_message(r)}", 1.0)
        t1 = time.monotonic()
        phases["update_weights_s"] = t1 - t0
        r = await self._post(base_url + PROBE_PATH, PROBE_BODY)
        if r.status_code != 200:
            raise RetargetError(f"probe after re-targeting {base_url} to {model_path} failed: {_message(r)}", 1.0)
        phases["probe_s"] = time.monotonic() - t1
        return str(r.json().get("text")), phases

    async def _post(self, url: str, body: object) -> httpx.Response:
        try:
            return await self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise RetargetError(f"POST {url} failed: {type(exc).__name__}: {exc}", 1.0) from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def _message(r: httpx.Response) -> str:
    try:
        data = r.json()
    except ValueError:
        return f"{r.status_code} {r.text[:300]}"
    if isinstance(data, dict):
        return f"{r.status_code} {data.get('message') or data.get('error') or data}"
    return f"{r.status_code} {data}"
