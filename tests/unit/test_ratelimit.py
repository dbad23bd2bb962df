"""The token bucket of the per-token rate limit."""

from __future__ import annotations

import pytest

from glidein_client.wire.schema import Role
from glidein_server.http.ratelimit import Rate, RateLimiter, RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_rate_holds() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    rate = Rate(per_s=2.0, burst=3)
    assert [limiter.take("t", rate) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("t", rate) == pytest.approx(0.5)  # one request every 0.5 s
    clock.now += 0.5
    assert limiter.take("t", rate) == 0.0
    assert limiter.take("t", rate) > 0
    clock.now += 60  # refills up to the burst, not beyond
    assert [limiter.take("t", rate) for _ in range(4)][-1] > 0


def test_buckets_are_per_key_and_zero_means_no_limit() -> None:
    limiter = RateLimiter(clock=Clock())
    rate = Rate(per_s=1.0, burst=1)
    assert limiter.take("a", rate) == 0.0
    assert limiter.take("b", rate) == 0.0
    assert limiter.take("a", rate) > 0
    assert all(limiter.take("c", Rate(per_s=0, burst=1)) == 0.0 for _ in range(100))


def test_pilots_and_sites_get_room_for_normal_work() -> None:
    limits = RateLimits()
    assert limits.of(Role.PILOT).per_s >= 50  # a pilot syncs and uploads often
    assert limits.of(Role.SITE).burst >= 500  # a site client mints many pilots in one cycle
    assert limits.of(None) is limits.anonymous
