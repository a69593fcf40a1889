"""What one server of a model charges each GPU it is on, per model, computed on first use.

A charge is one tuple: (CUDA context bytes, awake bytes, KV floor bytes, KV pressure, expected
decode seconds per round), then the TPOT guard's terms (tpot.terms: step, step x decoding
share, step x (1 - share), TPOT SLO). The expressions are ModelDemand.pressure's, decoding()'s
and tpot.terms', with min/max spelled as comparisons (same floats, NaN included).

Under MPS (``neighbour`` < 1, perf/sharing.py ``decode_weight``) a model adds ``neighbour`` x
step x share to a round and its own requests see step - that beyond the round: a member then sees
its whole step plus ``neighbour`` x its neighbours' decode. Under time-slicing (``neighbour`` ==
1.0) the expressions are the ones above, unchanged.

A decision at 10,000 models needs the charges of the models with a resident or active server
and of the models it wakes or weighs, not of every model: a parked server charges only its
context, read off its model's cost. So ``Charges`` is a dict that computes a model's charge when
it is first asked for it, and keeps, over the models charged so far that have a decode step,
the largest step x (1 - share) and the smallest TPOT SLO: the bound with which the TPOT guard
skips GPUs that cannot overflow (tpot.may_overflow). Every active server's model has been
charged (the tally charges each one as it counts it), so the bound covers every model whose
decode steps are in a round.
"""

from __future__ import annotations

from orchestrator.policy.placement.cluster import ModelDemand

Charge = tuple[int, int, int, float, float, float, float, float, float]


class Charges(dict[str, Charge]):
    def __init__(self, models: dict[str, ModelDemand], neighbour: float = 1.0) -> None:
        super().__init__()
        self.models = models
        self.neighbour = neighbour  # share of a neighbour's decode step a round charges
        self.rest_max = 0.0  # over charged models with a decode step: largest step x (1 - share)
        self.slo_min = float("inf")  # ... and smallest TPOT SLO

    def __missing__(self, name: str) -> Charge:
        m = self.models[name]
        c = m.cost
        act = m.activity
        if act is None:
            share = 1.0
        else:
            share = 0.0 if 0.0 > act else act  # max(act, 0.0)
            if 1.0 < share:  # min(share, 1.0)
                share = 1.0
        step = m.step_s
        if self.neighbour == 1.0:  # time-slicing: the arithmetic that predates MPS, same floats
            decode = step * share
            rest = step * (1.0 - share)
        else:
            decode = step * share * self.neighbour
            rest = step - decode
        slo = m.tpot_slo_s
        if step > 0:
            if rest > self.rest_max:
                self.rest_max = rest
            if slo < self.slo_min:
                self.slo_min = slo
        charge = (
            c.parked_bytes,
            c.awake_bytes,
            c.kv_floor_bytes,
            m.token_rate * c.kv_bytes_per_token / (1e-6 if 1e-6 > slo else slo),
            decode,
            step,
            decode,
            rest,
            slo,
        )
        self[name] = charge
        return charge
