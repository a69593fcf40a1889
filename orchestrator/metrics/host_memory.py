"""Host RAM held by the weight backups of time-shared instances
(``chimera_host_memory_bytes{model,server,kind}``).

A park copies an instance's weights to pinned host RAM (SGLang's CPU backup); chimera launches
time-shared engines with TMS_RETAIN_CPU_BACKUP=1, so the backup stays allocated after a wake
(the next park reuses it, which is what makes parks after the first fast) until the process
exits. So an instance holds ``InstanceFacts.host_backup_bytes`` of host RAM from its first park
until its process is gone, shown by kind:

- ``parked_weights``: parking, parked or waking — the host copy is what the weights come back from;
- ``retained_weights``: awake with the backup of an earlier park still allocated.

Both are chimera's account from the cost model (the weights' size), not a measurement. ``backup``
is pure; ``HostBackups`` owns which instances have parked since their process started and sets
the gauge, fed by the supervisor's state observers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from prometheus_client import Gauge

from orchestrator.deployment import InstanceFacts
from orchestrator.types import PROCESS_ON_GPU, InstanceState, InstanceView

S = InstanceState
HostKind = Literal["parked_weights", "retained_weights"]
HOST_KINDS: tuple[HostKind, ...] = ("parked_weights", "retained_weights")
PARKED_SIDE = frozenset({S.PARKING, S.PARKED, S.WAKING})  # a park started: the backup is in use


def backup(state: InstanceState, parked_before: bool) -> HostKind | None:
    """What kind of host backup an instance in ``state`` holds (module docstring), given whether
    its current process has parked before; None: none (never parked, or its process is gone)."""
    if state in PARKED_SIDE:
        return "parked_weights"
    if state in PROCESS_ON_GPU and parked_before:
        return "retained_weights"
    return None


class HostBackups:
    """The owner of which instances hold a backup; ``observe`` is a state observer."""

    def __init__(self, instances: Mapping[str, InstanceFacts], gauge: Gauge) -> None:
        self._facts = instances
        self._gauge = gauge
        self._parked: set[str] = set()  # parked since their process started

    def observe(self, view: InstanceView) -> None:
        f = self._facts.get(view.id)
        if f is None:
            return
        kind = backup(view.state, view.id in self._parked)
        if kind is None:
            self._parked.discard(view.id)  # its process (and the backup with it) is gone
        elif view.state in PARKED_SIDE:
            self._parked.add(view.id)
        for k in HOST_KINDS:
            self._gauge.labels(view.model, view.id, k).set(f.host_backup_bytes if k == kind else 0)
