"""The global scheduler's inputs in the live loop (mode ``full``): builds ``place.decide``'s
snapshot from the loop's state (docs/scheduling.md). Owned by the control loop; only its task
calls these.

Snapshot (``ClusterView``): one ``ModelDemand`` per model (costs from the H100 memory model,
``orchestrator.cli.plan.server_cost``; token rate, concurrency and activity from ``Demand``; held
requests from ``Holds``) and one ``ServerView`` per instance, where the loop's claims show as
the policy expects (``plans.policy_state``, which the simulator uses too): an awake instance
that a plan drains shows as ``parking``, a parked one reserved as a plan's wake target as
``waking``. The plans themselves run in plans.py.

KV is not placement's business: in modes elastic and full the KV ledger (orchestrator/kv/) owns
the shims' limits and re-splits every second and on every state change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from orchestrator.cli.plan import server_cost
from orchestrator.config import GIB, Config
from orchestrator.control.demand import Demand
from orchestrator.control.instance import Instance
from orchestrator.control.plans import policy_state
from orchestrator.policy.placement.cluster import (
    ClusterView,
    ModelDemand,
    PlacementParams,
    ServerCost,
    ServerView,
)


def server_costs(config: Config) -> dict[str, ServerCost]:
    """Per-GPU cost of one server of each model; the KV floor is the largest `kv_floor_gb` of its
    placements (else the default floor of `server_cost`), as `chimera-orch plan` computes it."""
    out = {}
    for m in config.models:
        floors = [p.kv_floor_gb for p in m.placements if p.kv_floor_gb is not None]
        out[m.name] = server_cost(m.shape, m.tp_size, int(max(floors) * GIB) if floors else None)
    return out


def placement_params(config: Config) -> PlacementParams:
    return PlacementParams(tau=config.scheduler.tau)


def cluster_view(config: Config, costs: Mapping[str, ServerCost], instances: Iterable[Instance],
                 waiting: Mapping[str, int], oldest_wait_s: Mapping[str, float],
                 demand: Demand, now: float) -> ClusterView:
    insts = list(instances)
    running: dict[str, int] = {}
    for i in insts:
        running[i.spec.model.name] = running.get(i.spec.model.name, 0) + i.in_flight
    models = tuple(
        ModelDemand(
            name=m.name, tp_size=m.tp_size, cost=costs[m.name], tpot_slo_s=m.slo.tpot_or_default,
            token_rate=demand.token_rate(m.name, now), queued=waiting.get(m.name, 0),
            running=running.get(m.name, 0), last_active_at=demand.last_active(m.name),
            idle_park_s=m.idle.park_after_s, park_when=m.idle.when,
            priority=m.priority, last_moved_at=demand.last_moved(m.name),
            oldest_wait_s=oldest_wait_s.get(m.name, 0.0), step_s=demand.step_s(m, now),
            activity=demand.activity(m.name, now))
        for m in config.models)
    servers = tuple(
        ServerView(i.id, i.spec.model.name, i.spec.gpus, policy_state(i),
                   demand.kv_used_tokens(i.id) * costs[i.spec.model.name].kv_bytes_per_token,
                   i.in_flight)
        for i in insts)
    cap = int(config.host.gpu_memory_gb * GIB)
    return ClusterView(models, servers, (cap,) * config.gpu_count, placement_params(config))
