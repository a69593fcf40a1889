"""What each server of each shape pool holds: the one owner of that fact.

Per pooled server (its hidden model name): the ``model_path`` of the weights it holds, its
requests in flight (counted from the moment a request is routed to it, before it is even awake,
so that no switch can start under them), and a switch under way. Per pool: the decayed
popularity of each model_path and every probe output seen per model_path (the references a
switch is checked against). ``changed`` is set whenever a server frees up or a switch ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config import PoolSpec
from orchestrator.policy.lora import Popularity
from orchestrator.policy.pools import Slot
from orchestrator.types import InstanceState, InstanceView


@dataclass
class _Server:
    holds: str | None
    in_flight: int = 0
    switching_to: str | None = None


@dataclass
class _Pool:
    spec: PoolSpec
    servers: dict[str, _Server]
    popularity: dict[str, Popularity] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)  # model_path -> probe output


class Holdings:
    def __init__(
        self,
        pools: Iterable[PoolSpec],
        on_hold: Callable[[str, str | None], None] | None = None,
        on_switch: Callable[[str, bool], None] | None = None,  # (pool, succeeded)
    ) -> None:
        self._pools = {spec.name: _Pool(spec, {s: _Server(spec.model_path) for s in spec.slots}) for spec in pools}
        self._slot_pool = {s: name for name, pool in self._pools.items() for s in pool.spec.slots}
        self._on_hold = on_hold or (lambda slot, path: None)
        self._on_switch = on_switch or (lambda pool, ok: None)
        self.changed = asyncio.Event()
        self.switches = 0
        for pool in self._pools.values():
            for slot in pool.spec.slots:
                self._on_hold(slot, pool.spec.model_path)

    def pool(self, name: str) -> PoolSpec:
        return self._pools[name].spec

    def switching(self, slot: str) -> bool:
        return self._server(slot).switching_to is not None

    def holds(self, slot: str) -> str | None:
        return self._server(slot).holds

    def slots(self, pool: str, awake: Callable[[str], bool]) -> tuple[Slot, ...]:
        """The policy's view; ``awake``: whether a server is awake now (else a wake first)."""
        p = self._pools[pool]
        return tuple(Slot(n, s.holds, s.in_flight, s.switching_to, not awake(n)) for n, s in p.servers.items())

    def popularity(self, pool: str) -> dict[str, Popularity]:
        return dict(self._pools[pool].popularity)

    def bump(self, pool: str, model_path: str, now: float) -> None:
        pop = self._pools[pool].popularity
        pop[model_path] = pop.get(model_path, Popularity()).bump(now)

    def reserve(self, slot: str) -> None:
        self._server(slot).in_flight += 1

    def release(self, slot: str) -> None:
        s = self._server(slot)
        s.in_flight = max(0, s.in_flight - 1)
        self.changed.set()

    def begin_switch(self, slot: str, model_path: str) -> None:
        s = self._server(slot)
        assert s.in_flight == 0 and s.switching_to is None, f"{slot} is not free to switch"
        s.switching_to, s.in_flight = model_path, 1  # the switching request itself

    def end_switch(self, slot: str, holds: str | None) -> None:
        """The switch ended: ``holds`` is what the server holds now (None: unknown)."""
        s = self._server(slot)
        self._on_switch(self._slot_pool[slot], holds is not None and holds == s.switching_to)
        s.switching_to, s.holds = None, holds
        self._on_hold(slot, holds)
        self.switches += 1
        self.changed.set()

    def check_probe(self, slot: str, previous: str | None, model_path: str, output: str) -> str | None:
        """Why a switch's probe output is wrong (None: right); the first output seen for a
        model_path becomes its reference."""
        refs = self._pools[self._slot_pool[slot]].references
        want = refs.get(model_path)
        if want is not None and output != want:
            return f"probe output {output!r} is not {model_path}'s own ({want!r})"
        if (
            previous is not None
            and previous != model_path
            and refs.get(previous) == output
            and not same_files(previous, model_path)  # two names for one checkpoint answer alike
        ):
            return f"probe output {output!r} is still {previous}'s: the weights did not change"
        refs.setdefault(model_path, output)
        return None

    def observe(self, view: InstanceView) -> None:
        """A supervisor observer: a pooled server that (re)starts holds its pool's start weights."""
        slot = view.model
        if slot in self._slot_pool and view.state in (InstanceState.STARTING, InstanceState.PENDING):
            pool = self._pools[self._slot_pool[slot]]
            s = pool.servers[slot]
            if s.switching_to is None and s.holds != pool.spec.model_path:
                s.holds = pool.spec.model_path
                self._on_hold(slot, s.holds)
                self.changed.set()

    def _server(self, slot: str) -> _Server:
        return self._pools[self._slot_pool[slot]].servers[slot]


def same_files(a: str, b: str) -> bool:
    """Whether two model paths hold the very same weight files (hard links or symbolic links to
    one checkpoint: the same devices and inodes); False for anything else, copies included, and
    for paths that are not local directories."""

    def ids(path: str) -> frozenset[tuple[str, int, int]] | None:
        root = Path(path)
        if not root.is_dir():
            return None
        try:
            files = [f for f in root.iterdir() if f.suffix in (".safetensors", ".bin", ".pt")]
            return frozenset((f.name, (st := f.stat()).st_dev, st.st_ino) for f in files) or None
        except OSError:
            return None

    first = ids(a)
    return first is not None and first == ids(b)
