"""Media clocks: what decides when every stream gets its next 20 ms frame.

The registry hands its clock a target to ``tick()`` once per frame of media time.
``RealTimeClock`` follows the event loop's time (the gateway). ``SteppedClock`` ticks only
when a test calls ``step()`` and, between ticks, lets the loop run every consumer until it
has read the frame, so a test checks audio by frame index instead of sleeping through it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from .audio import FRAME_SECONDS
from .first_in_line import wait_until
from .lateness import Lateness

log = logging.getLogger(__name__)

#: If the event loop stalls longer than this, the clock jumps instead of bursting frames.
MAX_CATCH_UP_FRAMES = 10
#: How long after the start of each 20 ms period the streams fed by another node of the
#: cluster are written: time for the frame the other node wrote at the start of the same
#: period (its clock is on the same wall-clock grid) to cross NATS.
REMOTE_PHASE_S = 0.010
#: Largest correction of the clock's phase toward the wall-clock grid, per second.
ALIGN_STEP_S = 0.0005


class Phase(enum.Enum):
    """Which streams a tick writes: all of them, or one of the period's two phases."""

    ALL = "all"
    LOCAL = "local"  # at the period's start: every stream not fed by another node
    REMOTE = "remote"  # REMOTE_PHASE_S later: the streams fed by another node


class Ticked(Protocol):
    """What a clock drives (the stream registry)."""

    def tick(self, phase: Phase = Phase.ALL) -> None:
        """Write one frame on every stream (of ``phase``)."""

    def skip(self, frames: int) -> None:
        """Media time jumped ``frames`` ticks (the event loop stalled)."""

    def behind(self, ignore: Collection[Any] = ()) -> list[str]:
        """Streams with a reader (not in ``ignore``) that has not read the newest item."""


class MediaClock(Protocol):
    #: Ticks skipped because the event loop stalled (always 0 for a stepped clock).
    late_ticks: int
    #: Lateness of the ticks: recent ones and a histogram (always 0 for a stepped clock).
    lateness: Lateness

    async def run(self, target: Ticked) -> None:
        """Tick ``target`` until cancelled."""

    def until_tick(self) -> float:
        """Seconds until the next period starts (inf if unknown): work that can wait
        does not start just before it (gateway/core/cpu_budget.py)."""


class RealTimeClock:
    """One period every 20 ms of the event loop's time; a stall is skipped, not burst.

    Periods start on the wall-clock grid (multiples of 20 ms of ``time.time()``), so the
    nodes of a cluster, whose clocks NTP keeps together, write their frames at the same
    moments. Each period has two phases: local streams are written at its start, and
    streams fed by another node REMOTE_PHASE_S later, when the frame that node wrote at
    the same start has arrived. Without the grid, a remote frame would wait for this
    node's next tick at a random phase: 0 to 20 ms on every hop.

    A tick that falls due runs after the callback that is running, ahead of the others
    the event loop has queued (``first_in_line``)."""

    def __init__(self, max_catch_up: int = MAX_CATCH_UP_FRAMES,
                 remote_phase: float = REMOTE_PHASE_S, wall: Callable[[], float] = time.time
                 ) -> None:
        self.max_catch_up = max_catch_up
        self.remote_phase = remote_phase
        self.wall = wall
        self.late_ticks = 0
        #: How late the ticks ran (seconds after their deadline): the last 50 for
        #: admission control, a histogram since start for /metrics and the benchmarks.
        self.lateness = Lateness()
        self._next: float | None = None  # the next period's start, event-loop time
        self._loop: asyncio.AbstractEventLoop | None = None

    def until_tick(self) -> float:
        if self._next is None or self._loop is None:
            return math.inf
        return self._next - self._loop.time()

    def grid_error(self, deadline: float, now: float) -> float:
        """How far the wall-clock time at ``deadline`` (event-loop time) is from the
        grid, in -10..10 ms."""
        phase = (self.wall() + deadline - now) % FRAME_SECONDS
        return phase - FRAME_SECONDS if phase > FRAME_SECONDS / 2 else phase

    async def run(self, target: Ticked) -> None:
        loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now - self.grid_error(now, now)
        if deadline < now:
            deadline += FRAME_SECONDS
        periods = 0
        while True:
            self._next = deadline
            await wait_until(deadline)
            self.lateness.record(max(0.0, loop.time() - deadline))
            behind = int((loop.time() - deadline) / FRAME_SECONDS)
            if behind > self.max_catch_up:
                self.late_ticks += behind
                log.warning("media clock %d ticks late; jumping ahead", behind)
                deadline += behind * FRAME_SECONDS
                target.skip(behind)
            self._next = deadline + FRAME_SECONDS
            target.tick(Phase.LOCAL)
            await wait_until(deadline + self.remote_phase)
            target.tick(Phase.REMOTE)
            deadline += FRAME_SECONDS
            periods += 1
            if periods % 50 == 0:  # follow the wall clock (NTP slews it), gently
                error = self.grid_error(deadline, loop.time())
                deadline -= max(-ALIGN_STEP_S, min(ALIGN_STEP_S, error))


class SteppedClock:
    """Media time that moves only when a test calls ``step()``: as fast as the CPU allows
    and the same on every run, however loaded the machine is."""

    def __init__(self, settle_timeout: float = 5.0) -> None:
        self.settle_timeout = settle_timeout  # real seconds a consumer may take per frame
        self.late_ticks = 0
        self.lateness = Lateness()
        self.ticks = 0
        self._target: Ticked | None = None

    def until_tick(self) -> float:
        return math.inf  # ticks come when a test steps, not at a time

    async def run(self, target: Ticked) -> None:
        self._target = target
        try:
            await asyncio.get_running_loop().create_future()  # parked until cancelled
        finally:
            self._target = None

    async def step(self, frames: int = 1, stalled: Collection[Any] = ()) -> None:
        """Tick every stream ``frames`` times; after each tick wait until every ring reader
        (shared encoders, fan-outs, recorders, analysers, WebRTC tracks) has read it.

        Work a reader does after its read (a recorder's flush in a worker thread) is
        waited for by the next tick, when that reader is behind again.
        ``stalled``: readers a test keeps from reading on purpose; not waited for.
        A reader still behind after ``settle_timeout`` real seconds is a TimeoutError.
        """
        target = self._target
        if target is None:
            raise RuntimeError("stepped clock is not running: start the gateway first")
        for _ in range(frames):
            target.tick()
            self.ticks += 1
            await asyncio.sleep(0)  # a turn of the loop per tick, as in real time (the
            await self._settle(target, stalled)  # ring-driven readers are never behind)

    async def _settle(self, target: Ticked, stalled: Collection[Any]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle_timeout
        spins = 0
        while behind := target.behind(stalled):
            if loop.time() > deadline:
                raise TimeoutError(
                    f"stepped clock, tick {self.ticks}: a reader of stream(s) "
                    f"{', '.join(behind)} did not read it within {self.settle_timeout} s"
                )
            # a few bare yields for readers on the loop; then sleep (a worker thread writes)
            spins += 1
            await asyncio.sleep(0 if spins < 20 else 0.0005)
