"""The Router the proxy uses when the placements file has LoRA adapters: the control loop's,
with an adapter's requests sent to a server of its base.

For an adapter model the proxy's ``acquire`` asks the loop for an awake instance of the base
(held while it starts or wakes, exactly like a request to the base; the base's instance counts
the request in flight, so it is not parked under it), then has the adapter loaded there
(``Residency``), and answers an endpoint whose served name is SGLang's ``<base>:<adapter>``.
The proxy forwards that name as the request's ``model`` (``lora_path`` on /generate), meters
and SLOs the request under the adapter's own name. ``/v1/models`` lists adapters with their
base's instances and state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from orchestrator.config import ModelSpec
from orchestrator.control.router import Router
from orchestrator.errors import EngineUnavailable
from orchestrator.lora.residency import Residency
from orchestrator.sglang.lora import adapter_model, lora_name, split_adapter
from orchestrator.types import Endpoint, InstanceView, ModelView


class AdapterRouter:
    def __init__(
        self,
        inner: Router,
        residency: Residency,
        models: tuple[ModelSpec, ...],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._residency = residency
        self._by_name = {m.name: m for m in models}
        self._clock = clock

    def resolve(self, name: str) -> ModelSpec | None:
        return self._inner.resolve(name)

    def known_names(self) -> list[str]:
        return self._inner.known_names()

    def models(self) -> list[ModelView]:
        views = self._inner.models()
        by_name = {v.spec.name: v for v in views}
        out = []
        for v in views:
            base = by_name.get(v.spec.base) if v.spec.base is not None else None
            out.append(ModelView(v.spec, base.state, base.instances) if base is not None else v)
        return out

    def instances(self) -> list[InstanceView]:
        return self._inner.instances()

    async def acquire(self, model: ModelSpec, timeout_s: float) -> Endpoint:
        if model.base is None or model.adapter is None:
            return await self._inner.acquire(model, timeout_s)
        base = self._by_name[model.base]
        assert base.lora is not None  # config: a base that adapters name has LoRA limits
        t0 = self._clock()
        ep = await self._inner.acquire(base, timeout_s)
        name = lora_name(model.name)
        left = max(0.0, timeout_s - (self._clock() - t0))
        try:
            async with asyncio.timeout(left):
                await self._residency.acquire(ep.instance_id, ep.base_url, base.lora.max_loaded, name, model.adapter)
        except TimeoutError:
            self._inner.release(ep)
            raise EngineUnavailable(
                f"adapter {model.name!r} could not be loaded on {ep.instance_id} within {timeout_s:g} s "
                f"(every loaded adapter is busy)",
                retry_after_s=1.0,
            ) from None
        except BaseException:
            self._inner.release(ep)
            raise
        return Endpoint(ep.instance_id, ep.base_url, adapter_model(ep.served_name, name))

    def release(self, endpoint: Endpoint) -> None:
        base_served, adapter = split_adapter(endpoint.served_name)
        if adapter is not None:
            self._residency.release(endpoint.instance_id, adapter)
            endpoint = Endpoint(endpoint.instance_id, endpoint.base_url, base_served)
        self._inner.release(endpoint)

    def suspect(self, instance_id: str, detail: str) -> None:
        self._inner.suspect(instance_id, detail)
