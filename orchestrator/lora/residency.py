"""Which LoRA adapters each base server holds, and the one place that loads and unloads them.

The owner of this fact: per instance, the adapters loaded on it (with their in-flight requests
and popularity). ``acquire`` makes an adapter ready on an instance before a request is sent,
deciding through the pure policy (orchestrator/policy/lora.py); ``release`` ends the request.
Loads and unloads of one instance run one at a time (SGLang serializes them too, its
``lora_update_lock``). A server that stops, fails or restarts has lost its adapters:
``observe`` (a supervisor observer) forgets them; so does a different ``base_url``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.lora.client import AdapterClient
from orchestrator.policy.lora import Loaded, Popularity, decide
from orchestrator.types import InstanceState, InstanceView

log = logging.getLogger("chimera.lora")

# States in which a server keeps its adapters: SGLang holds them in host memory, untouched by
# park (release/resume of weights and KV). Any other state means the process is gone or new.
_KEEPS_ADAPTERS = frozenset({InstanceState.AWAKE, InstanceState.PARKING, InstanceState.PARKED, InstanceState.WAKING})


@dataclass
class _Adapter:
    in_flight: int
    loaded_at: float


@dataclass
class _Server:
    base_url: str
    limit: int
    loaded: dict[str, _Adapter] = field(default_factory=dict)
    popularity: dict[str, Popularity] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    freed: asyncio.Event = field(default_factory=asyncio.Event)  # a request on an adapter ended


class Residency:
    def __init__(self, client: AdapterClient, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._clock = clock
        self._servers: dict[str, _Server] = {}
        self.loads = 0  # adapter loads sent (metrics, tests)
        self.unloads = 0

    def loaded(self, instance_id: str) -> list[str]:
        """The adapters loaded on an instance (read-only: the dashboard)."""
        srv = self._servers.get(instance_id)
        return sorted(srv.loaded) if srv else []

    async def acquire(self, instance_id: str, base_url: str, limit: int, name: str, path: str) -> None:
        """Adapter ``name`` is loaded on the instance and counted in flight: pair with
        ``release``. Waits while every loaded adapter is busy; raises AdapterError (an
        EngineUnavailable) when the engine refuses."""
        pop = self._server(instance_id, base_url, limit).popularity
        pop[name] = pop.get(name, Popularity()).bump(self._clock())
        while True:
            srv = self._server(instance_id, base_url, limit)  # a new one if it restarted
            async with srv.lock:
                now = self._clock()
                view = {
                    n: Loaded(a.in_flight, srv.popularity.get(n, Popularity()), a.loaded_at)
                    for n, a in srv.loaded.items()
                }
                d = decide(view, name, srv.limit, now)
                if d.action != "wait":
                    for victim in d.evict:
                        log.info("unloading adapter %s from %s (least popular)", victim, instance_id)
                        await self._client.unload(srv.base_url, victim)
                        self.unloads += 1
                        del srv.loaded[victim]
                    if d.action == "load":
                        await self._client.load(srv.base_url, name, path)
                        self.loads += 1
                        srv.loaded[name] = _Adapter(0, self._clock())
                    srv.loaded[name].in_flight += 1
                    return
                freed = srv.freed
                freed.clear()
            await freed.wait()

    def release(self, instance_id: str, name: str) -> None:
        srv = self._servers.get(instance_id)
        if srv is None or name not in srv.loaded:  # forgotten meanwhile (the server went away)
            return
        srv.loaded[name].in_flight = max(0, srv.loaded[name].in_flight - 1)
        srv.freed.set()

    def observe(self, view: InstanceView) -> None:
        """A supervisor observer: a server that left the states that keep adapters lost them."""
        if view.state not in _KEEPS_ADAPTERS:
            srv = self._servers.pop(view.id, None)
            if srv is not None:
                srv.freed.set()  # wake waiters: they start over on the new server

    def _server(self, instance_id: str, base_url: str, limit: int) -> _Server:
        srv = self._servers.get(instance_id)
        if srv is None or srv.base_url != base_url:
            srv = self._servers[instance_id] = _Server(base_url, limit)
        return srv
