"""What moving a model to another server costs (the migration policy's cost model). Pure.

A parked server holds its weights in pinned host RAM of its own node (SGLang's release keeps a
backup there), so waking it costs ``wake_s`` wherever it is. A server with no process (stopped,
or never started) has no backup anywhere: bringing the model up there is a cold start
(``cold_start_s``). A move across nodes can never use the source's backup (it lives in the
source node's host RAM), so across nodes only a parked server of the model on the target node
is warm; anything else there is a cold start. Nodes come from ``ClusterView.gpu_node`` (one
node when it is empty: every GPU shares the host's RAM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.policy.placement.cluster import ClusterView, ModelDemand, S

MoveKind = Literal["wake", "cold start"]


@dataclass(frozen=True)
class MoveCost:
    kind: MoveKind
    seconds: float
    across_nodes: bool

    @property
    def cold(self) -> bool:
        return self.kind == "cold start"

    def describe(self) -> str:
        where = " across nodes" if self.across_nodes else ""
        return f"{self.kind}{where}, ~{self.seconds:.1f} s"


def move_cost(view: ClusterView, m: ModelDemand, src: tuple[int, ...], dst: tuple[int, ...], dst_state: S) -> MoveCost:
    """The cost of moving ``m`` from its server on ``src`` to its server on ``dst`` that is in
    ``dst_state`` now."""
    across = view.node_of(src[0]) != view.node_of(dst[0])
    if dst_state is S.PARKED:  # its backup is in its own node's host RAM
        return MoveCost("wake", m.cost.wake_s, across)
    return MoveCost("cold start", m.cost.cold_start_s, across)
