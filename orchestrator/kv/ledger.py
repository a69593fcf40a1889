"""The per-GPU KV ledger: from what the instances report to the limits to send. Synchronous
and free of I/O and clocks (time comes in as ``now``); ``runner.py`` feeds it the scraper's samples and
sends what it decides. Owned by one task; not thread-safe.

Per GPU: budget = capacity − what is not KV (what each instance holds awake or parked: as the
deployment's cost model says, or for an awake instance once measured, the most its processes
were seen to hold beside their KV plus an activation reserve: ``non_kv_bytes``) − a safety
margin. The budget is split among the
resident instances by demand (``split.split``), phased so no grow lands before the memory is
free (``split.phase``), and sent as revisioned ``set_limit`` calls, only when a limit moves by
more than the hysteresis. An instance that stops being resident gets limit 0 once (the shim
unmaps everything but its first block). An idle instance that holds more than its limit (its
prefix cache keeps pages mapped) is asked to flush its cache: SGLang frees cached tokens only
when it needs room, and an idle server never does (at most every ``FLUSH_EVERY_S``, every
``FLUSH_FOR_WAKE_S`` while a wake on its GPU waits for room).

A parked instance whose wake is due (``KVInstance.wake_due``: the plan executor holds the wake
until its weights fit) counts as holding its weights, so its GPUs' budgets shrink and its
neighbours are asked to give pages back before the wake; ``room`` answers whether they have
(kv/room.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from cumem_shim.types import Status
from orchestrator.kv.demand import need_bytes
from orchestrator.kv.room import Hold, Room, room
from orchestrator.kv.split import Member, changed, grow_order, phase, split
from orchestrator.perf.cost import ACTIVATION_BYTES
from orchestrator.types import LoadSample

MARGIN_BYTES = 1 << 30  # kept free on each GPU: allocator fragmentation, NCCL, other processes
FLUSH_EVERY_S = 10.0  # at most one /flush_cache per instance this often
# ... or this often while a wake on its GPU waits for room (``KVInstance.wake_due``): the woken
# model's held requests wait for those pages, and their TTFT SLO may be 1 s
FLUSH_FOR_WAKE_S = 1.0
# Re-splits of GPUs shared with TP groups: each round holds a group to the least any of its GPUs
# gave it, so the rest goes to its neighbours; pins only fall, and a few rounds settle it.
GROUP_ROUNDS = 4


@dataclass(frozen=True)
class KVInstance:
    """Static facts of one instance, from the placements file and the control loop's state."""

    id: str
    gpu: int
    token_bytes: int  # KV bytes per token slot on this GPU
    # not KV on this GPU while it holds its weights (context, weights, CUDA graphs, activations,
    # a fixed pool) and while parked (its context): orchestrator/deployment.py, perf/cost.py
    awake_bytes: int
    parked_bytes: int
    floor_bytes: int = 0  # placements kv_floor_gb
    ceiling_bytes: int | None = None  # placements kv_pool_gb (None: the virtual pool)
    priority: int = 0
    resident: bool = True  # awake (or starting/waking): holds KV; False: parked or parking
    # still holds its weights and runtime (parking: until SGLang's release is done); None = as
    # ``resident``
    holds_weights: bool | None = None
    awake: bool = False  # up and serving (not starting, waking or parking): its footprint counts
    # parked, and a plan's wake of it waits for room on its GPUs (control/plans.py): counted as
    # holding its weights (set ``holds_weights`` too) so its neighbours shrink before the wake
    wake_due: bool = False


@dataclass(frozen=True)
class Footprint:
    """What an instance's processes hold on one GPU (NVML per process: weights, context, CUDA
    graphs, activations and the KV pages its shim has mapped), read after its shim's status."""

    gpu: int
    bytes: int


@dataclass(frozen=True)
class Observation:
    load: LoadSample | None  # None: no fresh /v1/loads sample this round
    status: Status | None  # None: the shim did not answer this round
    held_tokens: int = 0  # KV of the requests the admission gate holds for it (mode full)
    footprints: tuple[Footprint, ...] = ()  # read this round (not every round), per GPU


@dataclass(frozen=True)
class SetLimit:
    instance: str
    bytes: int
    revision: int


@dataclass(frozen=True)
class FlushCache:
    instance: str


Action = SetLimit | FlushCache


def non_kv_bytes(
    instances: Iterable[KVInstance], measured: Mapping[tuple[str, int], int] | None = None
) -> dict[int, int]:
    """What is not KV on each GPU: what each instance holds awake (or parking: until its weights
    are released), or parked. The shim's first block is counted as KV. ``measured``: per
    (instance, GPU), what it holds awake as measured (``Ledger.measured``), which replaces the
    cost model's figure."""
    measured = measured or {}
    out: dict[int, int] = {}
    for i in instances:
        out[i.gpu] = out.get(i.gpu, 0) + _non_kv(i, measured)
    return out


def _non_kv(i: KVInstance, measured: Mapping[tuple[str, int], int]) -> int:
    full = i.resident if i.holds_weights is None else i.holds_weights
    return measured.get((i.id, i.gpu), i.awake_bytes) if full else i.parked_bytes


@dataclass
class _Known:
    limit: int | None = None  # the limit this ledger last had accepted
    revision: int = 0
    last_flush: float | None = None


@dataclass
class Ledger:
    capacity: Mapping[int, int]  # bytes per GPU
    margin: int = MARGIN_BYTES
    hysteresis: float = 0.05
    known: dict[str, _Known] = field(default_factory=dict)
    # instances whose grow the last plan held back (``split.phase``: the memory is still mapped
    # by a shrinking neighbour until its tokens free): the runner plans again soon, not a
    # period later, so a burst's KV follows its donors' eviction (kv/runner.py REGROW_S)
    deferred: frozenset[str] = frozenset()
    # per instance split in the last plan: what it was counted to need (``need_bytes``) and what
    # the split gave it before phasing (above its limit while its grow waits for memory to free);
    # 0 and 0 for one not resident
    needs: dict[str, int] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)
    # Activations beyond what was measured: a server measured before its largest prefill (e.g.
    # SGLang run with --disable-prefill-cuda-graph, whose prefill allocates them eagerly) grows
    # by this much when one comes. The cost model's own activation workspace.
    reserve: int = ACTIVATION_BYTES
    # per (instance, GPU): the most its processes held beside their KV while awake, seen so far
    # (the torch allocator keeps what it reserved); + ``reserve``, it replaces the cost model's
    # awake figure in the budget. A measurement drifts by the pages mapped between the shim's
    # status and the reading; read status first, so that drift only overstates.
    peaks: dict[tuple[str, int], int] = field(default_factory=dict)
    # the last plan's instances and the pages each shim last said it mapped: ``room`` answers
    # from them (and the limits in force) between two plans
    last: tuple[KVInstance, ...] = ()
    mapped: dict[str, int] = field(default_factory=dict)

    @property
    def waking(self) -> frozenset[str]:
        """Instances of the last plan whose wake waits for room: the runner plans again soon,
        as for a deferred grow, so the wake follows its neighbours' pages as they free."""
        return frozenset(i.id for i in self.last if i.wake_due)

    @property
    def measured(self) -> dict[tuple[str, int], int]:
        """Per (instance, GPU): what the budget counts it to hold awake, once measured."""
        return {k: v + self.reserve for k, v in self.peaks.items()}

    def budget(self, gpu: int, non_kv: Mapping[int, int]) -> int:
        return max(0, self.capacity.get(gpu, 0) - non_kv.get(gpu, 0) - self.margin)

    def plan(self, instances: Sequence[KVInstance], seen: Mapping[str, Observation], now: float) -> list[Action]:
        """Actions for this round. A TP group is one instance on several GPUs (one entry per
        GPU, with its per-GPU figures): its limit is the same on every GPU of its group, the
        least that any of them can give (each rank's pool is an equal shard, and its ranks
        apply a limit together: cumem_shim/ranks.py). What that leaves unused on its other GPUs
        is split again among their other instances (``GROUP_ROUNDS``)."""
        self._measure(instances, seen)
        self.last = tuple(instances)
        for iid, obs in seen.items():
            if obs.status is not None:
                self.mapped[iid] = obs.status.mapped_bytes
        non_kv = non_kv_bytes(instances, self.measured)
        out: list[Action] = []
        members: dict[str, Member] = {}
        mapped: dict[str, int] = {}
        current: dict[str, int] = {}
        parked_pages: dict[int, int] = {}
        done: set[str] = set()
        waking_on = {i.gpu for i in instances if i.wake_due}
        idle: set[str] = set()  # resident, seen and idle this round
        for inst in instances:  # once per instance: its observation, flush, or its limit 0
            obs = seen.get(inst.id, Observation(None, None))
            st = obs.status
            known = self.known.setdefault(inst.id, _Known())
            if inst.id in done:
                if not inst.resident and st is not None:
                    parked_pages[inst.gpu] = parked_pages.get(inst.gpu, 0) + st.mapped_bytes
                continue
            done.add(inst.id)
            if st is not None:  # the shim's revision wins (an orchestrator restart)
                known.revision = max(known.revision, st.revision)
            if not inst.resident:
                if st is not None and known.limit != 0:
                    out.append(self._send(inst.id, 0))
                if st is not None:  # its pages stay until its shim applies the 0
                    parked_pages[inst.gpu] = parked_pages.get(inst.gpu, 0) + st.mapped_bytes
                continue
            if st is None or obs.load is None:
                continue  # unknown this round: it keeps its limit; its pages count below
            ceiling = min(
                inst.ceiling_bytes or st.capacity_tokens * inst.token_bytes, st.capacity_tokens * inst.token_bytes
            )
            members[inst.id] = Member(
                inst.id,
                need_bytes(
                    obs.load,
                    inst.token_bytes,
                    st.used_tokens,
                    held_tokens=obs.held_tokens,
                    shim_limit_tokens=st.limit_tokens,
                    shim_capacity_tokens=st.capacity_tokens,
                ),
                inst.floor_bytes,
                ceiling,
                st.block_bytes,
                inst.priority,
            )
            mapped[inst.id] = st.mapped_bytes
            current[inst.id] = known.limit if known.limit is not None else st.limit_bytes
            if obs.load.idle:
                idle.add(inst.id)
                above = st.mapped_bytes > st.limit_bytes + st.block_bytes
                if above and self._may_flush(inst.id, now, inst.gpu in waking_on):
                    out.append(FlushCache(inst.id))
        span: dict[str, list[int]] = {}
        for inst in instances:
            span.setdefault(inst.id, []).append(inst.gpu)
        budgets = {}
        for gpu in sorted(set(i.gpu for i in instances)):
            here = [i for i in instances if i.gpu == gpu]
            # instances not seen this round still hold what they have mapped or may map
            unseen = parked_pages.get(gpu, 0) + sum(
                max(self.known[i.id].limit or 0, 0) for i in here if i.resident and i.id not in members
            )
            budgets[gpu] = (self.budget(gpu, non_kv) - unseen, [i.id for i in here if i.id in members])
        pinned: dict[str, int] = {}
        wanted: dict[str, int] = {}  # what the split gives each instance, before phasing
        for _ in range(GROUP_ROUNDS):
            wanted.clear()
            per_gpu = {
                gpu: self._limits(b, ids, members, mapped, current, pinned, wanted) for gpu, (b, ids) in budgets.items()
            }
            agreed = {iid: min(per_gpu[g][iid] for g in span[iid]) for iid in members}
            moved = {iid: v for iid, v in agreed.items() if len(span[iid]) > 1 and pinned.get(iid) != v}
            if not moved or all(
                all(per_gpu[g][iid] == v for g in span[iid]) for iid, v in moved.items()
            ):  # every group got the same on each GPU: nothing to hand back
                break
            pinned.update(moved)
        self.deferred = frozenset(iid for iid in members if agreed[iid] < wanted.get(iid, 0))
        parked = {i.id: 0 for i in instances if not i.resident}  # needs and gets nothing
        self.needs = parked | {iid: m.need for iid, m in members.items()}
        self.targets = parked | {iid: wanted.get(iid, agreed[iid]) for iid in members}
        for iid in sorted(members):
            limit = agreed[iid]
            if limit != current[iid] or self.known[iid].limit is None:
                out.append(self._send(iid, limit))
        # a wake waits on these GPUs: an idle neighbour whose pages lie above the limit it gets
        # now is flushed in this round, not the next (its status above predates the shrink)
        flushed = {a.instance for a in out if isinstance(a, FlushCache)}
        for iid in sorted(idle - flushed):
            waiting = any(g in waking_on for g in span[iid])
            if waiting and mapped[iid] > agreed[iid] + members[iid].block and self._may_flush(iid, now, True):
                out.append(FlushCache(iid))
        return out

    def _may_flush(self, iid: str, now: float, wake_waits: bool) -> bool:
        """At most one ``/flush_cache`` per instance every ``FLUSH_EVERY_S``, every
        ``FLUSH_FOR_WAKE_S`` while a wake waits on its GPU; True records one now."""
        known = self.known[iid]
        spacing = FLUSH_FOR_WAKE_S if wake_waits else FLUSH_EVERY_S
        if known.last_flush is not None and now - known.last_flush < spacing:
            return False
        known.last_flush = now
        return True

    def _limits(
        self,
        budget: int,
        ids: Sequence[str],
        members: Mapping[str, Member],
        mapped: Mapping[str, int],
        current: Mapping[str, int],
        pinned: Mapping[str, int],
        wanted: dict[str, int],
    ) -> dict[str, int]:
        """One GPU: the limit each of its resident instances may have now (split, hysteresis,
        phase). ``pinned``: TP groups held to what another GPU of theirs can give. ``wanted``
        gets each one's target before phasing (the least over a group's GPUs)."""
        here = [
            replace(members[i], ceiling=pinned[i], floor=min(members[i].floor, pinned[i]))
            if i in pinned
            else members[i]
            for i in ids
        ]
        block = {m.id: m.block for m in here}
        exact = split(budget, here).limits
        targets = {
            iid: t
            if changed(t, current[iid], block[iid], self.hysteresis) or self.known[iid].limit is None
            else current[iid]
            for iid, t in exact.items()
        }
        if sum(targets.values()) > budget:  # hysteresis never keeps a GPU over its budget (a wake
            targets = exact  # waits for room: a shrink of 4 % left unsent would hold it for good)
        targets = {iid: min(t, pinned.get(iid, t)) for iid, t in targets.items()}
        for iid, t in targets.items():
            wanted[iid] = min(t, wanted.get(iid, t))
        return phase(
            budget, targets, current, mapped, grow_order(targets, current, mapped, {m.id: m.priority for m in here})
        )

    def _measure(self, instances: Sequence[KVInstance], seen: Mapping[str, Observation]) -> None:
        """Record what each awake instance holds beside its KV, from this round's footprints."""
        for inst in instances:
            obs = seen.get(inst.id)
            if not inst.awake or obs is None or obs.status is None:
                continue
            # a TP group's status carries the most any rank mapped (kv/client.py ``combine``);
            # its ranks map equal shards, so that is each GPU's but for a block while a limit applies
            for fp in obs.footprints:
                if fp.gpu == inst.gpu:
                    beside = max(0, fp.bytes - obs.status.mapped_bytes)
                    key = (inst.id, inst.gpu)
                    self.peaks[key] = max(self.peaks.get(key, 0), beside)

    def _send(self, iid: str, limit: int) -> SetLimit:
        known = self.known[iid]
        known.revision += 1
        return SetLimit(iid, limit, known.revision)

    def accepted(self, iid: str, limit: int, revision: int, mapped: int | None = None) -> None:
        """The shim took (or kept) this limit: record it as in force, and the pages its reply
        says it holds after applying it (``mapped``; a shrink unmaps free blocks at once), which
        ``room`` counts until the next status."""
        known = self.known.setdefault(iid, _Known())
        known.limit, known.revision = limit, max(known.revision, revision)
        if mapped is not None:
            self.mapped[iid] = mapped

    def room(self, iid: str) -> Room | None:
        """Whether ``iid``'s weights fit on each of its GPUs now beside what the others hold
        there (kv/room.py), from the last plan's instances, the pages each shim last mapped and
        the limits in force. None when the last plan did not have it.

        Another wake waiting on the same GPU counts as holding its weights only if its id sorts
        first: two waits never both go into room for one, and never wait for each other."""
        mine = [i for i in self.last if i.id == iid]
        if not mine:
            return None
        measured = self.measured
        need, own, others = {}, {}, {}
        for t in mine:
            g = t.gpu
            need[g] = measured.get((iid, g), t.awake_bytes) - t.parked_bytes
            own[g] = t.parked_bytes + self.mapped.get(iid, 0)
            holds = []
            for i in self.last:
                if i.gpu != g or i.id == iid:
                    continue
                waits_after = i.wake_due and i.id > iid
                non_kv = i.parked_bytes if waits_after else _non_kv(i, measured)
                holds.append(Hold(i.id, non_kv + self._kv_held(i)))
            others[g] = tuple(holds)
        return room(iid, self.capacity, self.margin, need, own, others)

    def _kv_held(self, i: KVInstance) -> int:
        """KV pages ``i`` holds or may map at any moment: a resident one up to its limit in
        force (an allocation, the shim's idle fill), any other what its shim last mapped."""
        mapped = self.mapped.get(i.id, 0)
        known = self.known.get(i.id)
        limit = known.limit if known is not None and known.limit is not None else 0
        return max(mapped, limit) if i.resident else mapped

    def forget(self, iid: str) -> None:
        """The instance stopped (its process and shim are gone): a new process is measured anew."""
        self.known.pop(iid, None)
        self.mapped.pop(iid, None)
        for key in [k for k in self.peaks if k[0] == iid]:
            del self.peaks[key]
