"""Sans-IO audio jitter buffer with a bounded, adaptive depth.

It is fed packets as they arrive and asked for the next one on the media clock's
tick (pull model). Unlike aiortc's buffer, a lost packet is concealed and skipped
instead of growing the delay, the depth adapts between ``min_depth`` and
``max_depth`` packets, and excess depth (after a burst or sender clock drift) is
trimmed, so the added delay never grows without bound.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

SEQ_MOD = 1 << 16
#: Sequence jumps larger than this are a new sender (restart), not loss.
MAX_SEQ_JUMP = 3000


class Pop(enum.Enum):
    LOST = "lost"  # the next packet is missing: conceal one packet's worth
    EMPTY = "empty"  # nothing to play (prefetching, sender absent or late)


class Push(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"  # arrived after its playout time
    RESET = "reset"  # new SSRC or sequence jump: buffer restarted


@dataclass
class JitterStats:
    received: int = 0
    played: int = 0
    lost: int = 0  # sequence numbers that never arrived (RFC 3550 style)
    concealed: int = 0  # ticks filled by concealment
    late: int = 0
    duplicate: int = 0
    underruns: int = 0
    trimmed: int = 0
    stretched: int = 0
    resets: int = 0


class JitterBuffer:
    """Orders packets by sequence number and hands out one per pop() (one per tick).

    A packet missing at its tick is concealed and skipped (Pop.LOST), so a loss costs
    no delay. If it then arrives, it is late: dropped, and the target depth grows by
    one packet (one extra concealed tick, ``stretched``). Depth that stays above the
    target for a whole window is trimmed. When nothing arrives for more than
    ``max_depth`` ticks the sender is considered paused: playout stops (Pop.EMPTY)
    and restarts from the next packet after a fresh prefetch.
    """

    def __init__(
        self,
        min_depth: int = 1,
        max_depth: int = 3,
        window: int = 100,
        relax_after: int = 500,
    ) -> None:
        if not 1 <= min_depth <= max_depth:
            raise ValueError("need 1 <= min_depth <= max_depth")
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.target = min_depth
        self.stats = JitterStats()
        self._window = window  # pops over which the minimum depth is watched
        self._relax_after = relax_after  # calm pops before the target shrinks again
        self._packets: dict[int, Any] = {}
        self._ssrc: int | None = None
        self._highest: int | None = None  # extended sequence number
        self._next: int | None = None  # extended sequence number to play next
        self._playing = False
        self._hold = False
        self._missing_run = 0
        self._window_min = SEQ_MOD
        self._window_pops = 0
        self._calm_pops = 0

    @property
    def depth(self) -> int:
        """Packets waiting to be played."""
        return len(self._packets)

    def _extend(self, seq: int) -> int:
        if self._highest is None:
            return seq
        delta = (seq - self._highest + SEQ_MOD // 2) % SEQ_MOD - SEQ_MOD // 2
        return self._highest + delta

    def _restart(self) -> None:
        self._packets.clear()
        self._highest = None
        self._next = None
        self._playing = False
        self._hold = False
        self.stats.resets += 1

    def push(self, seq: int, payload: Any, ssrc: int = 0) -> Push:
        """Add one arrived packet (16-bit RTP sequence number)."""
        self.stats.received += 1
        result = Push.ACCEPTED
        if self._ssrc is not None and ssrc != self._ssrc:
            self._restart()
            result = Push.RESET
        self._ssrc = ssrc
        ext = self._extend(seq)
        if self._highest is not None and abs(ext - self._highest) > MAX_SEQ_JUMP:
            self._restart()
            ext, result = seq, Push.RESET
        if self._playing and self._next is not None and ext < self._next:
            self.stats.late += 1
            if self._highest is not None and ext < self._highest:
                self.stats.lost -= 1  # it was counted as a gap when its successor came
            else:
                self._highest = ext
            if self.target < self.max_depth:
                self.target += 1
                self._hold = True
            self._calm_pops = 0
            return Push.LATE
        if ext in self._packets:
            self.stats.duplicate += 1
            return Push.DUPLICATE
        self._packets[ext] = payload
        if self._highest is None or ext > self._highest:
            if self._highest is not None:
                self.stats.lost += ext - self._highest - 1
            self._highest = ext
        elif result is Push.ACCEPTED:
            self.stats.lost -= 1  # a reordered packet filled a gap in time
        # Hard bound: never hold more than twice the maximum depth.
        while len(self._packets) > 2 * self.max_depth:
            self._drop_oldest()
        return result

    def pop(self) -> Any:
        """The next payload in order, Pop.LOST for a tick to conceal, or Pop.EMPTY."""
        if not self._playing:
            if len(self._packets) < self.target:
                return Pop.EMPTY
            self._playing = True
            self._next = min(self._packets)
        assert self._next is not None
        if self._hold:  # grow the delay by one packet: conceal without advancing
            self._hold = False
            self.stats.stretched += 1
            self.stats.concealed += 1
            return Pop.LOST
        payload = self._packets.pop(self._next, None)
        self._next += 1
        if payload is not None:
            self._missing_run = 0
            self.stats.played += 1
            self._watch_depth()
            return payload
        self._missing_run += 1
        if not self._packets and self._missing_run > self.max_depth:
            self.stats.underruns += 1
            self._playing = False
            self._missing_run = 0
            return Pop.EMPTY
        self.stats.concealed += 1
        self._watch_depth()
        return Pop.LOST

    def _drop_oldest(self) -> None:
        oldest = min(self._packets)
        del self._packets[oldest]
        self.stats.trimmed += 1
        if self._next is not None and oldest >= self._next:
            self._next = oldest + 1

    def _watch_depth(self) -> None:
        """Trim a packet when the buffer never ran below target over a whole window."""
        self._window_min = min(self._window_min, len(self._packets))
        self._window_pops += 1
        self._calm_pops += 1
        if self._calm_pops >= self._relax_after and self.target > self.min_depth:
            self.target -= 1
            self._calm_pops = 0
        if self._window_pops >= self._window:
            if self._window_min >= self.target and self._packets:
                self._drop_oldest()
            self._window_min = SEQ_MOD
            self._window_pops = 0
