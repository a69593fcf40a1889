"""Which instances to start, and when.

An instance must run if its placement says ``on: true`` or if requests are held for its model
and none of the model's instances is running or on its way. Instances sharing a GPU start one
at a time: SGLang's ``--mem-fraction-static`` is a fraction of memory free *at start*, and two
concurrent starts would each see the other's memory as free.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.types import InstanceState

S = InstanceState
_ON_ITS_WAY = frozenset({S.PENDING, S.STARTING, S.AWAKE, S.WAKING, S.PARKING, S.PARKED})


@dataclass(frozen=True)
class InstanceSnapshot:
    id: str
    model: str
    gpus: tuple[int, ...]
    state: InstanceState
    start_on_up: bool  # started by `up` (placements `on: true`, or any placement in full mode)
    order: int  # position in the placements file (ties are broken by it)


@dataclass(frozen=True)
class ClusterSnapshot:
    instances: tuple[InstanceSnapshot, ...]
    waiting: dict[str, int]  # model name -> requests held for it


@dataclass(frozen=True)
class StartDecision:
    start: tuple[str, ...] = ()  # instance ids to spawn now
    queue: tuple[str, ...] = ()  # instance ids that must start but wait for their GPU's turn


def decide(snap: ClusterSnapshot, now: float) -> StartDecision:
    del now  # the start-up policy needs no time; the signature is the policies' common one
    by_model: dict[str, list[InstanceSnapshot]] = {}
    for inst in snap.instances:
        by_model.setdefault(inst.model, []).append(inst)

    starting_gpus = {g for i in snap.instances if i.state is S.STARTING for g in i.gpus}
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
                wanted.append(min(stopped, key=lambda i: (not starting_gpus.isdisjoint(i.gpus),
                                                          i.order)))

    busy_gpus = set(starting_gpus)
    start: list[str] = []
    queue: list[str] = []
    for inst in sorted(wanted, key=lambda i: i.order):
        if busy_gpus.isdisjoint(inst.gpus):
            start.append(inst.id)
            busy_gpus.update(inst.gpus)
        elif inst.state is S.STOPPED:
            queue.append(inst.id)
    return StartDecision(tuple(start), tuple(queue))
