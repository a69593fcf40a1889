"""What the dashboard remembers, bounded: each instance's recent state changes (fed by the
supervisor's observers, as the metrics are) and the global scheduler's recent decisions (read
off its log records, so that the control loop keeps no dashboard state of its own).

Bounds: at most ``per_instance`` changes per instance and ``decisions`` decisions; changes older
than ``window_s`` are dropped, except the last one before the window (it says what state the
window starts in). The clock is injected (wall time by default: the page shows clock times).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from orchestrator.types import InstanceView

WINDOW_S = 600.0  # the timeline shows the last ten minutes
PER_INSTANCE = 256  # changes kept per instance (a model that flaps faster loses its oldest)
DECISIONS = 50
RECENT_MOVES = 5  # wake and park times kept per instance
MOVES = ("waking", "parking")  # the stays whose durations are wake and park times
# The loggers the scheduler's decisions are written to ("scheduler: activation of m: why",
# "scheduler: m waits: why", "scheduler: abandoned ..."): control/plans.py and control/loop.py.
SCHEDULER_LOGGERS = ("chimera.scheduler", "chimera.control")
DECISION_PREFIX = "scheduler: "

Change = tuple[float, str]  # (time, shown state: a state value, or "draining")


class History:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        window_s: float = WINDOW_S,
        per_instance: int = PER_INSTANCE,
        decisions: int = DECISIONS,
    ) -> None:
        self._clock = clock
        self.window_s = window_s
        self._per_instance = per_instance
        self._changes: dict[str, deque[Change]] = {}
        self._moves: dict[tuple[str, str], deque[float]] = {}
        self._decisions: deque[Change] = deque(maxlen=decisions)

    def seed(self, views: Iterable[InstanceView]) -> None:
        """The states at start (before any observer call)."""
        for v in views:
            self.observe(v)

    def observe(self, view: InstanceView) -> None:
        """A supervisor observer: record the instance's state if it changed."""
        now = self._clock()
        changes = self._changes.setdefault(view.id, deque(maxlen=self._per_instance))
        shown = view.shown_state  # "draining" for an awake instance a plan drains
        if changes and changes[-1][1] == shown:
            return
        if changes and changes[-1][1] in MOVES:  # a wake or park ended: keep how long it took
            moves = self._moves.setdefault((view.id, changes[-1][1]), deque(maxlen=RECENT_MOVES))
            moves.append(round(now - changes[-1][0], 3))
        changes.append((now, shown))
        # keep one change before the window: the state the window starts in
        while len(changes) > 1 and changes[1][0] < now - self.window_s:
            changes.popleft()

    def decide(self, message: str) -> None:
        """One scheduler decision, as its log line says it."""
        self._decisions.append((self._clock(), message.removeprefix(DECISION_PREFIX)))

    def timeline(self, instance_id: str) -> list[Change]:
        return list(self._changes.get(instance_id, ()))

    def moves(self, instance_id: str, state: str) -> list[float]:
        """How long its last RECENT_MOVES finished stays in ``state`` (one of MOVES) lasted,
        oldest first: its recent wake (``waking``) or park (``parking``) times."""
        return list(self._moves.get((instance_id, state), ()))

    def decisions(self) -> list[Change]:
        """Newest first."""
        return list(reversed(self._decisions))

    def attach(self) -> Callable[[], None]:
        """Listen to the scheduler's log records; returns the function that stops listening."""
        handler = _DecisionHandler(self)
        loggers = [logging.getLogger(name) for name in SCHEDULER_LOGGERS]
        for lg in loggers:
            lg.addHandler(handler)

        def detach() -> None:
            for lg in loggers:
                lg.removeHandler(handler)

        return detach


class _DecisionHandler(logging.Handler):
    """Keeps the records that are scheduler decisions (their message starts "scheduler: ").
    Sees only what the log level lets through: ``--log-level warning`` hides activations."""

    def __init__(self, history: History) -> None:
        super().__init__(logging.INFO)
        self._history = history

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record must never break the scheduler's logging
            return
        if message.startswith(DECISION_PREFIX):
            self._history.decide(message)
