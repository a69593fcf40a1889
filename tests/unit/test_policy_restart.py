"""The restart policy (pure): exponential backoff, a cap, and giving up after N failures in a
window."""

from __future__ import annotations

import pytest

from orchestrator.config import ConfigError, RestartLimits, parse_config
from orchestrator.policy import restart

LIM = RestartLimits(backoff_s=1.0, max_backoff_s=5.0, max_failures=5, window_s=60.0)


def test_backoff_doubles_per_failure_in_the_window_and_is_capped() -> None:
    delays = []
    failures: list[float] = []
    for now in (10.0, 11.0, 13.0, 17.0):
        failures.append(now)
        d = restart.decide(failures, LIM, now)
        assert d.action == "restart"
        delays.append(d.at - now)
    assert delays == [1.0, 2.0, 4.0, 5.0]  # 8 s capped at max_backoff_s


def test_the_nth_failure_in_the_window_gives_up_with_a_readable_reason() -> None:
    d = restart.decide([0.0, 1.0, 3.0, 7.0, 12.0], LIM, 12.0)
    assert d.action == "give_up" and d.failures == 5
    assert "gave up after 5 failures within 60 s" in d.why


def test_failures_older_than_the_window_are_forgotten() -> None:
    old = [0.0, 1.0, 3.0, 7.0]
    d = restart.decide([*old, 100.0], LIM, 100.0)
    assert d.action == "restart" and d.failures == 1 and d.at == 101.0
    assert restart.recent([*old, 100.0], LIM, 100.0) == [100.0]


def test_one_allowed_failure_gives_up_at_once() -> None:
    d = restart.decide([5.0], RestartLimits(max_failures=1), 5.0)
    assert d.action == "give_up"


def test_placements_file_restart_section() -> None:
    base = {"models": [{"name": "a", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]}]}
    assert parse_config(base).restart == RestartLimits()
    cfg = parse_config({**base, "restart": {"backoff_s": 0.5, "max_failures": 3, "window_s": 30}})
    assert cfg.restart == RestartLimits(0.5, 30.0, 3, 30.0)
    with pytest.raises(ConfigError, match=r"restart.max_backoff_s: must be at least"):
        parse_config({**base, "restart": {"backoff_s": 10, "max_backoff_s": 2}})
    with pytest.raises(ConfigError, match=r"restart.max_failures"):
        parse_config({**base, "restart": {"max_failures": 0}})
