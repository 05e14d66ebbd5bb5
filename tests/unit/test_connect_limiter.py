"""The per-address token bucket for WebSocket connects, on a fake clock."""

from __future__ import annotations

import pytest

from service.node import context
from service.node.context import ConnectLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    # Only the limiter's module sees the fake clock, not the event loop or pytest.
    monkeypatch.setattr(context, "time", fake)
    return fake


def allowed(limiter: ConnectLimiter, address: str, attempts: int) -> int:
    return sum(limiter.allow(address) for _ in range(attempts))


def test_a_new_address_gets_a_burst_of_twice_the_rate(clock: FakeClock) -> None:
    limiter = ConnectLimiter(rate_per_s=4)
    assert limiter.burst == 8
    assert allowed(limiter, "10.0.0.1", 20) == 8
    assert not limiter.allow("10.0.0.1")


def test_tokens_refill_at_the_rate(clock: FakeClock) -> None:
    limiter = ConnectLimiter(rate_per_s=4)
    assert allowed(limiter, "10.0.0.1", 8) == 8
    assert not limiter.allow("10.0.0.1")
    clock.now += 0.25
    assert limiter.allow("10.0.0.1")
    assert not limiter.allow("10.0.0.1")
    clock.now += 1.0
    assert allowed(limiter, "10.0.0.1", 10) == 4


def test_refill_is_capped_at_the_burst(clock: FakeClock) -> None:
    limiter = ConnectLimiter(rate_per_s=4)
    limiter.allow("10.0.0.1")
    clock.now += 3600
    assert allowed(limiter, "10.0.0.1", 100) == 8


def test_refused_attempts_do_not_spend_tokens(clock: FakeClock) -> None:
    limiter = ConnectLimiter(rate_per_s=4)
    allowed(limiter, "10.0.0.1", 8)
    for _ in range(50):
        assert not limiter.allow("10.0.0.1")
    clock.now += 0.25
    assert limiter.allow("10.0.0.1")


def test_addresses_are_limited_independently(clock: FakeClock) -> None:
    limiter = ConnectLimiter(rate_per_s=1)
    assert allowed(limiter, "10.0.0.1", 5) == 2
    assert allowed(limiter, "10.0.0.2", 5) == 2
    assert allowed(limiter, "2001:db8::1", 5) == 2


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
def test_slow_rates_still_allow_one_connect(clock: FakeClock, rate: float) -> None:
    limiter = ConnectLimiter(rate_per_s=rate)
    assert limiter.burst == 1.0
    assert limiter.allow("10.0.0.1")
    assert not limiter.allow("10.0.0.1")
    clock.now += 1 / rate
    assert limiter.allow("10.0.0.1")


def test_default_rate_of_the_settings(clock: FakeClock) -> None:
    limiter = ConnectLimiter(rate_per_s=50.0)
    assert allowed(limiter, "10.0.0.1", 1000) == 100


def test_remembers_a_bounded_number_of_addresses(clock: FakeClock) -> None:
    limiter = ConnectLimiter(rate_per_s=1, max_addresses=3)
    for i in range(10):
        limiter.allow(f"10.0.0.{i}")
        assert len(limiter._buckets) <= 3
    assert list(limiter._buckets) == ["10.0.0.7", "10.0.0.8", "10.0.0.9"]


def test_the_least_recently_seen_address_is_forgotten_first(clock: FakeClock) -> None:
    limiter = ConnectLimiter(rate_per_s=1, max_addresses=2)
    assert allowed(limiter, "a", 2) == 2
    limiter.allow("b")
    limiter.allow("a")  # refused, but "a" is now the most recently seen
    limiter.allow("c")  # forgets "b"
    assert set(limiter._buckets) == {"a", "c"}
    assert not limiter.allow("a")  # "a" still has an empty bucket
    assert limiter.allow("b")  # a forgotten address starts with a full bucket
