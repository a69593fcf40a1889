"""The baselines, driven by the same simulator, traces and SLOs as chimera.

- ``StaticPartition``: one model per dedicated GPU group, most popular first, as many as fit;
  a model without a GPU has every request shed. KV = all memory left on its GPU.
- ``FixedColocation``: static colocation as a placements file writes it (the one-GPU
  experiment's static system, bench/gpu/des.py): the given models, each awake on its GPUs with
  the fixed KV pool its file gives (``kv_pool_gb``); a model without a pool gets an even share
  of what its GPUs have left. Models not given have every request shed.
- ``MuxServeLike``: static colocation (MuxServe, OSDI'24, without its own kernels): every model
  that fits is placed awake, biggest first on the group with the most free memory; each GPU's
  KV is split once, at start, in proportion to the models' expected KV demand (an oracle: the
  trace's average rates). Nothing moves afterwards.
- ``SwapOnly``: time-sharing with one model awake per GPU (llama-swap / QLM-like): each model
  has one server, GPUs balanced by expected load; when another model's request waits, the
  awake model stops taking new requests once it has been up ``quantum_s``, drains, parks, and
  the model with the oldest waiting request wakes. The awake model gets all the KV.
All baselines dispatch first-come-first-served per server while KV room lasts (a server that
admits as SGLang does, servers.py, takes every request: it queues them itself); nothing is shed
except requests of models with no server.
"""

from __future__ import annotations

from collections import deque

from bench.sim.servers import SimModel, SimReq, SimServer
from bench.sim.simulator import Simulator
from orchestrator.policy.placement.cluster import S

MAX_RUNNING = 1024


def fcfs(sim: Simulator, s: SimServer) -> None:
    q = s.queue
    while q and s.state is S.AWAKE and s.in_flight < MAX_RUNNING:
        r = q[0]
        if r.kv_tokens > s.kv_limit:  # can never fit: the engine rejects it
            q.pop(0)
            sim.shed(r)
        elif s.sglang or r.kv_tokens <= s.kv_free():  # SGLang queues what it cannot admit yet
            q.pop(0)
            sim.dispatch(r, s)
        else:
            break


def kv_tokens_left(sim: Simulator, s: SimServer) -> int:
    """Tokens of KV that fit in what the GPU group has left (all of its servers counted)."""
    free = min(sim.gpu_bytes - sim.used_bytes(g) for g in s.gpus)
    return max(0, int(free // s.model.cost.kv_bytes_per_token))


class _Fcfs:
    name = "base"

    def __init__(self) -> None:
        self.home: dict[str, SimServer] = {}

    def on_arrival(self, sim: Simulator, req: SimReq) -> None:
        s = self.home.get(req.model)
        if s is None:
            sim.shed(req)
            return
        s.queue.append(req)
        fcfs(sim, s)

    def on_complete(self, sim: Simulator, server: SimServer, req: SimReq) -> None:
        fcfs(sim, server)


class StaticPartition(_Fcfs):
    name = "static-partition"

    def __init__(self, expected: dict[str, float]) -> None:
        super().__init__()
        self.expected = expected

    def on_start(self, sim: Simulator) -> None:
        nxt = 0
        for m in sorted(sim.models.values(), key=lambda m: (-self.expected.get(m.name, 0.0), m.name)):
            start = -(-nxt // m.tp) * m.tp  # TP groups are aligned
            if start + m.tp > sim.n_gpus:
                continue
            gpus = tuple(range(start, start + m.tp))
            s = sim.add_server(f"{m.name}@{start}", m.name, gpus, S.AWAKE)
            s.kv_limit = kv_tokens_left(sim, s)
            self.home[m.name] = s
            nxt = start + m.tp


class FixedColocation(_Fcfs):
    name = "static-colocated"

    def __init__(self, pools: dict[str, tuple[tuple[int, ...], int | None]]) -> None:
        """``pools``: model -> (its GPUs, its KV pool in bytes, or None for a share of the rest)."""
        super().__init__()
        self.pools = pools

    def on_start(self, sim: Simulator) -> None:
        for name, (gpus, _) in self.pools.items():
            self.home[name] = sim.add_server(f"{name}@{gpus[0]}", name, gpus, S.AWAKE)
        for name, (_, pool) in self.pools.items():
            if pool is not None:
                self.home[name].kv_limit = pool // sim.models[name].cost.kv_bytes_per_token
        rest = [n for n, (_, pool) in self.pools.items() if pool is None]
        free = {n: min(sim.gpu_bytes - sim.used_bytes(g) for g in self.pools[n][0]) for n in rest}
        for name in rest:  # an even share of what is left once the fixed pools are counted
            s = self.home[name]
            sharing = sum(1 for n in rest if not set(self.pools[n][0]).isdisjoint(s.gpus))
            s.kv_limit = max(0, int(free[name] / sharing // s.model.cost.kv_bytes_per_token))
        sim.check_memory(range(sim.n_gpus))  # a file that does not fit shows as a violation


class MuxServeLike(_Fcfs):
    name = "muxserve-like"

    def __init__(self, expected_tokens: dict[str, float]) -> None:
        super().__init__()
        self.expected = expected_tokens  # tokens/s per model

    def on_start(self, sim: Simulator) -> None:
        free = [float(sim.gpu_bytes)] * sim.n_gpus
        placed: list[tuple[SimModel, tuple[int, ...]]] = []
        for m in sorted(sim.models.values(), key=lambda m: (-m.cost.awake_bytes * m.tp, m.name)):
            c = m.cost
            need = c.parked_bytes + c.awake_bytes + c.kv_floor_bytes
            groups = [tuple(range(i, i + m.tp)) for i in range(0, sim.n_gpus - m.tp + 1, m.tp)]
            fits = [g for g in groups if min(free[x] for x in g) >= need]
            if not fits:
                continue
            gpus = max(fits, key=lambda g: (min(free[x] for x in g), -g[0]))
            for x in gpus:
                free[x] -= need
            placed.append((m, gpus))
        servers = [(m, sim.add_server(f"{m.name}@{g[0]}", m.name, g, S.AWAKE)) for m, g in placed]
        for m, s in servers:
            s.kv_limit = m.cost.kv_floor_bytes // m.cost.kv_bytes_per_token
            self.home[m.name] = s
        for g in range(sim.n_gpus):  # split what is left by expected KV demand, once
            here = [(m, s) for m, s in servers if g == s.gpus[0]]
            left = min(sim.gpu_bytes - sim.used_bytes(x) for x in {x for _, s in here for x in s.gpus} or {g})
            weights = [self.expected.get(m.name, 0.0) * m.cost.kv_bytes_per_token for m, _ in here]
            total = sum(weights) or float(len(here))
            for (m, s), w in zip(here, weights, strict=True):
                share = (w if sum(weights) else 1.0) / total
                s.kv_limit += int(max(left, 0.0) * share // m.cost.kv_bytes_per_token)


class SwapOnly(_Fcfs):
    name = "swap-only"

    def __init__(self, expected: dict[str, float], quantum_s: float = 2.0) -> None:
        super().__init__()
        self.expected = expected
        self.quantum_s = quantum_s
        self.owner: dict[int, SimServer] = {}  # GPU -> awake (or waking) server
        self.since: dict[str, float] = {}
        self.waiting: dict[int, deque[SimServer]] = {}
        self.busy: set[int] = set()  # GPUs in the middle of a swap

    def on_start(self, sim: Simulator) -> None:
        load = [0.0] * sim.n_gpus
        ctx = [0.0] * sim.n_gpus
        biggest = [0.0] * sim.n_gpus
        for m in sorted(sim.models.values(), key=lambda m: (-self.expected.get(m.name, 0.0), m.name)):
            c = m.cost
            groups = [tuple(range(i, i + m.tp)) for i in range(0, sim.n_gpus - m.tp + 1, m.tp)]
            ok = [
                g
                for g in groups
                if all(
                    ctx[x] + c.parked_bytes + max(biggest[x], c.awake_bytes + c.kv_floor_bytes) <= sim.gpu_bytes
                    for x in g
                )
            ]
            if not ok:
                continue
            gpus = min(ok, key=lambda g: (max(load[x] for x in g), g[0]))
            for x in gpus:
                load[x] += self.expected.get(m.name, 0.0)
                ctx[x] += c.parked_bytes
                biggest[x] = max(biggest[x], c.awake_bytes + c.kv_floor_bytes)
            self.home[m.name] = sim.add_server(f"{m.name}@{gpus[0]}", m.name, gpus)
        for g in range(sim.n_gpus):
            self.waiting[g] = deque()
        self._tick(sim)

    def on_arrival(self, sim: Simulator, req: SimReq) -> None:
        s = self.home.get(req.model)
        if s is None:
            sim.shed(req)
            return
        s.queue.append(req)
        if s.state is S.AWAKE and not self._yielding(sim, s):
            fcfs(sim, s)
        elif s.state is not S.AWAKE and s not in self.waiting[s.gpus[0]]:
            for g in s.gpus:
                self.waiting[g].append(s)
            self._consider(sim, s.gpus)

    def on_complete(self, sim: Simulator, server: SimServer, req: SimReq) -> None:
        if not self._yielding(sim, server):
            fcfs(sim, server)
        if server.in_flight == 0:
            self._consider(sim, server.gpus)

    def _tick(self, sim: Simulator) -> None:
        self._consider(sim, tuple(range(sim.n_gpus)))
        sim.at(sim.now + 1.0, self._tick, sim)

    def _yielding(self, sim: Simulator, s: SimServer) -> bool:
        """The awake model stops taking requests once others wait and its quantum is used."""
        return any(self.waiting[g] for g in s.gpus) and sim.now - self.since.get(s.id, 0.0) >= self.quantum_s

    def _consider(self, sim: Simulator, gpus: tuple[int, ...]) -> None:
        for g in gpus:
            if g in self.busy or not self.waiting[g]:
                continue
            nxt = self.waiting[g][0]
            olds = {self.owner[x] for x in nxt.gpus if x in self.owner and self.owner[x].state is S.AWAKE}
            if any(x in self.busy for x in nxt.gpus) or any(o.in_flight for o in olds):
                continue  # on_complete comes back here once they are drained
            if any(
                s.state in (S.PARKING, S.WAKING) and not set(s.gpus).isdisjoint(nxt.gpus) for s in sim.servers.values()
            ):
                continue  # a swap in progress on one of its GPUs (a TP neighbour): the tick retries
            if any(o.queue and not self._yielding(sim, o) for o in olds):
                continue  # the tick comes back once the quantum is used
            for x in nxt.gpus:
                self.waiting[x].remove(nxt)
            self._swap(sim, nxt, olds)

    def _swap(self, sim: Simulator, nxt: SimServer, olds: set[SimServer]) -> None:
        self.busy.update(nxt.gpus)
        pending = len(olds)

        def wake() -> None:
            nxt.kv_limit = kv_tokens_left_after_wake(sim, nxt)
            sim.wake(nxt, lambda: self._woken(sim, nxt))

        def one_parked() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                wake()

        for o in sorted(olds, key=lambda o: o.id):
            for x in o.gpus:
                self.owner.pop(x, None)
            if o.queue:
                for x in o.gpus:
                    self.waiting[x].append(o)
            sim.park(o, one_parked)
        if not olds:
            wake()

    def _woken(self, sim: Simulator, s: SimServer) -> None:
        for g in s.gpus:
            self.owner[g] = s
            self.busy.discard(g)
        self.since[s.id] = sim.now
        fcfs(sim, s)
        self._consider(sim, s.gpus)


def kv_tokens_left_after_wake(sim: Simulator, s: SimServer) -> int:
    """KV tokens for a server about to wake: what its GPUs have left minus its weights."""
    free = min(sim.gpu_bytes - sim.used_bytes(g) for g in s.gpus) - s.model.cost.awake_bytes
    return max(0, int(free // s.model.cost.kv_bytes_per_token))
