"""One engine instance's lifecycle record, owned by the control loop (never mutated elsewhere).

Transitions are a closed table: anything else raises IllegalTransition, so an impossible
lifecycle (say, waking an instance that is starting) cannot happen silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config import InstanceSpec
from orchestrator.types import Endpoint, InstanceState, InstanceView

S = InstanceState

ALLOWED: dict[InstanceState, frozenset[InstanceState]] = {
    S.STOPPED: frozenset({S.PENDING}),
    S.PENDING: frozenset({S.STARTING, S.STOPPED}),
    S.STARTING: frozenset({S.AWAKE, S.BACKOFF, S.FAILED, S.STOPPED}),
    S.AWAKE: frozenset({S.PARKING, S.BACKOFF, S.FAILED, S.STOPPED}),
    S.PARKING: frozenset({S.PARKED, S.AWAKE, S.BACKOFF, S.FAILED, S.STOPPED}),
    S.PARKED: frozenset({S.WAKING, S.BACKOFF, S.FAILED, S.STOPPED}),
    S.WAKING: frozenset({S.AWAKE, S.BACKOFF, S.FAILED, S.STOPPED}),
    # its restart is due (back in the start-up queue) or restarts gave up
    S.BACKOFF: frozenset({S.PENDING, S.FAILED, S.STOPPED}),
    S.FAILED: frozenset({S.PENDING, S.STOPPED}),
}


class IllegalTransition(RuntimeError):
    """A bug: the control loop tried a transition the lifecycle does not have."""


@dataclass
class Instance:
    spec: InstanceSpec
    state: InstanceState = S.STOPPED
    endpoint: Endpoint | None = None
    error: str | None = None
    in_flight: int = 0
    last_used: float = 0.0  # control-loop clock; idle eviction (time-sharing) reads it
    since: float = 0.0  # when the current state was entered
    parked_once: bool = False  # the first park (slow: allocates SGLang's pinned backup) is done
    # Global scheduler (mode full): a plan's victim or migration source, awake but taking no new
    # requests, parked with this reason once nothing is in flight; shown to policies as parking.
    draining: str | None = None
    claimed: bool = False  # parked, reserved as a plan's wake target; shown to policies as waking
    history: list[InstanceState] = field(default_factory=list)
    # Restarts (policy/restart.py): failure times within the window, when the next attempt is
    # due while in BACKOFF, and the reason label of the failure being retried.
    failures: list[float] = field(default_factory=list)
    retry_at: float | None = None
    restart_reason: str = ""
    # Liveness (control/liveness.py), while awake: the current stale streak, its probe, and why
    # the instance was judged hung (it takes no request while its kill is under way).
    stale_since: float | None = None
    stale_why: str = ""
    probe_at: float | None = None
    probe_ok: bool | None = None
    probe_detail: str = ""
    hung: str | None = None
    # The GPUs it runs on when they are not its placement's (events.Relocated); the loop is the
    # one owner of where an instance counts, everything else reads it from its view.
    moved_to: tuple[int, ...] | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def model_name(self) -> str:
        return self.spec.model.name

    @property
    def gpus(self) -> tuple[int, ...]:
        return self.moved_to if self.moved_to is not None else self.spec.gpus

    def to(self, new: InstanceState, now: float) -> None:
        if new not in ALLOWED.get(self.state, frozenset()):
            raise IllegalTransition(f"{self.id}: {self.state} -> {new} is not a lifecycle step")
        self.history.append(self.state)
        self.state = new
        self.since = now
        if new is not S.AWAKE:
            self.draining = None
        if new is not S.PARKED:
            self.claimed = False
        if new is not S.BACKOFF:
            self.retry_at = None
        self.stale_since, self.probe_at, self.probe_ok, self.hung = None, None, None, None
        if new in (S.STOPPED, S.FAILED, S.PENDING, S.BACKOFF):  # a parked instance keeps its address
            self.endpoint = None

    def view(self, wake_due: bool = False) -> InstanceView:
        """``wake_due``: the plan executor's (plans.Plans.wake_due), which this record does not keep."""
        return InstanceView(
            id=self.id,
            model=self.spec.model.name,
            gpus=self.gpus,
            state=self.state,
            base_url=self.endpoint.base_url if self.endpoint else None,
            error=self.error,
            draining=self.draining,
            wake_due=wake_due,
        )
