"""The media clock's lateness record: recent window, 0.1 ms bins, histogram buckets."""

from __future__ import annotations

from gateway.core.lateness import Lateness, quantile_ms, recent_quantile_ms


def test_bins_histogram_and_quantiles():
    late = Lateness(recent=50)
    for _ in range(98):
        late.record(0.00012)  # bin 1 (0.1-0.2 ms)
    late.record(0.0042)  # bin 42
    late.record(2.5)  # a stall: counted in the last bin (1 s)
    assert late.bins == {1: 98, 42: 1, 10_000: 1}
    assert late.count == 100 and abs(late.sum - (98 * 0.00012 + 0.0042 + 2.5)) < 1e-9
    buckets = dict(late.cumulative((0.0005, 0.005, 1.0)))
    assert buckets == {0.0005: 98, 0.005: 99, 1.0: 99, float("inf"): 100}
    assert quantile_ms(late.bins, 0.5) == 0.2  # upper edge of its bin
    assert quantile_ms(late.bins, 0.99) == 4.3
    # the difference of two readings is the distribution between them
    before = dict(late.bins)
    late.record(0.0071)
    diff = {b: n - before.get(b, 0) for b, n in late.bins.items() if n - before.get(b, 0)}
    assert diff == {71: 1} and quantile_ms(diff, 0.99) == 7.2
    assert len(late.recent) == 50 and late.recent[-1] == 0.0071
    assert recent_quantile_ms(late.recent, 0.99) == 2500.0
    assert recent_quantile_ms([], 0.99) == 0.0
