"""How late the media clock's ticks run: the last second, and every tick since start.

Every listener's next packet leaves on a tick, so a late tick is audio late for everyone.
The clock records each tick's lateness (seconds after its deadline) here. Two views:

* ``recent``: the last 50 ticks (one second), what admission control decides on;
* ``bins``: a count per 0.1 ms of lateness since start, what ``/metrics`` (a histogram),
  the API and ``bench/tick_lateness.py`` read. Cumulative counts can be subtracted, so a
  benchmark gets the exact distribution of any interval from two readings, without
  keeping every tick: a tick costs one dict increment.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

#: Width of a bin, seconds.
BIN_S = 0.0001
BINS_PER_S = 10_000
#: Lateness is counted up to this (a later tick is a stall: the clock jumps, see clock.py).
MAX_BIN = 10_000  # 1 s
#: Upper bounds of the /metrics histogram's buckets, seconds (+Inf is implied).
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
           0.1, 0.2, 0.5, 1.0)


class Lateness:
    def __init__(self, recent: int = 50) -> None:
        self.recent: deque[float] = deque(maxlen=recent)
        self.bins: dict[int, int] = {}  # 0.1 ms bin -> ticks
        self.count = 0
        self.sum = 0.0

    def record(self, late: float) -> None:
        self.recent.append(late)
        b = min(int(late * BINS_PER_S), MAX_BIN)
        self.bins[b] = self.bins.get(b, 0) + 1
        self.count += 1
        self.sum += late

    def cumulative(self, bounds: Iterable[float] = BUCKETS) -> list[tuple[float, int]]:
        """(upper bound, ticks no later than it) per bound, then (+Inf, all ticks)."""
        items = sorted(self.bins.items())
        out: list[tuple[float, int]] = []
        total = i = 0
        for bound in bounds:
            while i < len(items) and (items[i][0] + 1) * BIN_S <= bound + 1e-12:
                total += items[i][1]
                i += 1
            out.append((bound, total))
        out.append((float("inf"), self.count))
        return out


def quantile_ms(bins: Mapping[int, int], q: float) -> float:
    """The ``q`` quantile of a bin histogram (or a difference of two), in ms: the upper
    edge of the bin it falls in (0.1 ms resolution)."""
    total = sum(bins.values())
    if total <= 0:
        return 0.0
    rank = q * total
    seen = 0
    for b, n in sorted(bins.items()):
        seen += n
        if seen >= rank and n > 0:
            return round((b + 1) * BIN_S * 1000, 1)
    return round((max(bins) + 1) * BIN_S * 1000, 1)


def recent_quantile_ms(recent: Iterable[float], q: float) -> float:
    values = sorted(recent)
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(len(values) * q))] * 1000
