from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.config import parse_config
from orchestrator.control.instance import ALLOWED, IllegalTransition, Instance
from orchestrator.types import InstanceState as S

SPEC = parse_config({"models": [{"name": "m", "model_path": "tiny-llama", "placements": [{"gpus": [0]}]}]}).instances[0]


def test_happy_lifecycle_including_park_and_wake() -> None:
    i = Instance(SPEC)
    for s in (S.PENDING, S.STARTING, S.AWAKE, S.PARKING, S.PARKED, S.WAKING, S.AWAKE, S.STOPPED):
        i.to(s, 1.0)
    assert i.state is S.STOPPED
    assert i.history[:3] == [S.STOPPED, S.PENDING, S.STARTING]


@pytest.mark.parametrize("a, b", [(a, b) for a, b in itertools.product(S, S) if b not in ALLOWED.get(a, frozenset())])
def test_every_transition_outside_the_table_raises(a: S, b: S) -> None:
    i = Instance(SPEC, state=a)
    with pytest.raises(IllegalTransition):
        i.to(b, 0.0)
    assert i.state is a


@given(st.lists(st.sampled_from(list(S)), max_size=30))
def test_state_is_always_reachable_through_the_table(steps: list[S]) -> None:
    i = Instance(SPEC)
    for s in steps:
        before = i.state
        try:
            i.to(s, 0.0)
        except IllegalTransition:
            assert i.state is before
        else:
            assert s in ALLOWED[before]


def test_stopped_instance_forgets_its_endpoint() -> None:
    from orchestrator.types import Endpoint

    i = Instance(SPEC, state=S.STARTING)
    i.to(S.AWAKE, 0.0)
    i.endpoint = Endpoint(i.id, "http://x", "m")
    i.to(S.STOPPED, 1.0)
    assert i.endpoint is None and i.view().base_url is None
