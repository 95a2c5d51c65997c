"""Watching the event loop's turns: which turn work ran in, and whether a timer (standing
for the media clock's tick) got to run between two pieces of it."""

from __future__ import annotations

import asyncio
from itertools import pairwise


class LoopTurns:
    """Counts the loop's turns (``turn``) and runs a timer due at once every turn
    (``ticks``: the turns it ran in), until ``stop()``."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.turn = 0
        self.ticks: list[int] = []
        self._running = True
        self._count()
        self.loop.call_later(0, self._tick)

    def _count(self) -> None:  # call_soon from a callback: runs once per turn
        self.turn += 1
        if self._running:
            self.loop.call_soon(self._count)

    def _tick(self) -> None:
        self.ticks.append(self.turn)
        if self._running:
            self.loop.call_later(0, self._tick)

    def stop(self) -> None:
        self._running = False

    def assert_timer_ran_between(self, turns: list[int]) -> None:
        """Between any two of these turns (sorted), the timer ran."""
        for t0, t1 in pairwise(sorted(turns)):
            assert any(t0 < t <= t1 for t in self.ticks), (t0, t1, self.ticks)
