"""The token bucket of a client key's request rate (policy/bucket.py): time passed in."""

from __future__ import annotations

import pytest

from orchestrator.policy.bucket import Bucket, Rate, full, take


def test_a_burst_goes_then_requests_wait_for_the_refill() -> None:
    rate = Rate(per_s=2.0, burst=3.0)
    bucket = full(rate, now=100.0)
    waits = []
    for _ in range(4):
        bucket, wait = take(bucket, rate, 100.0)
        waits.append(wait)
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(0.5)  # one token at 2/s
    bucket, wait = take(bucket, rate, 100.5)
    assert wait == 0.0


def test_a_refused_request_takes_nothing_and_the_bucket_never_overfills() -> None:
    rate = Rate(per_s=1.0, burst=2.0)
    bucket, wait = take(Bucket(0.25, 10.0), rate, 10.0)
    assert bucket.tokens == pytest.approx(0.25) and wait == pytest.approx(0.75)
    bucket, _ = take(Bucket(0.0, 0.0), rate, 1000.0)  # a long pause refills to the burst only
    assert bucket.tokens == pytest.approx(1.0)


def test_a_clock_that_goes_back_refills_nothing() -> None:
    rate = Rate(per_s=1.0, burst=1.0)
    bucket, wait = take(Bucket(0.0, 50.0), rate, 40.0)
    assert wait == pytest.approx(1.0) and bucket.tokens == 0.0


@pytest.mark.parametrize(("per_s", "burst"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.5), (float("nan"), 1.0)])
def test_a_rate_must_be_positive_with_a_burst_of_at_least_one(per_s: float, burst: float) -> None:
    with pytest.raises(ValueError):
        Rate(per_s, burst)
