"""Per-model demand as the control loop measures it: the signals the global scheduler's snapshot
needs besides instance states. Owned by the loop (only its task calls these); time is passed in.

- token rate: prompt + generated tokens/s over ``window_s`` (``RateWindow``), from the
  scraper's ``LoadSample.tokens``;
- request rate: requests/s arriving for the model over the same window, counted as the loop
  is asked for an instance (held ones too: a parked model's demand, which its engines cannot
  show), for the starvation guard (policy/placement/kvpr.py ``preempt_wait_s``);
- concurrency: requests running in the model's engines, averaged over the same window (each
  sample adds running x seconds since the instance's previous sample); turned into the decode
  step time the TPOT guard needs with the H100 latency model;
- KV in use per instance (tokens), from the latest sample (under the shim, the requests' tokens:
  the app hands the loop ``KVRunner.requests_view`` of each sample);
- last activity (arrival, completion, becoming awake) and last migration, per model.
"""

from __future__ import annotations

import math

from orchestrator.config import ModelSpec
from orchestrator.perf.model import LatencyModel
from orchestrator.policy.rates import DEFAULT_WINDOW_S, RateWindow
from orchestrator.types import LoadSample

# Context length assumed for the decode step of a typical request (prompt + output): Prism's
# synthetic traces average 520 tokens (the same default as `chimera-orch plan`).
TYPICAL_CONTEXT_TOKENS = 520
# Below this average concurrency a model counts as not decoding (step 0): under 1 % of the time
# busy, a neighbour's TPOT barely notices it (bench/sim/chimera.py: expected_step_s).
MIN_CONCURRENCY = 0.01


class Demand:
    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.window_s = window_s
        self._tokens: dict[str, RateWindow] = {}
        self._busy: dict[str, RateWindow] = {}
        self._arrivals: dict[str, RateWindow] = {}
        self._sampled_at: dict[str, float] = {}  # instance -> time of its previous sample
        self._kv_used: dict[str, int] = {}  # instance -> KV tokens in use (latest sample)
        self._last_active: dict[str, float] = {}
        self._moved: dict[str, float] = {}
        self._latency: dict[str, LatencyModel] = {}

    # ---- recording ----------------------------------------------------------------------

    def sample(self, model: str, s: LoadSample, now: float) -> None:
        prev = self._sampled_at.get(s.instance_id)
        self._sampled_at[s.instance_id] = now
        self._kv_used[s.instance_id] = s.used_tokens
        if s.tokens > 0:
            self._window(self._tokens, model).add(now, s.tokens)
        if prev is not None and s.running > 0:
            self._window(self._busy, model).add(now, s.running * max(0.0, now - prev))

    def forget(self, instance_id: str) -> None:
        """The instance parked or stopped: it uses no KV and its next sample starts over."""
        self._sampled_at.pop(instance_id, None)
        self._kv_used.pop(instance_id, None)

    def active(self, model: str, now: float) -> None:
        self._last_active[model] = now

    def arrived(self, model: str, now: float) -> None:
        """A request for ``model`` asked for an instance (it may be held)."""
        self._window(self._arrivals, model).add(now, 1.0)
        self._last_active[model] = now

    def moved(self, model: str, now: float) -> None:
        self._moved[model] = now

    # ---- reading ------------------------------------------------------------------------

    def token_rate(self, model: str, now: float) -> float:
        w = self._tokens.get(model)
        return w.rate(now) if w is not None else 0.0

    def request_rate(self, model: str, now: float) -> float:
        w = self._arrivals.get(model)
        return w.rate(now) if w is not None else 0.0

    def concurrency(self, model: str, now: float) -> float:
        w = self._busy.get(model)
        return w.rate(now) if w is not None else 0.0

    def activity(self, model: str, now: float) -> float:
        """Share of time the model has requests running: 1 - exp(-concurrency), the chance an
        M/G/inf system with that mean occupancy is not empty. Measured while colocated, where
        requests take longer, it errs high: the TPOT guard stays on the safe side."""
        return 1.0 - math.exp(-self.concurrency(model, now))

    def step_s(self, spec: ModelSpec, now: float) -> float:
        """Decode step of the model's server at its average concurrency (0 when nearly idle)."""
        c = self.concurrency(spec.name, now)
        if c < MIN_CONCURRENCY:
            return 0.0
        lat = self._latency.get(spec.name)
        if lat is None:
            lat = self._latency[spec.name] = LatencyModel(spec.shape, spec.tp_size)
        return lat.decode_time([TYPICAL_CONTEXT_TOKENS] * max(1, round(c)))

    def kv_used_tokens(self, instance_id: str) -> int:
        return self._kv_used.get(instance_id, 0)

    def last_active(self, model: str) -> float | None:
        return self._last_active.get(model)

    def last_moved(self, model: str) -> float | None:
        return self._moved.get(model)

    def _window(self, table: dict[str, RateWindow], model: str) -> RateWindow:
        w = table.get(model)
        if w is None:
            w = table[model] = RateWindow(self.window_s)
        return w
