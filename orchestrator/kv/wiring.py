"""The ledger's view of every instance (``kv_instances``, read by the runner once per step),
from the control loop's views and the deployment's facts (orchestrator/deployment.py: which
instances the shim backs, their floors, ceilings, fixed pools and costs). Pure.

Instances without the shim (mode static's fixed pools) count their pool on their GPUs as non-KV
memory, so the ledger never hands their memory to a neighbour. A TP group appears once per GPU
of its group with its per-GPU figures (its shard's KV bytes per token); the ledger gives it the
same limit on each (ledger.py).
"""

from __future__ import annotations

from collections.abc import Iterable

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
                    holds_weights=v.state in HOLDS_WEIGHTS,
                )
            )
    return out
