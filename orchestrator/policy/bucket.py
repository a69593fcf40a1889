"""A token bucket: the request-rate limit of one client key. Pure: time is passed in.

A bucket holds up to ``burst`` tokens and gains ``per_s`` of them each second; a request takes
one. ``take`` returns the bucket after the request and, when there was no token, how long
until there is one (the 429's Retry-After); a refused request takes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    per_s: float  # sustained requests per second
    burst: float  # requests that may come at once (at least 1)

    def __post_init__(self) -> None:
        if not self.per_s > 0 or not self.burst >= 1:
            raise ValueError(f"a rate needs per_s > 0 and burst >= 1 (got {self.per_s}, {self.burst})")


@dataclass(frozen=True)
class Bucket:
    tokens: float
    at: float  # when ``tokens`` was counted


def full(rate: Rate, now: float) -> Bucket:
    return Bucket(rate.burst, now)


def take(bucket: Bucket, rate: Rate, now: float) -> tuple[Bucket, float]:
    """(the bucket after one request at ``now``, 0.0 if the request may go, else the seconds
    until a token is there). A clock that went back refills nothing."""
    tokens = min(rate.burst, bucket.tokens + max(0.0, now - bucket.at) * rate.per_s)
    if tokens >= 1.0:
        return Bucket(tokens - 1.0, now), 0.0
    return Bucket(tokens, now), (1.0 - tokens) / rate.per_s
