"""The limit: a revisioned byte count set from outside, and how it is enforced when it falls
below what is in use.

``LimitBox`` is the hand-off between the control-channel thread (``post``) and the scheduler
thread (``take``): a set_limit is accepted or refused at once (stale revisions are ignored),
and applied by the scheduler thread on its next allocator call.

``drain`` is the pure rule for a shrink below usage. SGLang 0.5.17 retracts running requests
when ``available_size()`` cannot hold their next decode step, and *aborts* the last one if even
that does not fit (``ScheduleBatch.retract_decode``). So while the limit is under use:
- the effective limit starts at ``used + slack`` and is ratcheted down as tokens free (it only
  falls): new requests see no room and wait (SGLang's own admission), running ones decode into
  the slack, and once it is spent SGLang retracts some of them (recomputed later, not lost);
- but it never leaves fewer than ``headroom`` units free, so the requests SGLang keeps always
  fit their next step and none is aborted;
- the drain ends when use is back under the target.
The shim never makes an allocation fail.
"""

from __future__ import annotations

import threading
from typing import NamedTuple


class Accepted(NamedTuple):
    applied: bool  # False: revision not newer than the one in force (stale), nothing changed
    limit_bytes: int  # the limit in force after this call
    revision: int


class LimitBox:
    """Thread-safe: ``post`` from any thread, ``take`` from the scheduler thread."""

    def __init__(self, limit_bytes: int, revision: int = 0) -> None:
        if limit_bytes < 0:
            raise ValueError(f"limit must be >= 0 bytes, got {limit_bytes}")
        self._lock = threading.Lock()
        self._limit, self._revision = limit_bytes, revision
        self._pending = True  # the start-up limit still has to be applied

    def post(self, limit_bytes: int, revision: int) -> Accepted:
        if limit_bytes < 0:
            raise ValueError(f"limit must be >= 0 bytes, got {limit_bytes}")
        with self._lock:
            if revision <= self._revision:
                return Accepted(False, self._limit, self._revision)
            self._limit, self._revision, self._pending = limit_bytes, revision, True
            return Accepted(True, limit_bytes, revision)

    def current(self) -> tuple[int, int]:
        with self._lock:
            return self._limit, self._revision

    def take(self) -> tuple[int, int] | None:
        """The limit to apply, once per accepted post (None: nothing new)."""
        with self._lock:
            if not self._pending:
                return None
            self._pending = False
            return self._limit, self._revision


# Units always left free while draining: one decode step of up to this many requests (page
# size 1), so SGLang retracts down to a batch that fits instead of aborting its last request.
DRAIN_HEADROOM_UNITS = 64


class Drain(NamedTuple):
    effective: int  # units SGLang may hold in total now
    floor: int | None  # ratchet to carry to the next call (None: not draining)


def drain(target: int, used: int, floor: int | None, slack: int, headroom: int = DRAIN_HEADROOM_UNITS) -> Drain:
    """Effective limit in units. ``target``: what the limit allows; ``used``: units in use;
    ``floor``: the previous call's ratchet; ``slack``: room given to running requests when a
    drain starts; ``headroom``: room never taken away while draining. Pure."""
    if used <= target:
        return Drain(target, None)
    ratchet = used + slack if floor is None else min(floor, used + slack)
    return Drain(max(target, ratchet, used + headroom), ratchet)
