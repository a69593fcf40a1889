"""Local scheduler scenarios (orchestrator/policy/admission/admit.py): EDF, KV room, shedding."""

from __future__ import annotations

import pytest

from orchestrator.policy.admission.admit import MIN_RETRY_AFTER_S, decide
from orchestrator.policy.admission.queueing import EngineRoom, ModelRule, Pending, QueueView

NOW = 100.0


def req(i: str, model: str, deadline: float, prefill: float = 0.01, kv: int = 100, arrival: float = NOW) -> Pending:
    return Pending(i, model, arrival, deadline, prefill, kv)


def eng(model: str, kv: int = 10_000, slots: int = 64, ready: float = NOW) -> EngineRoom:
    return EngineRoom(f"{model}@0", model, ready, kv, slots)


def test_admission__dispatches_across_models_in_deadline_order() -> None:
    v = QueueView((req("1", "a", NOW + 3), req("2", "b", NOW + 1), req("3", "a", NOW + 2)), (eng("a"), eng("b")))
    d = decide(v, NOW)
    assert [x.request for x in d.dispatch] == ["2", "3", "1"]
    assert d.shed == () and d.late == ()


def test_admission__admits_only_while_the_engine_has_kv_room_and_slots() -> None:
    v = QueueView(
        (req("1", "a", NOW + 1, kv=600), req("2", "a", NOW + 2, kv=600), req("3", "b", NOW + 3, kv=600)),
        (eng("a", kv=1000), eng("b", kv=1000, slots=0)),
    )
    d = decide(v, NOW)
    assert [x.request for x in d.dispatch] == ["1"]  # 2 waits for KV, 3 for a slot


def test_admission__infeasible_deadlines_shed_the_longest_prefill_first() -> None:
    v = QueueView(
        (
            req("short1", "a", NOW + 0.5, prefill=0.2),
            req("long", "a", NOW + 0.6, prefill=0.5),
            req("short2", "a", NOW + 0.7, prefill=0.2),
        ),
        (eng("a"),),
    )
    d = decide(v, NOW)
    assert [s.request for s in d.shed] == ["long"]
    assert [x.request for x in d.dispatch] == ["short1", "short2"]
    # honest Retry-After: the on-time work ahead (0.4 s) rounded up to the one-second minimum
    assert d.shed[0].retry_after_s == MIN_RETRY_AFTER_S and "TTFT" in d.shed[0].reason


def test_admission__shed_reason_gives_the_numbers_a_person_needs() -> None:
    """The issue's case: 0.19 s of work ahead of a 0.25 s deadline used to read as feasible.
    The request's own prefill and the time it already waited are what make it late."""
    v = QueueView((req("r", "llama", NOW + 0.21, prefill=0.08, arrival=NOW - 0.04),), (eng("llama"),), backlog_s=0.19)
    (s,) = decide(v, NOW).shed
    assert (s.model, s.slo_s, s.behind_wake) == ("llama", pytest.approx(0.25), False)
    assert (s.waited_s, s.queued_s, s.prefill_s) == (pytest.approx(0.04), pytest.approx(0.19), 0.08)
    assert s.expected_ttft_s == pytest.approx(0.31)
    assert s.reason == (
        "model 'llama' cannot give a first token within its TTFT SLO of 0.25 s now: it would come after"
        " about 0.31 s (0.04 s already waited + 0.19 s behind other requests on its GPUs + 0.08 s of prefill)"
    )


def test_admission__retry_after_covers_the_backlog() -> None:
    v = QueueView((req("1", "a", NOW + 0.5, prefill=0.3),), (eng("a"),), backlog_s=4.0)
    (s,) = decide(v, NOW).shed
    assert 4.0 <= s.retry_after_s < 4.5


def test_admission__serve_late_policy_keeps_the_request_after_on_time_ones() -> None:
    rules = {"a": ModelRule(on_late="serve")}
    v = QueueView(
        (req("late", "a", NOW + 0.1, prefill=0.5), req("ok", "a", NOW + 1.0, prefill=0.1)), (eng("a"),), rules
    )
    d = decide(v, NOW)
    assert d.late == ("late",) and d.shed == ()
    assert [x.request for x in d.dispatch] == ["ok", "late"]


def test_admission__priority_models_are_shed_last() -> None:
    rules = {"vip": ModelRule(priority=1)}
    v = QueueView(
        (req("v", "vip", NOW + 0.3, prefill=0.1), req("p", "pleb", NOW + 0.3, prefill=0.25)),
        (eng("vip"), eng("pleb")),
        rules,
    )
    assert [s.request for s in decide(v, NOW).shed] == ["p"]
    v2 = QueueView(
        (req("v", "vip", NOW + 0.3, prefill=0.25), req("p", "pleb", NOW + 0.3, prefill=0.1)),
        (eng("vip"), eng("pleb")),
        rules,
    )
    assert [s.request for s in decide(v2, NOW).shed] == ["p"]  # even though vip's job is longer


def test_admission__waking_engine_holds_requests_and_counts_its_wake() -> None:
    v = QueueView(
        (req("1", "a", NOW + 1.0, prefill=0.1), req("2", "a", NOW + 0.3, prefill=0.1)), (eng("a", ready=NOW + 0.5),)
    )
    d = decide(v, NOW)
    assert d.dispatch == ()
    assert [s.request for s in d.shed] == ["2"]  # it would start at 0.5 s, past its 0.3 s deadline
    (s,) = d.shed
    assert s.behind_wake and s.queued_s == pytest.approx(0.6)  # the wake, then request 1's prefill
    assert "behind its server's wake and the requests ahead" in s.reason


def test_admission__requests_of_unplaced_models_are_left_to_the_global_scheduler() -> None:
    v = QueueView((req("1", "nowhere", NOW - 5),), (eng("a"),))
    assert decide(v, NOW) == decide(QueueView((), (eng("a"),)), NOW)


def test_admission__an_adapter_on_its_base_server_keeps_its_own_priority_and_on_late() -> None:
    """A LoRA adapter's (or a pooled model's) request queues for its base's server but is shed,
    served late and kept by its own rule; a shed names the adapter."""
    # only one of the two fits its deadline; among equal priorities the longer prefill ("s") goes
    late = (req("b", "base", NOW + 0.5, prefill=0.4), Pending("s", "base", NOW, NOW + 0.5, 0.45, 100, asked="sql"))
    rules = {"base": ModelRule(priority=0, on_late="shed"), "sql": ModelRule(priority=0, on_late="serve")}
    d = decide(QueueView(late, (eng("base"),), rules), NOW)
    assert d.late == ("s",) and [s.request for s in d.shed] == []  # "b" on time, "s" served late
    rules = {"base": ModelRule(priority=1, on_late="shed"), "sql": ModelRule(priority=0, on_late="shed")}
    d = decide(QueueView(late, (eng("base"),), rules), NOW)
    assert [(s.request, s.model) for s in d.shed] == [("s", "sql")]  # the base's priority wins
    rules = {"base": ModelRule(priority=0, on_late="shed"), "sql": ModelRule(priority=1, on_late="shed")}
    d = decide(QueueView(late, (eng("base"),), rules), NOW)
    assert [(s.request, s.model) for s in d.shed] == [("b", "base")]  # the adapter's own priority
    assert [x.request for x in d.dispatch] == ["s"]
