"""Elastic KV in the simulator: the live KV ledger (orchestrator/kv/ledger.py, which splits with
orchestrator/kv/split.py) run over simulated servers, so the simulator splits KV the way chimera
does live. This module only translates: a server's state into the ledger's instance, and its
queue and reservations into what ``/v1/loads`` and the shim's status would report.

Translations (the simulator's approximations, documented in docs/bench-sim.md):
- non-KV memory: the one cost model (``ServerCost``: context; + weights, graphs and activations
  while awake), as the live ledger gets it from the deployment;
- need: KV in use, plus the requests routed to the server and not yet admitted (the simulator
  reserves prompt + output at dispatch, so that is what they will take), plus the model's token
  rate over the ledger's horizon;
- memory held: the pages the shim keeps mapped (``SimServer.mapped_tokens``): at least the limit,
  and while requests run the most that requests and cache held since the server last idled,
  drained since. A shrink below that lands slowly while the server is busy, all of it when it
  idles: SGLang hands free slots out first-in first-out, so a busy server's tokens sit in most
  blocks it mapped and they come fully free one by one (on the H200, a8 full at 32 req/s:
  llama-8b kept 3,456 MiB mapped against a limit of 2,176 for 20 s, llama-1b-b drained from 576
  to 192 MiB in 6 s; ``PINNED_DRAIN_TAU_S``: the excess decays with a 27 s time constant);
- SGLang's prefix cache: a finished request's tokens stay cached (``SimServer.kv_cached``) until
  the limit needs the room; the shim's status counts them as used, ``/v1/loads`` as evictable
  (``num_used_tokens = max_total - available - evictable``), as on a GPU. No request hits it;
- blocks of ``BLOCK_TOKENS`` (the shim's block of an 8B-class shape: 2 MiB pages of 2 KiB rows);
  a limit maps whole blocks, as the shim maps it;
- TP servers (live: no shim, a fixed pool) get one ledger instance per GPU and take the
  smallest of their limits (every rank holds the same tokens);
- ``elastic=False``: a server keeps the pool it woke with until it parks; the ledger counts it
  as unseen at its last limit, as it counts a shim that does not answer. A server a plan will
  wake counts as resident already, so a pool fixed meanwhile leaves it room (live, elastic
  neighbours shrink for it instead);
- the wake gate: a server whose wake waits for room (``due``: the plan executor's ``wake_due``)
  counts as holding its weights, so its neighbours' limits fall for it, as the live ledger does
  (``KVInstance.wake_due``); their pages then drain as above before the gate lets it wake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from bench.sim.servers import SimReq, SimServer
from cumem_shim.types import Status
from orchestrator.kv.ledger import Action, KVInstance, Ledger, Observation, SetLimit
from orchestrator.kv.wiring import HOLDS_WEIGHTS, RESIDENT
from orchestrator.types import LoadSample

BLOCK_TOKENS = 1024


def _key(s: SimServer, gpu: int) -> str:
    return s.id if len(s.gpus) == 1 else f"{s.id}#{gpu}"


class SimLedger:
    """The live ledger over the simulator's servers. ``queued(server)`` gives the requests
    routed to a server and not yet dispatched; ``rate(server)`` its tokens/s."""

    def __init__(
        self,
        gpu_bytes: int,
        n_gpus: int,
        elastic: bool,
        queued: Callable[[SimServer], Sequence[SimReq]],
        rate: Callable[[SimServer], float],
        due: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        self.gpu_bytes = gpu_bytes
        self.ledger = Ledger({g: gpu_bytes for g in range(n_gpus)})
        self.elastic = elastic
        self._queued, self._rate = queued, rate
        # the servers whose wake waits for room (the plan executor's ``wake_due``), read once a
        # split: counted as holding their weights, so their neighbours shrink before the wake
        self._due = due
        self._due_now: frozenset[str] = frozenset()
        # per GPU: what the ledger's plan read last time, when that plan changed nothing (no
        # action), and the grows it held back; the same inputs again give the same empty plan
        # and the same held-back grows (``_quiet_inputs``)
        # and the servers' raw fields it was built from (``split`` skips on those, cheaper)
        self._quiet: dict[int, tuple[tuple[object, ...], frozenset[str], tuple[object, ...] | None]] = {}
        self._raw_now: dict[int, tuple[object, ...]] = {}
        self.memo = True  # False: plan every GPU every time (tests compare)
        self._groups: tuple[tuple[int, ...], list[SimServer], dict[int, list[SimServer]]] | None = None
        self.skipped = 0  # GPUs whose plan was skipped as unchanged (for the profile's numbers)
        # per server object (its model and GPUs never change): its ledger keys and KV capacity
        # in tokens; and its instances for the state (and claim) they were built for
        self._fixed: dict[int, tuple[SimServer, list[str], int]] = {}
        self._insts: dict[int, tuple[SimServer, object, tuple[bool, bool], list[KVInstance]]] = {}
        self.deferred: frozenset[str] = frozenset()  # grows the last split held back (Ledger.deferred)

    def instances(self, servers: Iterable[SimServer]) -> list[KVInstance]:
        """The ledger's view of ``servers``: one instance per server and GPU."""
        out: list[KVInstance] = []
        for s in servers:
            coming = not self.elastic and s.claimed  # fixed pools leave room for planned wakes
            due = s.id in self._due_now
            got = self._insts.get(id(s))
            if got is not None and got[0] is s and got[1] is s.state and got[2] == (coming, due):
                out += got[3]
                continue
            c = s.model.cost
            made = [
                KVInstance(
                    _key(s, g),
                    g,
                    c.kv_bytes_per_token,
                    awake_bytes=c.held_awake_bytes,
                    parked_bytes=c.parked_bytes,
                    floor_bytes=c.kv_floor_bytes if s.model.ledger_floor_bytes is None else s.model.ledger_floor_bytes,
                    resident=s.state in RESIDENT or coming,
                    holds_weights=s.state in HOLDS_WEIGHTS or coming or due,
                    wake_due=due,
                )
                for g in s.gpus
            ]
            self._insts[id(s)] = (s, s.state, (coming, due), made)
            out += made
        return out

    def split(self, servers: Iterable[SimServer], now: float) -> set[int]:
        """Re-split every GPU and apply the limits at once (the simulated shim takes them in
        the same instant); returns the GPUs where some server's limit grew. A GPU whose last
        plan was quiet (``plan``) and whose servers' raw fields (``_raw``) are the same again
        is skipped before its observations are even built: the same raw fields give the same
        plan inputs (``_quiet_inputs``), so this is the skip ``plan`` would make, done cheaper."""
        on_gpu = self._on_gpu(list(servers))
        seen: dict[str, Observation] = {}
        by_key: dict[str, SimServer] = {}
        insts: list[KVInstance] = []
        raws: dict[int, tuple[object, ...]] = {}
        deferred: set[str] = set()
        self._raw_now = {}
        self._due_now = self._due()
        for gpu, here in on_gpu.items():
            for s in here:
                s.drain(now)  # the pages freed since the last split (servers.py)
            raw = tuple(self._raw(s, raws) for s in here)
            quiet = self._quiet.get(gpu)
            if self.memo and quiet is not None and quiet[2] == raw:
                self.skipped += 1
                deferred |= quiet[1]
                continue
            self._raw_now[gpu] = raw
            for s in here:
                _, keys, cap = self._fixed_of(s)
                if keys[0] not in seen:
                    fixed = not self.elastic and s.kv_limit > 0 and s.state in RESIDENT
                    obs = Observation(None if fixed else self._load(s, cap, now), self._status(s, cap))
                    for k in keys:
                        by_key[k] = s
                        seen[k] = obs
                insts += [i for i in self.instances((s,)) if i.gpu == gpu]
        touched: set[str] = set()
        for a in self.plan(insts, seen, now):
            if isinstance(a, SetLimit):
                self.ledger.accepted(a.instance, a.bytes, a.revision)
                touched.add(a.instance)
        self.deferred |= deferred
        grew: set[int] = set()
        for s in {by_key[k].id: by_key[k] for k in sorted(touched)}.values():
            limits = [self.ledger.known[_key(s, g)].limit or 0 for g in s.gpus]
            tokens = min(limits) // (BLOCK_TOKENS * s.model.cost.kv_bytes_per_token) * BLOCK_TOKENS  # as the shim
            if s.state not in RESIDENT:
                tokens = 0  # a claimed server's share is only held for it until it wakes
            if tokens > s.kv_limit:
                grew.update(s.gpus)
            s.kv_limit = tokens
            s.keep_cached()
        return grew

    def _fixed_of(self, s: SimServer) -> tuple[SimServer, list[str], int]:
        got = self._fixed.get(id(s))
        if got is None or got[0] is not s:
            c = s.model.cost
            cap = max(BLOCK_TOKENS, (self.gpu_bytes - c.parked_bytes - c.awake_bytes) // c.kv_bytes_per_token)
            got = self._fixed[id(s)] = (s, [_key(s, g) for g in s.gpus], cap)
        return got

    def _on_gpu(self, servers: list[SimServer]) -> dict[int, list[SimServer]]:
        """Each GPU's servers in the order given, GPUs in order (built again when the servers
        change: the simulator adds them only at the start; the list is kept, so the ids compared
        stay those of the same objects)."""
        ids = tuple(id(s) for s in servers)
        if self._groups is None or self._groups[0] != ids:  # held: ids stay theirs
            by: dict[int, list[SimServer]] = {}
            for s in servers:
                for g in s.gpus:
                    by.setdefault(g, []).append(s)
            self._groups = (ids, servers, {g: by[g] for g in sorted(by)})
        return self._groups[2]

    def _raw(self, s: SimServer, memo: dict[int, tuple[object, ...]]) -> tuple[object, ...]:
        """Every field of ``s`` that its instances and observation (``instances``, ``_load``,
        ``_status``) are built from, but the time stamp; once per server and split."""
        multi = len(s.gpus) > 1  # only a TP server is met twice in a split
        got = memo.get(id(s)) if multi else None
        if got is None:
            queued = self._queued(s)
            got = (
                s.id,
                s.state,
                s.claimed,
                s.id in self._due_now,
                len(s.running),
                len(s.waiting),
                s.kv_limit,
                s.kv_used,
                s.kv_cached,
                s.kv_pinned,
                len(queued),
                sum([r.prompt + r.output for r in queued]) if queued else 0,  # their kv_tokens
                sum([r.prompt + r.output for r in s.waiting]) if s.sglang else 0,
                self._rate(s),
            )
            if multi:
                memo[id(s)] = got
        return got

    def plan(self, insts: list[KVInstance], seen: dict[str, Observation], now: float) -> list[Action]:
        """The ledger's plan, one GPU at a time: here every instance is on one GPU (a TP server
        has one instance per GPU, ``_key``), so no limit depends on another GPU, and the
        ledger's per-GPU pass (linear in instances, once per GPU) stays linear in the fleet
        (at 512 GPUs the whole-fleet call is quadratic: 0.3 s a round). Same actions per
        instance as one call over all of them."""
        by_gpu: dict[int, list[KVInstance]] = {}
        for i in insts:
            by_gpu.setdefault(i.gpu, []).append(i)
        out: list[Action] = []
        deferred: set[str] = set()
        for gpu in sorted(by_gpu):
            here = by_gpu[gpu]
            key = self._quiet_inputs(here, seen)
            quiet = self._quiet.get(gpu)
            if key is not None and quiet is not None and quiet[0] == key:
                self.skipped += 1
                deferred |= quiet[1]
                self._quiet[gpu] = (key, quiet[1], self._raw_now.get(gpu))  # same inputs: these raw fields too
                continue
            actions = self.ledger.plan(here, seen, now)
            deferred |= self.ledger.deferred
            if actions or key is None:
                self._quiet.pop(gpu, None)
            else:
                self._quiet[gpu] = (key, self.ledger.deferred, self._raw_now.get(gpu))
            out += actions
        self.deferred = frozenset(deferred)
        return out

    def _quiet_inputs(self, insts: list[KVInstance], seen: dict[str, Observation]) -> tuple[object, ...] | None:
        """Everything ``Ledger.plan`` reads for one GPU's instances: each instance, the parts of
        its observation it reads (a load's counts and rate, not its time stamp; the status; the
        held tokens) and what the ledger knows of it (limit, revision, last flush). The plan is
        a deterministic function of these and of ``now``, which it reads only to space cache
        flushes of idle instances whose mapped pages exceed their limit; None when one might
        flush, so such a GPU is always planned. When a plan's inputs equal those of its
        previous plan and that plan changed nothing (no action, so the only state it touched,
        ``known``, came out as it went in), this plan would be the same: it is skipped."""
        known = self.ledger.known
        out: list[object] = []
        for i in insts:
            obs = seen.get(i.id)
            load = status = None
            held = 0
            if obs is not None:
                st, ld, held = obs.status, obs.load, obs.held_tokens
                if ld is not None:
                    if ld.idle and st is not None and st.mapped_bytes > st.limit_bytes + st.block_bytes:
                        return None  # a flush may come due with time alone
                    load = (ld.running, ld.waiting, ld.waiting_tokens, ld.used_tokens, ld.gen_rate)
                status = st
            k = known.get(i.id)
            out.append((i, load, status, held, None if k is None else (k.limit, k.revision, k.last_flush)))
        return tuple(out)

    def _load(self, s: SimServer, cap: int, now: float) -> LoadSample:
        queued = list(self._queued(s))
        return LoadSample(
            s.id,
            now,
            running=len(s.running),
            waiting=len(s.waiting) + len(queued),
            # under "sglang" the engine's own queue holds KV only once admitted (servers.py)
            waiting_tokens=sum(r.kv_tokens for r in queued) + (sum(r.kv_tokens for r in s.waiting) if s.sglang else 0),
            # SGLang's num_used_tokens under the shim: max_total - available - evictable
            used_tokens=cap - max(0, s.kv_limit - s.kv_used - s.kv_cached) - s.kv_cached,
            capacity_tokens=cap,
            max_running=None,
            tokens=0.0,
            gen_rate=self._rate(s),
        )

    @staticmethod
    def _status(s: SimServer, cap: int) -> Status:
        per = s.model.cost.kv_bytes_per_token
        return Status(
            mapped_bytes=s.mapped_tokens() * per,
            used_tokens=s.kv_used + s.kv_cached,  # the shim counts the prefix cache as used
            limit_bytes=s.kv_limit * per,
            revision=0,
            capacity_tokens=cap,
            limit_tokens=s.kv_limit,
            block_bytes=BLOCK_TOKENS * per,
            block_tokens=BLOCK_TOKENS,
            draining=s.kv_used > s.kv_limit,
        )
