"""Event-loop lag: how late a task that sleeps a fixed interval wakes up.

Everything real-time in the gateway (the media clock, the encoders, every socket) shares
one event loop, so a callback that blocks it delays them all. The monitor sleeps
``interval`` seconds in a loop and records the oversleep: near zero on a healthy loop,
the blocking time when something held the loop. It keeps the last value, the largest
over a sliding window and histogram buckets (cumulative, Prometheus style) without
depending on any metrics library.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import deque

#: Upper bounds of the histogram buckets, seconds (+Inf is implied).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopLagMonitor:
    def __init__(self, interval: float = 0.1, window_s: float = 60.0,
                 buckets: tuple[float, ...] = BUCKETS) -> None:
        self.interval = interval
        self.buckets = buckets
        self.last = 0.0  # lag of the latest wake-up, seconds
        self.count = 0
        self.sum = 0.0
        self._counts = [0] * (len(buckets) + 1)  # per bucket, the last one is +Inf
        self._recent: deque[float] = deque(maxlen=max(1, round(window_s / interval)))
        self._task: asyncio.Task[None] | None = None

    @property
    def max(self) -> float:
        """The largest lag over the window (60 s by default)."""
        return max(self._recent, default=0.0)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def observe(self, lag: float) -> None:
        self.last = lag
        self.count += 1
        self.sum += lag
        self._counts[bisect.bisect_left(self.buckets, lag)] += 1
        self._recent.append(lag)

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) for each bucket, ending with +Inf."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.buckets, float("inf")), self._counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, loop.time() - started - self.interval))
