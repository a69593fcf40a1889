"""The liveness policy, pure: stale within the window is alive; beyond it, suspect and probed;
dead only when the probe failed; a probe that answers is repeated one window later."""

from __future__ import annotations

from orchestrator.policy.liveness import LivenessDecision, Observation, Observations, decide

W = 10.0


def one(o: Observation, now: float) -> LivenessDecision | None:
    got = decide(Observations(W, (o,)), now)
    assert len(got) <= 1
    return got[0] if got else None


def test_fresh_or_stale_within_the_window_is_alive() -> None:
    assert one(Observation("a", None), 100.0) is None
    assert one(Observation("a", 95.0), 104.9) is None


def test_stale_beyond_the_window_is_suspect_and_probed_once() -> None:
    d = one(Observation("a", 90.0), 100.0)
    assert d is not None and (d.verdict, d.probe) == ("suspect", True) and "10.0 s" in d.why
    out = one(Observation("a", 90.0, probe_at=100.0), 101.0)
    assert out is not None and (out.verdict, out.probe) == ("suspect", False)  # the probe is out


def test_a_failed_probe_makes_it_dead() -> None:
    d = one(Observation("a", 90.0, probe_at=100.0, probe_ok=False, probe_detail="ReadTimeout"), 102.0)
    assert d is not None and (d.verdict, d.probe) == ("dead", False)
    assert "hung" in d.why and "ReadTimeout" in d.why


def test_a_probe_that_answered_leaves_it_suspect_and_is_repeated_a_window_later() -> None:
    o = Observation("a", 90.0, probe_at=100.0, probe_ok=True)
    d = one(o, 105.0)
    assert d is not None and (d.verdict, d.probe) == ("suspect", False)
    d = one(o, 110.0)
    assert d is not None and (d.verdict, d.probe) == ("suspect", True)


def test_a_probe_from_an_earlier_streak_does_not_count() -> None:
    d = one(Observation("a", 90.0, probe_at=50.0, probe_ok=False), 100.0)
    assert d is not None and (d.verdict, d.probe) == ("suspect", True)


def test_one_decision_per_instance_not_alive() -> None:
    obs = Observations(W, (Observation("a", None), Observation("b", 80.0), Observation("c", 99.0)))
    assert [d.instance_id for d in decide(obs, 100.0)] == ["b"]
