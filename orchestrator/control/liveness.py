"""Hung-engine detection on the control loop's side: keeps each awake instance's liveness
observations (on its ``Instance``), asks the pure policy (policy/liveness.py) and acts through
``Effects``: ``probe`` a suspect, ``kill`` a dead one. Only the loop calls it (it owns the
instances); the killed engine's ``Exited`` then takes the restart-with-backoff path (reason
``hung``), and its in-flight requests get the proxy's usual error as their connections close.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from orchestrator.config import LivenessLimits
from orchestrator.control.effects import Effects
from orchestrator.control.events import Probed, Responsive, Unresponsive
from orchestrator.control.instance import Instance
from orchestrator.policy import liveness
from orchestrator.types import InstanceState

log = logging.getLogger("chimera.liveness")


class Liveness:
    def __init__(self, limits: LivenessLimits, effects: Effects) -> None:
        self.limits = limits
        self._fx = effects

    def note(self, inst: Instance, ev: Unresponsive | Responsive | Probed, now: float) -> None:
        """Record one observation of an awake instance (others are stale news: ignored)."""
        if inst.state is not InstanceState.AWAKE or inst.hung is not None:
            return
        if isinstance(ev, Unresponsive):
            stale_s = self.limits.window_s if ev.stale_s is None else ev.stale_s
            since = now - stale_s
            if inst.stale_since is None or since < inst.stale_since:
                inst.stale_since, inst.stale_why = since, ev.detail
                log.warning("%s: unresponsive: %s", inst.id, ev.detail)
        elif isinstance(ev, Responsive):
            if inst.stale_since is not None:
                log.info("%s: answers again", inst.id)
            inst.stale_since, inst.probe_at, inst.probe_ok = None, None, None
        elif inst.probe_at is not None and inst.probe_ok is None:
            inst.probe_ok, inst.probe_detail = ev.ok, ev.detail

    def check(self, instances: Iterable[Instance], now: float) -> None:
        """Probe suspects, kill the dead (awake instances only: a parked SGLang server answers
        nothing that generates, and a starting one has its own readiness timeout)."""
        awake = {i.id: i for i in instances if i.state is InstanceState.AWAKE and i.hung is None}
        obs = liveness.Observations(
            self.limits.window_s,
            tuple(
                liveness.Observation(i.id, i.stale_since, i.probe_at, i.probe_ok, i.probe_detail)
                for i in awake.values()
                if i.stale_since is not None
            ),
        )
        for d in liveness.decide(obs, now):
            inst = awake[d.instance_id]
            if d.verdict == "dead":
                inst.hung = f"{d.why}; last: {inst.stale_why}"
                log.error("%s: %s; killing it (restarted after a backoff)", inst.id, inst.hung)
                self._fx.kill(inst.spec, "hung")
            elif d.probe:
                inst.probe_at, inst.probe_ok = now, None
                log.warning("%s: %s", inst.id, d.why)
                self._fx.probe(inst.spec, self.limits.probe_timeout_s)
