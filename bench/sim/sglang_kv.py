"""SGLang 0.5.17's KV admission and retraction, as pure functions over token counts; servers.py
applies them to the servers of a model whose ``kv`` is "sglang" (bench/gpu/des.py: the twin of
runs against stock SGLang). What SGLang 0.5.17 does (its wheel's source, paths under
sglang/srt/), with the defaults chimera launches it with (radix cache on, page size 1, fcfs):

- admission (managers/schedule_policy.py ``PrefillAdder.add_one_req``): the room is the pool's
  free + evictable tokens less, for every running request, its remaining output (clipped at
  ``CLIP_MAX_NEW_TOKENS``) times the new-token ratio. Waiting requests are taken in queue order
  while ``extend + remaining output + 1 < room``, each then charging ``extend + its whole output
  + 1`` (``_update_prefill_budget``); ``extend`` is the prompt plus the tokens generated before a
  retraction. The first that does not fit stops the pass and marks the batch full
  (managers/scheduler.py ``get_new_batch_prefill``: ``batch_is_full``): no prefill is tried
  again until the running batch shrinks (a finish or a retraction), arrivals do not reopen it;
- the ratio (managers/scheduler_components/new_token_ratio_tracker.py, environ.py): starts at
  0.7 (``SGLANG_INIT_NEW_TOKEN_RATIO`` x ``schedule_conservativeness`` 1.0), falls by
  (0.7 - 0.098) / 600 per decode step without retraction, down to 0.098 (x
  ``SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR`` 0.14), is reset to 0.7 when the scheduler idles, and
  after a retraction is set to (tokens decoded + 20 per request) / (max new tokens + 1) over the
  requests kept, at most 1 (``estimate_new_token_ratio_after_retract``);
- retraction (managers/scheduler.py ``update_running_batch``, managers/schedule_batch.py
  ``check_decode_mem``, ``retract_decode``): before a decode step, when the pool (after evicting
  the cache) has fewer free tokens than one per running request, requests are retracted, the
  fewest output tokens first (ties: the longest prompt first), at least one and then until the
  rest fit, always keeping one; a retracted request frees its KV without caching it and goes to
  the end of the waiting queue, to be prefilled again with its prompt and the tokens it had.

Approximations (docs/bench-sim.md): a running request holds prompt + generated tokens (its
last token's KV is written by the next step, counted already); a prefill batch is not limited by
``max_prefill_tokens`` or chunked (the experiment's prompts are short); when even the last
running request does not fit, SGLang aborts it, the simulator lets it run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

INIT_RATIO = 0.7
MIN_RATIO = INIT_RATIO * 0.14
RATIO_DECAY = (INIT_RATIO - MIN_RATIO) / 600  # per decode step
RETRACT_DECODE_STEPS = 20
CLIP_MAX_NEW_TOKENS = 4096
PAGE = 1  # tokens per page: the one page add_one_req reserves beside each request


@dataclass(frozen=True)
class Seq:
    """A request as SGLang's scheduler counts it: prompt tokens, max new tokens, and tokens
    generated so far (kept across a retraction)."""

    prompt: int
    max_new: int
    generated: int = 0

    @property
    def tokens(self) -> int:
        """KV it holds while running, and what a (re-)prefill computes."""
        return self.prompt + self.generated

    @property
    def left(self) -> int:
        return max(0, self.max_new - self.generated)


def admit(free: int, running: Sequence[Seq], waiting: Sequence[Seq], ratio: float) -> tuple[int, bool]:
    """One prefill pass over ``waiting`` in order, with ``free`` tokens free or evictable:
    how many it takes, and whether it stopped for want of KV (SGLang's ``batch_is_full``)."""
    room = free - sum(min(r.left, CLIP_MAX_NEW_TOKENS) * ratio for r in running)
    for i, w in enumerate(waiting):
        if room <= 0 or w.tokens + min(w.left, CLIP_MAX_NEW_TOKENS) + PAGE >= room:
            return i, True
        room -= w.tokens + min(w.max_new, CLIP_MAX_NEW_TOKENS) + PAGE
    return len(waiting), False


def decode_steps_left(free: int, running: int) -> float:
    """Decode steps the running requests can take before the pool is full (one token each per
    step); unbounded for a single request (never retracted)."""
    if running <= 1:
        return math.inf
    return max(0, free) // running


def retract(free: int, running: Sequence[Seq]) -> list[int]:
    """Indices of ``running`` that ``retract_decode`` retracts when ``free`` tokens do not cover
    one per running request: in retraction order; none when they do."""
    if free >= len(running):
        return []
    keep = sorted(range(len(running)), key=lambda i: (running[i].generated, -running[i].prompt), reverse=True)
    out: list[int] = []
    while len(keep) > 1 and (not out or free < len(keep)):
        i = keep.pop()
        out.append(i)
        free += running[i].tokens
    return out


def ratio_after_retract(kept: Sequence[Seq]) -> float:
    """The new-token ratio SGLang sets after a retraction, from the requests it kept."""
    decoded = sum(r.generated for r in kept) + RETRACT_DECODE_STEPS * len(kept)
    return min(1.0, decoded / (sum(r.max_new for r in kept) + 1))


def decayed(ratio: float, steps: int) -> float:
    """The ratio after ``steps`` decode steps without retraction."""
    return max(MIN_RATIO, ratio - steps * RATIO_DECAY)
