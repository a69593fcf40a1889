"""What the local scheduler (admission.py) sees and answers: one GPU group's request queue.

The proxy keeps one queue per GPU group across every model served there and calls
``admit.decide`` on each arrival, completion and wake. Expected prefill times and KV needs
are filled in by the caller (the H100 latency model in orchestrator/perf/model.py, or
measured averages), so the policy itself knows no engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.types import OnLate


@dataclass(frozen=True)
class Pending:
    """One request held in the proxy, not yet sent to an engine."""

    id: str
    model: str
    arrival: float
    deadline: float  # arrival + the model's TTFT SLO
    prefill_s: float  # expected prefill time on this group
    kv_tokens: int  # KV slots the engine must have free to admit it (prompt + max new tokens)
    # the model the client named when it is not ``model`` (a LoRA adapter on its base's server,
    # a pooled model on its pool's): its rule (priority, on_late) applies and a shed names it
    asked: str | None = None

    @property
    def rule_model(self) -> str:
        return self.asked or self.model


@dataclass(frozen=True)
class EngineRoom:
    """One server of the group as the proxy sees it now."""

    server: str
    model: str
    ready_at: float  # when it can take requests: <= now if awake, later if waking
    free_kv_tokens: int  # under its KV limit
    free_slots: int  # requests it may still run (max running - running)


@dataclass(frozen=True)
class ModelRule:
    priority: int = 0  # higher: shed last
    on_late: OnLate = "shed"  # a request that can no longer meet its deadline: 429 or serve late


@dataclass(frozen=True)
class QueueView:
    pending: tuple[Pending, ...]
    engines: tuple[EngineRoom, ...]
    rules: dict[str, ModelRule] = field(default_factory=dict)  # missing model: ModelRule()
    backlog_s: float = 0.0  # prefill work already inside the group's engines, seconds


@dataclass(frozen=True)
class Dispatch:
    request: str
    server: str


@dataclass(frozen=True)
class Shed:
    """A request dropped because its model's TTFT SLO can no longer be met, with the numbers a
    person needs: expected first token = waited + queued + prefill, against ``slo_s``."""

    request: str
    retry_after_s: float  # honest: when the queue ahead of it should have drained
    model: str
    slo_s: float  # the model's TTFT SLO (deadline - arrival)
    waited_s: float  # already spent in the proxy (now - arrival)
    queued_s: float  # still ahead of it: the group's on-time work, or its server's wake
    prefill_s: float  # its own expected prefill
    behind_wake: bool = False  # its model's server is still waking: queued_s includes the wake

    @property
    def expected_ttft_s(self) -> float:
        return self.waited_s + self.queued_s + self.prefill_s

    @property
    def reason(self) -> str:
        behind = "its server's wake and the requests ahead" if self.behind_wake else "other requests on its GPUs"
        return (
            f"model {self.model!r} cannot give a first token within its TTFT SLO of {self.slo_s:.2f} s now:"
            f" it would come after about {self.expected_ttft_s:.2f} s ({self.waited_s:.2f} s already waited"
            f" + {self.queued_s:.2f} s behind {behind} + {self.prefill_s:.2f} s of prefill)"
        )


@dataclass(frozen=True)
class QueueDecision:
    dispatch: tuple[Dispatch, ...] = ()  # send now, in this order
    shed: tuple[Shed, ...] = ()  # answer 429 with Retry-After
    late: tuple[str, ...] = ()  # kept and served after the on-time ones (on_late="serve")
