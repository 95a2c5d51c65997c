"""Work that can wait takes the event loop's spare time, paced to a CPU quota too.

Work that can wait: SIP requests (datagrams, a call's set-up), API listings and
/metrics. Three limits keep it from making the media clock's ticks late:

* **Per turn of the event loop.** A tick that falls due waits for every callback the
  loop already runs in its current turn. Each kind of work cut into ~1 ms slices is not
  enough when several arrive together (a flood of OPTIONS, ten listings, twenty
  INVITEs: each kind's slice, plus twenty call set-ups, in the same turn: 12 ms). So
  paced work starts only within ``TURN_S`` of the first paced slice of the turn; the
  rest waits for a later turn.
* **Per period of the media clock.** At 80 % load a 20 ms period has ~4 ms to spare.
  Paced work run while the work a tick set off is queued, or across the next tick's
  deadline, delays the tick and every listener's packet by its length, and a burst of
  it (200 OPTIONS, twenty INVITEs) delays tick after tick. So paced work waits while the
  tick's work is queued (the shared encoders and fan-outs run in the tick's own call;
  the ring readers it wakes, recorders and cluster links, take ``MEDIA_TURNS`` turns of
  the loop), and does not start within ``TICK_GUARD_S`` of the next tick. When the media
  leave no such time for ``MEDIA_MAX_WAIT_S`` (overload), it runs for ``MEDIA_SLICE_S``
  anyway (after a tick's work; a slice ends when a tick falls due).
* **Per period of a container CPU quota.** A CFS quota is e.g. 50 ms of CPU in every
  100 ms period. Work that needs more than what is left of the period throttles the
  whole process until the next one, and the ticks due meanwhile run tens of
  milliseconds late. So paced work starts only while the process's own CPU over the last
  ``WINDOW_S`` (the period Docker and Kubernetes use) stays under ``LIMIT`` of the quota:
  if no 100 ms window exceeds the quota, no period does, and a burst is spread over as
  many periods as it needs. It still progresses while the media alone fills the quota
  (a slice every ``MAX_WAIT_S``): the gateway is then overloaded, and admission control
  refuses newcomers. Without a quota below one core this limit is off: one event loop
  cannot use more than a core, the kernel has nothing to throttle it for. (Holding the
  loop's own thread under 90 % instead was tried: SIP refusals at 800 INVITEs/s then
  came after 80 ms, p99, instead of 11 ms.)

The media's own work is never paced.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

#: The span the process's CPU is judged over: Docker's and Kubernetes' CFS period.
WINDOW_S = 0.1
#: Share of the quota the process stays under, paced work included.
LIMIT = 0.9
#: A paced slice runs at least this often, however full the quota.
MAX_WAIT_S = 0.05
#: How long paced work waits before it looks again.
RETRY_S = 0.005
#: CPU samples are this far apart at least (a slice is ~1 ms).
SAMPLE_GAP_S = 0.002
#: Paced work starts within this long of the first paced slice of a loop turn.
TURN_S = 0.001
#: ... or waits this long (a timer: a later turn of the loop).
NEXT_TURN_S = 0.0005
#: Work that can wait longer than paced work (heap.Keeper's step) waits until paced work
#: has not had to wait for this long: a burst is over.
CALM_S = 0.2
#: Paced work does not start this close to the media clock's next tick (a SIP request
#: costs 0.1-1 ms, an API slice 1 ms).
TICK_GUARD_S = 0.003
#: Turns of the event loop the work a tick sets off takes: the encoders and fan-outs
#: run in the tick's call (the rings drive them); the readers that are tasks (recorders,
#: cluster links) run in the next turn.
MEDIA_TURNS = 1
#: Paced work that found no spare time for this long runs anyway, for this long (about
#: what a turn of SIP handling, 8 datagrams, takes: 10 % of the loop, as a quota's turn
#: every MAX_WAIT_S gives; less, and the two limits together starve SIP under overload).
MEDIA_MAX_WAIT_S = 0.05
MEDIA_SLICE_S = 0.005


class CpuBudget:
    """One per gateway, shared by its SIP endpoint and its API, so that their bursts take
    turns with each other as well as with the media clock."""

    def __init__(self, now: Callable[[], float] = time.perf_counter,
                 cpu: Callable[[], float] = time.process_time,
                 turn_s: float | None = TURN_S,
                 cores: Callable[[], float] = lambda: 1.0,
                 until_tick: Callable[[], float] = lambda: math.inf) -> None:
        self._now = now
        #: Seconds until the media clock's next tick (the gateway sets its clock's).
        self.until_tick = until_tick
        self._media_turns = 0  # turns of the loop left for the last tick's work
        self._media_waiting: float | None = None  # since when paced work found no time
        self._media_forced_until = -math.inf
        self._cpu = cpu
        #: Cores the process may use (the gateway's admission control reads its quota).
        self.cores = cores
        self.turn_s = turn_s  # None: no limit per loop turn (tests on fake clocks)
        self._turn_began: float | None = None
        self._queue = asyncio.Lock()  # FIFO: waiters park; only the first one polls
        self._samples: deque[tuple[float, float]] = deque()
        self._last_slice = -MAX_WAIT_S
        self._waited_at = -CALM_S
        self.waits = 0  # times paced work was told to wait

    @property
    def paced(self) -> bool:
        return self.cores() < 1.0

    def used_s(self) -> float:
        """CPU the process used over the last WINDOW_S (over the span since the newest
        sample at least that old: a longer gap is averaged, a shorter history scaled)."""
        now, cpu = self._now(), self._cpu()
        samples = self._samples
        if not samples or now - samples[-1][0] >= SAMPLE_GAP_S:
            samples.append((now, cpu))
        while len(samples) > 2 and samples[1][0] <= now - WINDOW_S:
            samples.popleft()
        t0, c0 = samples[0]
        span = now - t0
        return (cpu - c0) * WINDOW_S / span if span > 0 else 0.0

    def ticked(self, _fed: object = None) -> None:
        """The media clock wrote a frame (a ``registry.on_tick`` hook): paced work waits
        for the ``MEDIA_TURNS`` turns of the loop the work it set off takes."""
        if self._media_turns == 0:
            asyncio.get_running_loop().call_soon(self._media_turn)
        self._media_turns = MEDIA_TURNS

    def _media_turn(self) -> None:
        self._media_turns -= 1
        if self._media_turns > 0:
            asyncio.get_running_loop().call_soon(self._media_turn)

    def media_wait_s(self) -> float:
        """0 if paced work may start as far as the media clock is concerned (the last
        tick's work is done and the next tick is ``TICK_GUARD_S`` away or more, or the
        gateway is overloaded: ``_starved``), else how long to wait first."""
        until = self.until_tick()
        if not self._media_turns:
            if until >= TICK_GUARD_S:
                self._media_waiting = None
                return 0.0
            if self._starved(due=until <= 0.0):
                return 0.0
        if self._media_waiting is None:
            self._media_waiting = self._now()
        return NEXT_TURN_S if self._media_turns else max(until, 0.0) + NEXT_TURN_S

    def _starved(self, due: bool) -> bool:
        """Overload: paced work that found no spare time for ``MEDIA_MAX_WAIT_S`` runs for
        ``MEDIA_SLICE_S``, not during a tick's work, and the slice ends when a tick falls
        due (``due``). A loop that runs a period behind has a tick due at every moment:
        waiting for a moment without one would starve SIP (a 5 % share: 1,105 unanswered
        requests in a bench run) while the media stay late anyway."""
        now = self._now()
        if now < self._media_forced_until and not due:
            return True
        waited = now - self._media_waiting if self._media_waiting is not None else 0.0
        if waited >= MEDIA_MAX_WAIT_S:
            self._media_waiting = None
            self._media_forced_until = now + MEDIA_SLICE_S
            return True
        return False

    def wait_s(self) -> float:
        """0 if a slice of paced work may run now, else how long to wait first."""
        media = self.media_wait_s()
        if media > 0:
            return media
        if self.turn_s is not None:
            now = self._now()
            if self._turn_began is None:
                self._turn_began = now
                asyncio.get_running_loop().call_soon(self._next_turn)
            elif now - self._turn_began > self.turn_s:
                self._waited_at = now
                return NEXT_TURN_S
        cores = self.cores()
        if cores >= 1.0:
            return 0.0
        full = self.used_s() >= LIMIT * cores * WINDOW_S
        now = self._now()
        if full and now - self._last_slice < MAX_WAIT_S:
            self.waits += 1
            self._waited_at = now
            return RETRY_S
        self._last_slice = now
        return 0.0

    def has_room(self, cpu_s: float) -> bool:
        """Whether ``cpu_s`` of work in one piece fits now: no burst of paced work is
        waiting its turn (none waited in the last ``CALM_S``), it ends ``TICK_GUARD_S``
        before the media clock's next tick and, under a quota, the last window's CPU plus
        this stays under ``LIMIT`` of it."""
        if self._now() - self._waited_at < CALM_S \
                or self.until_tick() < cpu_s + TICK_GUARD_S:
            return False
        cores = self.cores()
        return cores >= 1.0 or self.used_s() + cpu_s < LIMIT * cores * WINDOW_S

    def _next_turn(self) -> None:
        self._turn_began = None

    async def turn(self) -> None:
        """Wait until a slice of paced work may run. Waiters queue in arrival order and
        only the first looks at the budget (twenty call set-ups each polling every half
        millisecond would cost more than they wait for)."""
        async with self._queue:
            while (wait := self.wait_s()) > 0:
                await asyncio.sleep(wait)
