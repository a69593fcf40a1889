"""TPOT guard: colocated servers time-slice their GPU, so decode rounds add up.

Without MPS a GPU runs one process's kernels at a time: when k servers on a GPU all decode, a
token of each costs about the sum of their step times (one "round"). A server's TPOT SLO then
bounds the round of its GPU. KVPR (kvpr.py) sees only memory; Prism's placement would happily
put a 1B model (18 ms TPOT SLO) next to a 32B one (30 ms steps). The guard measures, per GPU,
how far the round with every active model decoding at once exceeds the tightest TPOT SLO of
those models, as a fraction of that SLO (0 = fine); placement prefers candidates that keep it
at 0 and may move a model to bring it back to 0. The bound is deliberately the worst case: at a
99% target, a neighbour that decodes even a few percent of the time already costs misses.
"""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.policy.cluster import ModelDemand, S
from orchestrator.policy.kvpr import Ledger

_ACTIVE = (S.AWAKE, S.WAKING, S.STARTING)


def overflow(led: Ledger, gpus: Iterable[int], add: ModelDemand | None = None,
             drop: Iterable[str] = ()) -> float:
    """Worst relative overflow of the expected round over the tightest active TPOT SLO on the
    group, with ``add`` made active there and the servers ``drop`` gone."""
    gone = set(drop)
    worst = 0.0
    for g in gpus:
        round_s = led.round_s[g] + (add.step_s if add is not None else 0.0)
        tightest = add.tpot_slo_s if add is not None and add.step_s > 0 else float("inf")
        for sid in led.on_gpu[g]:
            m = led.models[led.servers[sid].model]
            if sid in gone:
                if led.state[sid] in _ACTIVE:
                    round_s -= m.step_s
                continue
            if led.state[sid] in _ACTIVE and m.step_s > 0 and (add is None or m.name != add.name):
                tightest = min(tightest, m.tpot_slo_s)
        if tightest < float("inf"):
            worst = max(worst, (round_s - tightest) / tightest)
    return max(worst, 0.0)
