"""Warm-start layout: on which GPU group each model gets its (parked) server(s).

Every server is started once and parked at ``up`` (a cold start costs ~65 s, a wake ~0.4 s), so
this layout bounds what the global scheduler can later do: it wakes, parks and migrates among
these servers. Pure and greedy, biggest models first:
- a server fits a group when every GPU can hold the CUDA contexts of all its servers plus the
  largest of them awake with its KV floor (any one model can always be woken alone);
- among groups that fit, it picks the one whose expected awake memory overflows least, then
  the lowest *expected* KV Pressure Ratio, where each model counts with its expected awake
  share (``awake_share``: 1 - exp(-request rate x idle threshold) - the chance a request comes
  before it would be parked);
- with ``tpot_guard``, a group whose expected decode round would exceed the tightest TPOT SLO
  there counts as overflowing too (tpot.py: colocated servers time-slice the GPU);
- ``replicas[m] > 1`` gives a model more servers on other groups (migration targets); TP ranks
  never share a GPU; ``round_robin=True`` ignores pressure and deals models to groups in turn,
  in the given order (the "global placement off" ablation).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.policy.cluster import ModelDemand

# A model whose awake footprint is above this share of a GPU counts as always awake in the
# plan: its neighbours wake and park around it, not the other way round (its wake needs all of
# its memory at once, which idle-but-not-idle-enough neighbours would block).
BIG_FRACTION = 0.5


@dataclass(frozen=True)
class Layout:
    servers: tuple[tuple[str, tuple[int, ...]], ...]  # (model, gpus), in placement order
    unplaced: tuple[str, ...]  # models with no server anywhere (not enough memory)


def layout(models: tuple[ModelDemand, ...], gpu_bytes: tuple[int, ...], *,
           awake_share: dict[str, float] | None = None, replicas: dict[str, int] | None = None,
           reserve_bytes: int = 0, round_robin: bool = False, tpot_guard: bool = True) -> Layout:
    n = len(gpu_bytes)
    cap = [float(b - reserve_bytes) for b in gpu_bytes]
    ctx = [0.0] * n
    hot = [0.0] * n
    biggest = [0.0] * n
    pressure = [0.0] * n
    rnd = [0.0] * n  # expected decode seconds per round (tpot.py)
    tight = [float("inf")] * n  # tightest TPOT SLO of the models with decode work there
    share = awake_share or {}
    reps = replicas or {}
    order = list(models) if round_robin else sorted(
        models, key=lambda m: (-(m.cost.awake_bytes + m.cost.kv_floor_bytes) * m.tp_size, -m.pressure, m.name))
    turn = 0
    servers: list[tuple[str, tuple[int, ...]]] = []
    unplaced: list[str] = []
    for m in order:
        c = m.cost
        wake = c.awake_bytes + c.kv_floor_bytes
        a = min(max(share.get(m.name, 1.0), 0.0), 1.0)
        if wake > BIG_FRACTION * min(cap):
            a = 1.0  # a big model needs all of it at once: plan its neighbours around it awake
        used: set[int] = set()
        for _ in range(max(1, reps.get(m.name, 1))):
            best: tuple[tuple[float, ...], tuple[int, ...]] | None = None
            for grp in _groups(n, m.tp_size):
                if not used.isdisjoint(grp):
                    continue
                if any(ctx[g] + c.parked_bytes + max(biggest[g], wake) > cap[g] for g in grp):
                    continue
                left = [cap[g] - ctx[g] - c.parked_bytes - hot[g] - a * wake for g in grp]
                over = max(0.0, -min(left)) / cap[grp[0]]  # expected overflow: least first
                if tpot_guard:
                    over += max(_cpu_over(rnd[g] + a * m.step_s,
                                          min(tight[g], m.tpot_slo_s if m.step_s > 0 else float("inf")))
                                for g in grp)
                ratio = max((pressure[g] + a * m.pressure) / max(lf, 1.0)
                            for g, lf in zip(grp, left, strict=True))
                fill = max((hot[g] + ctx[g]) / cap[g] for g in grp)
                rr = float((grp[0] - turn) % n)
                key = (rr,) if round_robin else (over, ratio, fill, float(grp[0]))
                if best is None or key < best[0]:
                    best = (key, grp)
            if best is None:
                break
            grp = best[1]
            turn = (grp[-1] + 1) % n
            used.update(grp)
            servers.append((m.name, grp))
            for g in grp:
                ctx[g] += c.parked_bytes
                hot[g] += a * wake
                biggest[g] = max(biggest[g], wake)
                pressure[g] += a * m.pressure
                rnd[g] += a * m.step_s
                if a * m.step_s > 0:
                    tight[g] = min(tight[g], m.tpot_slo_s)
            a = 0.0  # a replica is a standby: expected to be parked
        if not used:
            unplaced.append(m.name)
    return Layout(tuple(servers), tuple(unplaced))


def _cpu_over(round_s: float, tightest: float) -> float:
    return 0.0 if tightest == float("inf") else max(0.0, (round_s - tightest) / tightest)


def _groups(n: int, tp: int) -> list[tuple[int, ...]]:
    return [tuple(range(i, i + tp)) for i in range(0, n - tp + 1, tp)]
