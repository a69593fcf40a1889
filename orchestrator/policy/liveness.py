"""Whether an awake engine is hung: stale beyond the liveness window AND a cheap probe failed.

Staleness alone is not enough: a scrape can time out on a busy host, and the proxy's upstream
timeout may be a long generation. So a stale instance is first *suspect*: it is probed
(``GET /model_info``, answered by SGLang's HTTP server even while paused, unlike ``/health``
which runs a generation); only a failed probe makes it *dead* (the loop kills and restarts it).
A probe that answers leaves it suspect; it is probed again one window later while still stale.

Pure: the control loop keeps each awake instance's observations (its clock) and calls ``decide``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["suspect", "dead"]


@dataclass(frozen=True)
class Observation:
    instance_id: str
    stale_since: float | None  # first unanswered scrape or request of the current streak
    probe_at: float | None = None  # when the last probe of this streak was sent
    probe_ok: bool | None = None  # its answer; None while it is out (or none was sent)
    probe_detail: str = ""


@dataclass(frozen=True)
class Observations:
    window_s: float
    instances: tuple[Observation, ...]


@dataclass(frozen=True)
class LivenessDecision:
    instance_id: str
    verdict: Verdict
    probe: bool  # send a probe now
    why: str  # for logs and the instance's error


def decide(obs: Observations, now: float) -> tuple[LivenessDecision, ...]:
    """One decision per instance that is not plainly alive (fresh, or stale within the window)."""
    out = []
    for o in obs.instances:
        if o.stale_since is None or now - o.stale_since < obs.window_s:
            continue
        stale = f"unresponsive for {now - o.stale_since:.1f} s (liveness.window_s {obs.window_s:g})"
        probed = o.probe_at is not None and o.probe_at >= o.stale_since
        if not probed:
            out.append(LivenessDecision(o.instance_id, "suspect", True, f"{stale}; probing"))
        elif o.probe_ok is None:
            out.append(LivenessDecision(o.instance_id, "suspect", False, f"{stale}; probe out"))
        elif not o.probe_ok:
            why = f"hung: {stale} and its probe failed ({o.probe_detail})"
            out.append(LivenessDecision(o.instance_id, "dead", False, why))
        else:
            assert o.probe_at is not None
            again = now - o.probe_at >= obs.window_s
            out.append(LivenessDecision(o.instance_id, "suspect", again, f"{stale}; its probe answered"))
    return tuple(out)
