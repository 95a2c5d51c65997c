"""Per-source token bucket with bounded memory (gateway.sip.limits)."""

from __future__ import annotations

import pytest

from gateway.sip.limits import RateLimiter


def test_burst_then_steady_rate() -> None:
    rl = RateLimiter(rate=10.0, burst=5)
    assert [rl.allow("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert rl.dropped == 2
    # Then exactly one request per 0.1 s passes, and a second one within the same tick does not.
    now = 0.0
    for _ in range(100):
        now += 0.1
        assert rl.allow("a", now)
        assert not rl.allow("a", now)
    assert rl.dropped == 102
    # An idle period refills up to the burst and no further.
    now += 60.0
    assert [rl.allow("a", now) for _ in range(6)] == [True] * 5 + [False]


def test_sources_are_independent() -> None:
    rl = RateLimiter(rate=1.0, burst=2)
    assert [rl.allow("10.0.0.1:5060", 0.0) for _ in range(3)] == [True, True, False]
    assert [rl.allow("10.0.0.2:5060", 0.0) for _ in range(3)] == [True, True, False]
    assert rl.allow("10.0.0.1:5060", 1.0)
    assert not rl.allow("10.0.0.1:5060", 1.0)
    assert rl.dropped == 3


def test_clock_stepping_back_grants_nothing() -> None:
    rl = RateLimiter(rate=1.0, burst=1)
    assert rl.allow("a", 100.0)
    assert not rl.allow("a", 50.0)
    assert not rl.allow("a", 100.5)  # the step back did not count as elapsed time
    assert rl.allow("a", 101.0)


def test_memory_bound_with_many_sources() -> None:
    rl = RateLimiter(rate=1.0, burst=1, max_sources=1000)
    for i in range(100_000):
        assert rl.allow(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 0.0)
        assert len(rl) <= 1000
    assert len(rl) == 1000
    assert rl.dropped == 0
    # The most recently seen sources are still limited; the oldest were forgotten.
    assert not rl.allow("10.1.134.159", 0.0)  # i = 99_999
    assert rl.allow("10.0.0.0", 0.0)  # i = 0, evicted: a fresh bucket


def test_recently_seen_source_survives_eviction() -> None:
    rl = RateLimiter(rate=1.0, burst=1, max_sources=2)
    assert rl.allow("a", 0.0)
    assert rl.allow("b", 0.0)
    assert not rl.allow("a", 0.0)  # "a" is now the most recently seen
    assert rl.allow("c", 0.0)  # evicts "b"
    assert not rl.allow("a", 0.0)
    assert len(rl) == 2


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_unlimited(rate: float) -> None:
    rl = RateLimiter(rate=rate, burst=0)
    assert all(rl.allow(f"s{i % 7}", 0.0) for i in range(10_000))
    assert rl.dropped == 0
    assert len(rl) == 0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=1.0, burst=0)
    with pytest.raises(ValueError):
        RateLimiter(rate=1.0, burst=1, max_sources=0)
