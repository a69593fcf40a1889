"""Local scheduler: one earliest-deadline-first queue per GPU group (docs/scheduling.md "Local").

``decide(view, now)`` is pure:
1. The group is one prefill machine: requests whose model has a server here (awake or waking)
   are ordered by deadline (arrival + TTFT SLO); Moore–Hodgson (moore_hodgson.py) keeps the
   largest set that can still meet its deadlines, dropping the lowest priority first and, among
   equals, the request with the longest expected prefill.
2. A dropped request is shed (429, Retry-After = when the on-time work ahead of it is done) or
   kept to be served late, per its model's rule (the model the client named: a LoRA adapter or
   a pooled model has its own, though it queues for its base's or pool's server). A request
   whose model has no server here is held untouched: the global scheduler has not placed it yet.
3. Dispatch walks the on-time requests in deadline order, then the late ones, and sends each
   to an awake server of its model that has KV room and a free slot; the rest wait.
"""

from __future__ import annotations

from orchestrator.policy.admission.moore_hodgson import Job, completion_times, moore_hodgson
from orchestrator.policy.admission.queueing import (
    Dispatch,
    EngineRoom,
    ModelRule,
    Pending,
    QueueDecision,
    QueueView,
    Shed,
)

MIN_RETRY_AFTER_S = 1.0  # HTTP Retry-After is whole seconds; never tell a client "retry now"


def decide(view: QueueView, now: float) -> QueueDecision:
    by_model: dict[str, list[EngineRoom]] = {}
    for e in view.engines:
        by_model.setdefault(e.model, []).append(e)
    ready = {m: min(e.ready_at for e in es) for m, es in by_model.items()}
    placed = [p for p in view.pending if p.model in ready]
    req = {p.id: p for p in placed}
    start = now + view.backlog_s
    jobs = [Job(p.id, p.prefill_s, p.deadline, _rule(view, p.rule_model).priority, ready[p.model]) for p in placed]
    on_time, dropped = moore_hodgson(jobs, start)

    shed: list[Shed] = []
    late: list[Pending] = []
    finish = completion_times(on_time, start)
    drained = finish[-1] if finish else start
    for job in dropped:
        p = req[job.key]
        if _rule(view, p.rule_model).on_late == "serve":
            late.append(p)
        else:
            wait = max(drained, ready[p.model]) - now
            shed.append(
                Shed(
                    p.id,
                    max(MIN_RETRY_AFTER_S, wait),
                    p.rule_model,
                    slo_s=p.deadline - p.arrival,
                    waited_s=max(0.0, now - p.arrival),
                    queued_s=max(0.0, wait),
                    prefill_s=p.prefill_s,
                    behind_wake=ready[p.model] > now,
                )
            )
    late.sort(key=lambda p: (p.deadline, p.id))

    room = {e.server: [e.free_kv_tokens, e.free_slots] for e in view.engines}
    dispatch: list[Dispatch] = []
    for p in [req[j.key] for j in on_time] + late:
        for e in sorted(by_model[p.model], key=lambda e: (-room[e.server][0], e.server)):
            left = room[e.server]
            if e.ready_at <= now and left[0] >= p.kv_tokens and left[1] > 0:
                left[0] -= p.kv_tokens
                left[1] -= 1
                dispatch.append(Dispatch(p.id, e.server))
                break
    return QueueDecision(tuple(dispatch), tuple(shed), tuple(p.id for p in late))


def _rule(view: QueueView, model: str) -> ModelRule:
    return view.rules.get(model) or ModelRule()
