"""The ledger's view of every instance (``kv_instances``, read by the runner once per step),
from the control loop's views and the deployment's facts (orchestrator/deployment.py: which
instances the shim backs, their floors, ceilings, fixed pools and costs). Pure.

Instances without the shim (mode static's fixed pools) count their pool on their GPUs as non-KV
memory, so the ledger never hands their memory to a neighbour. A TP group appears once per GPU
of its group with its per-GPU figures (its shard's KV bytes per token); the ledger gives it the
same limit on each (ledger.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from orchestrator.deployment import Deployment
from orchestrator.kv.ledger import KVInstance
from orchestrator.types import InstanceState, InstanceView

# holding or about to hold KV: the ledger splits among these; parked ones get limit 0
RESIDENT = frozenset({InstanceState.PENDING, InstanceState.STARTING, InstanceState.AWAKE, InstanceState.WAKING})
# still holding weights and runtime: a parking instance until SGLang's release is done
HOLDS_WEIGHTS = RESIDENT | {InstanceState.PARKING}
# no process (BACKOFF: the supervisor killed what failed and checked before reporting it)
GONE = frozenset({InstanceState.FAILED, InstanceState.STOPPED, InstanceState.BACKOFF})


def kv_instances(views: Iterable[InstanceView], deployment: Deployment) -> list[KVInstance]:
    """The ledger's instances: every live one, per GPU. Instances the shim backs (whether or not
    it is up yet) get limits; the others count their fixed pool as non-KV memory."""
    out = []
    for v in views:
        if v.state in GONE:
            continue
        facts = deployment.instances[v.id]
        model = facts.spec.model
        for gpu in v.gpus:
            out.append(
                KVInstance(
                    id=v.id,
                    gpu=gpu,
                    token_bytes=facts.cost.kv_bytes_per_token,  # per GPU: a TP shard's
                    awake_bytes=facts.awake_bytes,
                    parked_bytes=facts.parked_bytes,
                    floor_bytes=facts.floor_bytes,
                    ceiling_bytes=facts.ceiling_bytes,
                    priority=model.priority,
                    resident=v.state in RESIDENT,
                    # a wake waiting for room counts its weights: its neighbours shrink first
                    holds_weights=v.state in HOLDS_WEIGHTS or v.wake_due,
                    awake=v.state is InstanceState.AWAKE,
                    wake_due=v.wake_due,
                )
            )
    return out


class GpuCapacity(Mapping[int, int]):
    """The ledger's capacity: ``gpu_bytes`` on each of the ``count()`` GPUs counted now (up
    --ray: the cluster's, which grows when a node joins after ``up``; an instance moved off a
    dead node is planned on its new GPUs whether or not a placement names them)."""

    def __init__(self, gpu_bytes: int, count: Callable[[], int]) -> None:
        self.gpu_bytes, self.count = gpu_bytes, count

    def __getitem__(self, gpu: int) -> int:
        if not 0 <= gpu < self.count():
            raise KeyError(gpu)
        return self.gpu_bytes

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.count()))

    def __len__(self) -> int:
        return self.count()
