"""Token rate of one model over a sliding window (the global scheduler's demand signal).

Not a policy but the pure bookkeeping the caller keeps for one: time is always passed in.
Amortised O(1) per event; memory bounded by the events of one window.
"""

from __future__ import annotations

from collections import deque

DEFAULT_WINDOW_S = 60.0  # Prism's demand window: long enough to smooth Gamma bursts (CV 2-4)


class RateWindow:
    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0 (got {window_s})")
        self.window_s = window_s
        self._events: deque[tuple[float, float]] = deque()
        self._sum = 0.0

    def add(self, t: float, amount: float) -> None:
        self._events.append((t, amount))
        self._sum += amount

    def rate(self, now: float) -> float:
        """Amount per second over (now - window, now]."""
        horizon = now - self.window_s
        ev = self._events
        while ev and ev[0][0] <= horizon:
            self._sum -= ev.popleft()[1]
        if not ev:
            self._sum = 0.0  # no float drift once empty
        return max(self._sum, 0.0) / self.window_s

    def last(self) -> float | None:
        return self._events[-1][0] if self._events else None
