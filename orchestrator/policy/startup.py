"""Which instances to start, and when.

An instance must run if its placement says ``on: true`` or if requests are held for its model
and none of the model's instances is running or on its way.

Instances that share a GPU start concurrently: each is given its memory in absolute terms
(orchestrator/deployment.py ``start_mem``), so a start no longer depends on what the others
hold when it begins. Starts are still kept apart where that is needed:

- ``start_alone`` (``CHIMERA_SERIAL_STARTS``, the fallback): nothing else on its GPUs starts
  while it starts, as before concurrent starts existed.
- memory (``ClusterSnapshot.gpu_bytes``): an instance starts beside others only where its start
  budget fits beside what its GPUs hold (budgets of the instances starting or awake, the
  context of the parked). One that does not fit waits while another instance of its GPUs is
  starting (its memory is not known yet, and in mode full a warm start parks it soon after),
  and otherwise starts as it always did, one at a time: the policy never deadlocks a
  deployment the planner let through. The fraction a fixed pool is started with
  (deployment.py ``launch_fraction``) holds only while the budgets fit: this is what keeps a
  start from being sized by what the others happen to hold.

Order: instances that park as soon as they are up (``parks_after_start``: mode full's `on:
false` placements) start first, then the file's order. Their start budget comes back within
seconds of their start (they keep only their context), so where the fleet does not fit at
once the next wave starts into it, and the models that stay awake start beside the first
parks instead of after a queue of start-then-park instances one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.types import InstanceState

S = InstanceState
# BACKOFF: restarted by the loop when its backoff ends (policy/restart.py), not started twice
_ON_ITS_WAY = frozenset({S.PENDING, S.STARTING, S.AWAKE, S.WAKING, S.PARKING, S.PARKED, S.BACKOFF})
_HOLDS_BUDGET = frozenset({S.STARTING, S.AWAKE, S.WAKING, S.PARKING})


@dataclass(frozen=True)
class InstanceSnapshot:
    id: str
    model: str
    gpus: tuple[int, ...]
    state: InstanceState
    start_on_up: bool  # started by `up` (placements `on: true`, or any placement in full mode)
    order: int  # position in the placements file (ties are broken by it)
    start_alone: bool = False  # nothing else on its GPUs may start while it starts
    start_bytes: int = 0  # per GPU while starting or awake (its start budget)
    parks_after_start: bool = False  # parked as soon as it is up (a warm start)
    parked_bytes: int = 0  # per GPU while parked

    @property
    def held_bytes(self) -> int:
        if self.state in _HOLDS_BUDGET:
            return self.start_bytes
        return self.parked_bytes if self.state is S.PARKED else 0


@dataclass(frozen=True)
class ClusterSnapshot:
    instances: tuple[InstanceSnapshot, ...]
    waiting: dict[str, int]  # model name -> requests held for it
    gpu_bytes: int | None = None  # capacity of each GPU; None: starts are not gated on memory


@dataclass(frozen=True)
class StartDecision:
    start: tuple[str, ...] = ()  # instance ids to spawn now
    queue: tuple[str, ...] = ()  # instance ids that must start but wait for their GPU's turn


def decide(snap: ClusterSnapshot, now: float) -> StartDecision:
    del now  # the start-up policy needs no time; the signature is the policies' common one
    by_model: dict[str, list[InstanceSnapshot]] = {}
    for inst in snap.instances:
        by_model.setdefault(inst.model, []).append(inst)

    starting = [i for i in snap.instances if i.state is S.STARTING]
    starting_gpus = {g for i in starting for g in i.gpus}
    wanted: list[InstanceSnapshot] = []
    for inst in snap.instances:
        if inst.state is S.PENDING:
            wanted.append(inst)
        elif inst.state is S.STOPPED and inst.start_on_up:
            wanted.append(inst)
    for model, n in snap.waiting.items():
        group = by_model.get(model, [])
        if n > 0 and group and not any(i.state in _ON_ITS_WAY for i in group):
            stopped = [i for i in group if i.state is S.STOPPED and i not in wanted]
            if stopped:  # prefer a GPU that is not busy starting another instance
                wanted.append(min(stopped, key=lambda i: (not starting_gpus.isdisjoint(i.gpus), i.order)))

    held: dict[int, int] = {}
    for i in snap.instances:
        for g in i.gpus:
            held[g] = held.get(g, 0) + i.held_bytes
    busy = set(starting_gpus)  # GPUs with an instance starting
    alone = {g for i in starting if i.start_alone for g in i.gpus}  # GPUs that one has alone
    start: list[str] = []
    queue: list[str] = []
    for inst in sorted(wanted, key=lambda i: (not i.parks_after_start, i.order)):
        if _may_start(inst, busy, alone, held, snap.gpu_bytes):
            start.append(inst.id)
            busy.update(inst.gpus)
            if inst.start_alone:
                alone.update(inst.gpus)
            for g in inst.gpus:
                held[g] = held.get(g, 0) + inst.start_bytes - inst.held_bytes
        elif inst.state is S.STOPPED:
            queue.append(inst.id)
    return StartDecision(tuple(start), tuple(queue))


def _may_start(
    inst: InstanceSnapshot, busy: set[int], alone: set[int], held: dict[int, int], gpu_bytes: int | None
) -> bool:
    if busy.isdisjoint(inst.gpus):
        return True  # nothing else starts on its GPUs: as before concurrent starts existed
    if inst.start_alone or not alone.isdisjoint(inst.gpus):
        return False
    if gpu_bytes is None:
        return True
    return all(held.get(g, 0) - inst.held_bytes + inst.start_bytes <= gpu_bytes for g in inst.gpus)
