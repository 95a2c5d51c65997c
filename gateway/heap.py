"""The garbage collector's settings for a long-running `gateway serve`.

1. Freeze the start-up heap. Everything imported and built before serving (aiortc, av,
   numpy, scipy: ~110k objects) lives for the whole process; frozen, a full collection
   no longer walks it, and the event loop no longer pauses ~50 ms each time one runs.
2. Keep the sessions' objects out of full collections too (Keeper): every second
   freeze what was made since the last freeze, collecting it first when a collection is
   due (point 4). A closed session no longer needs the collector (gateway/webrtc/
   session.py drops the event handlers that made its cycles); a thaw bounds whatever
   else ends up as garbage while frozen.
3. Full collections only at the Keeper's steps, just after a media tick's fan-out. A
   full collection holds the event loop for as long as it walks; CPython starts one
   after enough allocations, at whatever moment that is: during a burst of SIP or API
   work, with that work's objects alive, 10-60 ms (throttling included) in the middle
   of a tick's period (docs/benchmarks.md, "Timing under load"). So the collector's own
   full collections are switched off (young collections stay: they walk only the
   objects not yet frozen), and the Keeper's step waits for a tick and runs right after
   the tick's call, whose shared encoders and fan-outs have sent its packets by then;
   a collection waits for a tick after which the last one's length fits before the
   next (point 5).
4. Collect only when there is garbage to find. A collection walks every object made
   since the last freeze that is still alive: with 500 WebRTC listeners, 5 s of them
   (aiortc's timers, RTCP and consent tasks in flight) took 8-21 ms, and at 80 % of a
   core the media clock needs several ticks to catch up after such a pause. Listeners
   and SIP calls leave no garbage in cycles (the last sources: Opus encoding, gateway/
   codecs/libopus.py; cancelled egress tasks, gateway/core/tasks.py), so when a
   collection found fewer than ``LITTLE_GARBAGE`` objects the next steps only freeze (no
   walk) until ``COLLECT_EVERY_S`` has passed; a churn that leaves more (requests,
   sessions' leftovers) is collected at every step, and so is a session
   that ended before it was frozen. What a step freezes unwalked waits for the next
   thaw: below ``LITTLE_GARBAGE`` a second, at most ~60,000 objects in 5 minutes. A
   freeze is cheap, and frequent ones keep the young generations small: a young
   collection walks what is not frozen yet, ~10 ms at 500 listeners after 5 s of them.
5. Not during a burst. A collection during a burst walks the burst's live objects too
   (5-11 ms with 220 listeners), and under a container CPU quota it throttles the
   process. So a due collection waits until the gateway's CPU budget (gateway/core/
   cpu_budget.py) says no burst is waiting, that its CPU (as long as the last
   collection's) fits before the next tick and, under a quota, in the quota; after
   ``MAX_DELAY_S`` it runs anyway.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


#: The collector's own full collections: never (point 3 above).
NO_FULL_COLLECTIONS = 2**31 - 1


def settle() -> None:
    """Call once, after start-up and before serving (then run a Keeper)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NO_FULL_COLLECTIONS)


#: How often the objects made since the last freeze are frozen (point 2 above): sessions
#: that connected meanwhile leave full collections, and young collections.
FREEZE_EVERY_S = 1.0
#: A collection that found fewer objects in cycles than this lets the next steps only
#: freeze ...
LITTLE_GARBAGE = 200
#: ... until this long after it (point 4 above).
COLLECT_EVERY_S = 30.0
#: A due step waits at most this long for a calm moment (point 5 above).
MAX_DELAY_S = 10.0
#: A frozen object is never walked, so cycles of frozen objects that become garbage (what
#: a closed session still leaves in cycles) stay until the next thaw: unfreeze, one full collection
#: (the pause that freezing avoids the rest of the time), freeze again. It comes when
#: this many frozen sessions ended, or that share of the sessions alive, whichever is
#: more: the leak stays a fixed share of the live heap.
THAW_AFTER_SESSIONS = 20
THAW_AFTER_SHARE = 0.25
#: ... and at least this often: SIP calls, RTP outputs, recordings and HTTP requests in
#: flight are frozen too, and not counted; a thaw bounds what they may leave.
THAW_EVERY_S = 300.0


class Keeper:
    """Keeps the objects of long-lived sessions out of full collections.

    A connected WebRTC listener holds ~380 objects the collector tracks (aiortc's ICE,
    DTLS, RTCP tasks and state); with 400 listeners every full collection walked 150k
    objects: ~100 ms on an idle core, 100-300 ms under a 0.5-core quota, 5-15 late media
    ticks (bench/gc_listeners.py). Frozen every second, the steady ones are never
    walked again; what ends is freed by reference counting, or at the next thaw."""

    def __init__(self, freeze_every_s: float = FREEZE_EVERY_S,
                 thaw_after_sessions: int = THAW_AFTER_SESSIONS,
                 thaw_after_share: float = THAW_AFTER_SHARE,
                 thaw_every_s: float = THAW_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.freeze_every_s = freeze_every_s
        self.thaw_after_sessions = thaw_after_sessions
        self.thaw_after_share = thaw_after_share
        self.thaw_every_s = thaw_every_s
        self.clock = clock
        self.frozen_at = clock()  # settle() froze the start-up heap
        self.thawed_at = self.frozen_at
        self.ended_frozen = 0  # sessions frozen, then ended, since the last thaw
        self.ended_unfrozen = 0  # sessions ended before a freeze, since the last collection
        self.freezes = 0
        self.thaws = 0
        self.collections = 0
        self.collected_at = -math.inf
        self.last_garbage = 0  # objects in cycles the last step's collection found
        self.last_collection_cpu_s = 0.0
        self._scheduled = False

    def ended(self, started: float) -> None:
        """A session that began at ``started`` (this clock) has ended."""
        if started < self.frozen_at:
            self.ended_frozen += 1
        else:  # its cycles are among the unfrozen objects: collect before freezing them
            self.ended_unfrozen += 1

    def _due(self, now: float, live_sessions: int) -> tuple[bool, bool]:
        """Whether the step thaws, and whether it collects."""
        thaw = (self.ended_frozen >= max(self.thaw_after_sessions,
                                         self.thaw_after_share * live_sessions)
                or now - self.thawed_at >= self.thaw_every_s)
        return thaw, (thaw or self.ended_unfrozen > 0 or self.last_garbage >= LITTLE_GARBAGE
                      or now - self.collected_at >= COLLECT_EVERY_S)

    def step(self, live_sessions: int) -> None:
        """Freeze the unfrozen objects, after a collection when one is due; thaw when
        due."""
        now = self.clock()
        thaw, collect = self._due(now, live_sessions)
        if thaw:
            log.info("heap: thawing for a full collection (%d frozen sessions ended)",
                     self.ended_frozen)
            gc.unfreeze()
            self.thaws += 1
            self.thawed_at = now
            self.ended_frozen = 0
        if collect:
            began = time.thread_time()
            self.last_garbage = gc.collect()
            self.last_collection_cpu_s = time.thread_time() - began
            self.collected_at = now
            self.collections += 1
            self.ended_unfrozen = 0
        gc.freeze()
        self.frozen_at = self.clock()
        self.freezes += 1

    def tick_hook(self, live_sessions: Callable[[], int],
                  has_room: Callable[[float], bool] = lambda _cpu_s: True,
                  ) -> Callable[[object], None]:
        """A media-clock tick hook (``registry.on_tick``) that runs the step when due,
        right after the tick's call; a step that collects waits until ``has_room``
        says a collection as long as the last one fits (``CpuBudget.has_room``) or it is
        ``MAX_DELAY_S`` overdue."""
        loop = asyncio.get_running_loop()

        def run_step() -> None:
            self._scheduled = False
            self.step(live_sessions())

        def on_tick(_fed: object) -> None:
            if self._scheduled:
                return
            now = self.clock()
            late = now - self.frozen_at - self.freeze_every_s
            if late < 0:
                return
            collects = self._due(now, live_sessions())[1]
            if not collects or late >= MAX_DELAY_S or has_room(self.last_collection_cpu_s):
                self._scheduled = True
                loop.call_soon(run_step)

        return on_tick
