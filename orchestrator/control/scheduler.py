"""The global scheduler's inputs in the live loop (mode ``full``): builds ``place.decide``'s
snapshot from the loop's state (docs/scheduling.md). Owned by the control loop; only its task
calls these.

Snapshot (``ClusterView``): one ``ModelDemand`` per model (cost and SLO from the deployment's
facts, orchestrator/deployment.py; token and request rates, concurrency and activity from ``Demand``; held
requests from ``Holds``) and one ``ServerView`` per instance, where the loop's claims show as
the policy expects (``plans.policy_state``, which the simulator uses too): an awake instance
that a plan drains shows as ``parking``, a parked one reserved as a plan's wake target as
``waking``. The plans themselves run in plans.py.

KV is not placement's business: in modes elastic and full the KV ledger (orchestrator/kv/) owns
the shims' limits and re-splits every second and on every state change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from orchestrator.control.demand import Demand
from orchestrator.control.instance import Instance
from orchestrator.control.plans import policy_state
from orchestrator.deployment import Deployment
from orchestrator.policy.placement.cluster import (
    ClusterView,
    ModelDemand,
    ServerView,
)


def cluster_view(
    deployment: Deployment,
    instances: Iterable[Instance],
    waiting: Mapping[str, int],
    oldest_wait_s: Mapping[str, float],
    demand: Demand,
    now: float,
    gpu_node: tuple[int, ...] | None = None,
) -> ClusterView:
    """``gpu_node``: the node of every GPU counted now (the loop's, grown by nodes that joined a
    Ray cluster after ``up``); None: the deployment's."""
    nodes = deployment.gpu_node if gpu_node is None else gpu_node
    facts = deployment.models
    insts = list(instances)
    running: dict[str, int] = {}
    for i in insts:
        running[i.spec.model.name] = running.get(i.spec.model.name, 0) + i.in_flight
    models = tuple(
        ModelDemand(
            name=m.name,
            tp_size=m.tp_size,
            cost=facts[m.name].cost,
            tpot_slo_s=facts[m.name].tpot_slo_s,
            token_rate=demand.token_rate(m.name, now),
            queued=waiting.get(m.name, 0),
            running=running.get(m.name, 0),
            last_active_at=demand.last_active(m.name),
            idle_park_s=m.idle.park_after_s,
            park_when=m.idle.when,
            priority=m.priority,
            last_moved_at=demand.last_moved(m.name),
            oldest_wait_s=oldest_wait_s.get(m.name, 0.0),
            request_rate=demand.request_rate(m.name, now),
            step_s=demand.step_s(m, now),
            activity=demand.activity(m.name, now),
        )
        for m in deployment.config.models
    )
    servers = tuple(
        ServerView(
            i.id,
            i.spec.model.name,
            i.gpus,
            policy_state(i),
            demand.kv_used_tokens(i.id) * facts[i.spec.model.name].cost.kv_bytes_per_token,
            i.in_flight,
        )
        for i in insts
    )
    return ClusterView(
        models,
        servers,
        (deployment.gpu_bytes,) * max(deployment.config.gpu_count, len(nodes)),
        deployment.placement_params,
        nodes,
    )
