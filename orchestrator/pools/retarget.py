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
   With ``stage: pinned``, a checkpoint the pinned holder holds is pushed from pinned host RAM
   instead (``/update_weights_from_tensor``, pinned/holder.py; the cache flushed with the last
   bucket); one it does not hold, a holder that cannot be reached, or a push that failed
   part-way, loads from disk as above (which replaces every tensor).
2. The probe (the supervisor's greedy 4-token ``/generate``): its output is compared with the
   model's own reference (kept from its first load) and must differ from the previous
   model's (a switch that did not take shows the old output), unless both paths are links to
   the same files (holdings.py ``same_files``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Protocol

import httpx

from orchestrator.errors import EngineUnavailable
from orchestrator.pools.pinned.client import HolderError, PinnedHolder
from orchestrator.sglang.api import UPDATE_WEIGHTS_FROM_DISK
from orchestrator.supervisor.process import PROBE_BODY, PROBE_PATH

log = logging.getLogger("chimera.pools")
TIMEOUT_S = 600.0  # a 70B from a cold disk


class RetargetError(EngineUnavailable):
    """The switch failed (the engine's message); the request gets a 503 and may retry."""


class Retargeter(Protocol):
    async def switch(self, base_url: str, model_path: str, gpus: tuple[int, ...] = ()) -> tuple[str, dict[str, float]]:
        """Load ``model_path`` into the server on ``gpus`` (the prefix cache flushed with it);
        returns the probe's output and each phase's seconds."""
        ...


class HttpRetargeter:
    def __init__(
        self,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        pinned: PinnedHolder | None = None,
    ):
        self._headers = dict(headers or {})  # the engines' key: the holder's pushes carry it too
        self._pinned = pinned
        self._client = httpx.AsyncClient(trust_env=False, timeout=TIMEOUT_S, headers=self._headers, transport=transport)

    async def switch(self, base_url: str, model_path: str, gpus: tuple[int, ...] = ()) -> tuple[str, dict[str, float]]:
        t0 = time.monotonic()
        phases = await self._push(base_url, model_path, gpus) if self._pinned is not None else None
        if phases is None:
            body = {"model_path": model_path, "flush_cache": True}
            r = await self._post(base_url + UPDATE_WEIGHTS_FROM_DISK.path, body)
            if r.status_code != 200 or not r.json().get("success"):
                raise RetargetError(f"update_weights_from_disk({model_path}) on {base_url} failed: {_message(r)}", 1.0)
            phases = {"update_weights_s": time.monotonic() - t0}
        t1 = time.monotonic()
        r = await self._post(base_url + PROBE_PATH, PROBE_BODY)
        if r.status_code != 200:
            raise RetargetError(f"probe after re-targeting {base_url} to {model_path} failed: {_message(r)}", 1.0)
        phases["probe_s"] = time.monotonic() - t1
        return str(r.json().get("text")), phases

    async def _push(self, base_url: str, model_path: str, gpus: tuple[int, ...]) -> dict[str, float] | None:
        """The checkpoint pushed from pinned host RAM: its phases; None when the holder does not
        hold it or cannot be reached (the caller loads it from disk)."""
        assert self._pinned is not None
        msg = {
            "op": "push",
            "path": model_path,
            "base_url": base_url,
            "device": gpus[0] if gpus else 0,
            "ranks": max(1, len(gpus)),
            "headers": self._headers,
        }
        try:
            answer = await self._pinned.ask_async(msg, TIMEOUT_S)
        except HolderError as exc:
            log.warning("re-target of %s to %s from disk: %s", base_url, model_path, exc)
            return None
        if answer.get("ok"):
            return {k: float(v) for k, v in dict(answer.get("phases") or {}).items()}
        if answer.get("staged") is not False:
            # failed part-way (a GPU buffer not allocated, a bucket refused): the load from disk
            # below replaces every tensor, whatever the push left
            log.warning(
                "pinned push of %s to %s failed (%s); loading it from disk", model_path, base_url, answer.get("error")
            )
        return None

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
