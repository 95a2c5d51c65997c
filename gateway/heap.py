"""The garbage collector's settings for a long-running `gateway serve`.

1. Freeze the start-up heap. Everything imported and built before serving (aiortc, av,
   numpy, scipy: ~110k objects) lives for the whole process; frozen, a full collection
   no longer walks it, and the event loop no longer pauses ~50 ms each time one runs.
2. Let full collections come when there is garbage, not after a quota of allocations.
   A closed WebRTC session leaves ~550 objects in reference cycles (aiortc's peer
   connection, transports, RTP history), which only a full collection frees. CPython's
   generational collector (3.11-3.13) starts one when the objects promoted since the last
   one exceed a quarter of those that survived it, *and* only after 10 middle-generation
   collections. A gateway that mostly forwards packets allocates so little that the second
   condition held closed sessions for minutes (bench/churn.py: no full collection in 20
   rounds of 1 publisher + 5 listeners, 35k objects and 13 MiB waiting). Without it the
   quarter rule still keeps collection work in proportion to allocation: a busy gateway
   collects as often as before.
3. Collect once more after the freeze, so that "those that survived" counts what is not
   frozen (~0), not the 110k objects just frozen, which the quarter rule would otherwise
   have to match with 28k promotions before the first full collection.
4. Keep the sessions' objects out of full collections too (Keeper, run by `gateway
   serve`): every few seconds collect what was made since the last freeze (cheap: only
   that is walked) and freeze the survivors. A closed session no longer needs the
   collector (gateway/webrtc/session.py drops the event handlers that made its cycles);
   a thaw bounds whatever else ends up as garbage while frozen.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def settle() -> None:
    """Call once, after start-up and before serving."""
    gc.collect()
    gc.freeze()
    gc.collect()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 0)


#: How often the objects made since the last freeze are collected (only they are walked)
#: and the survivors frozen: sessions that connected meanwhile leave full collections.
FREEZE_EVERY_S = 5.0
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
    ticks (bench/gc_listeners.py). Frozen every few seconds, the steady ones are never
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
        self.freezes = 0
        self.thaws = 0

    def ended(self, started: float) -> None:
        """A session that began at ``started`` (this clock) has ended."""
        if started < self.frozen_at:
            self.ended_frozen += 1

    def step(self, live_sessions: int) -> None:
        """Freeze what survives a collection of the unfrozen objects; thaw when due."""
        now = self.clock()
        if (self.ended_frozen >= max(self.thaw_after_sessions,
                                     self.thaw_after_share * live_sessions)
                or now - self.thawed_at >= self.thaw_every_s):
            log.info("heap: thawing for a full collection (%d frozen sessions ended)",
                     self.ended_frozen)
            gc.unfreeze()
            self.thaws += 1
            self.thawed_at = now
            self.ended_frozen = 0
        gc.collect()
        gc.freeze()
        gc.collect()  # the quarter rule counts from ~0 survivors again, as after settle()
        self.frozen_at = self.clock()
        self.freezes += 1

    async def run(self, live_sessions: Callable[[], int]) -> None:
        while True:
            await asyncio.sleep(self.freeze_every_s)
            self.step(live_sessions())
