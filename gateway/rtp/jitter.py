"""Sans-IO audio jitter buffer with a bounded, adaptive depth.

It is fed packets as they arrive and asked for the next one on the media clock's
tick (pull model). Unlike aiortc's buffer, a lost packet is concealed and skipped
instead of growing the delay, the depth adapts between ``min_depth`` and
``max_depth`` packets, and excess depth (after a burst or sender clock drift) is
trimmed, so the added delay never grows without bound.

With ``keep_successor`` (set by the playout while the sender's packets carry in-band
FEC), a missing packet whose successor has not arrived either is waited for one tick
(the tick is concealed, the delay grows by one packet): then its successor, which holds
a copy of it, is usually there (``peek()``), and so is the next successor at the next
loss. That one packet of delay is kept while losses go on and given back (trimmed)
after ``relax_after`` ticks without one; it is never added twice.

Trimming drops a packet of real audio. With ``defer_trim`` (the playout's choice) the
buffer only says a trim is due (``trim_due``) and the caller picks the moment: it takes
the next packet early with ``trim()`` when the one it just played is quiet, so the
20 ms it loses is a pause, not speech.
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


class Fill(enum.Enum):
    FILLED = "filled"  # held: it plays at its tick unless its own packet turns up first
    PRESENT = "present"  # its packet is buffered or played already: nothing to do
    LATE = "late"  # its tick was concealed already: the target depth grows
    IGNORED = "ignored"  # before playout started, another sender, or the buffer is full


class Push(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"  # arrived after its playout time
    RESET = "reset"  # new SSRC or sequence jump: buffer restarted


@dataclass
class JitterStats:
    received: int = 0
    played: int = 0
    #: Sequence numbers between the first and the last packet played that never arrived
    #: (one that arrives too late moves to ``late``). Unlike RFC 3550's expected minus
    #: received it is never negative: duplicates and packets before the first one played
    #: do not count.
    lost: int = 0
    concealed: int = 0  # ticks filled by concealment
    late: int = 0
    duplicate: int = 0
    underruns: int = 0
    trimmed: int = 0
    stretched: int = 0
    successor_waits: int = 0  # stretched ticks that waited for a missing packet's successor
    resets: int = 0
    #: Packets that never arrived but played from a redundant copy carried by a later
    #: packet (RED, RFC 2198): counted in ``lost`` too, never in ``concealed``.
    recovered: int = 0
    #: Redundant copies that came after their tick was concealed (the target grew).
    late_copies: int = 0


def _bounded(seqs: set[int], floor: int) -> set[int]:
    """``seqs`` without those below ``floor`` once it holds more than MAX_SEQ_JUMP."""
    return {s for s in seqs if s >= floor} if len(seqs) > MAX_SEQ_JUMP else seqs


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
        keep_successor: bool = False,
        defer_trim: bool = False,
    ) -> None:
        if not 1 <= min_depth <= max_depth:
            raise ValueError("need 1 <= min_depth <= max_depth")
        self.min_depth = min_depth
        self.max_depth = max_depth
        #: Packets held at most (the oldest beyond it are dropped): twice the maximum
        #: depth, or more for senders that send in bursts (``Playout`` sets it in time).
        self.capacity = 2 * max_depth
        self.target = min_depth
        self.keep_successor = keep_successor
        self.defer_trim = defer_trim
        #: With ``defer_trim``: one packet of depth is in excess, ``trim()`` it when fit.
        self.trim_due = False
        self.stats = JitterStats()
        self._window = window  # pops over which the minimum depth is watched
        self._relax_after = relax_after  # calm pops before the target shrinks again
        self._packets: dict[int, Any] = {}
        self._ssrc: int | None = None
        self._highest: int | None = None  # extended sequence number
        self._next: int | None = None  # extended sequence number to play next
        self._first_played: int | None = None  # extended, since the last restart
        self._last_played: int | None = None  # extended: nothing at or below it plays
        self._lost_seqs: set[int] = set()  # counted in stats.lost, until one turns up late
        self._dropped: set[int] = set()  # arrived above _last_played, dropped (late, trimmed)
        self._filled: set[int] = set()  # held from a redundant copy, not played yet
        self._late_copy: int | None = None  # extended: the last copy that came too late
        self._playing = False
        self._hold = False
        self._missing_run = 0
        self._window_min = SEQ_MOD
        self._window_pops = 0
        self._calm_pops = 0
        self._successor_kept = False  # a successor wait added one packet of delay
        self._pops_since_loss = 0

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
        self._first_played = self._last_played = None
        self._lost_seqs.clear()
        self._dropped.clear()
        self._filled.clear()
        self._late_copy = None
        self._playing = False
        self._hold = False
        self._successor_kept = False
        self.trim_due = False
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
        if self._highest is None or ext > self._highest:
            self._highest = ext
        if self._last_played is not None and ext <= self._last_played:
            if ext in self._lost_seqs:  # a gap, filled after its successor played
                self._lost_seqs.discard(ext)
                self.stats.lost -= 1
                return self._late()
            if self._first_played is not None and ext < self._first_played:
                return self._late()  # reordered behind the first packet played
            self.stats.duplicate += 1  # a copy of a packet played (or dropped) already
            return Push.DUPLICATE
        if ext in self._filled:  # its own packet came after all: it replaces the copy
            self._filled.discard(ext)
            self._packets[ext] = payload
            return result
        if ext in self._packets or ext in self._dropped:
            self.stats.duplicate += 1
            return Push.DUPLICATE
        if self._playing and self._next is not None and ext < self._next:
            self._dropped.add(ext)  # its tick was concealed: it arrived, too late
            return self._late()
        self._packets[ext] = payload
        # Hard bound: never hold more than the capacity.
        while len(self._packets) > self.capacity:
            self._drop_oldest()
        return result

    def fill(self, seq: int, payload: Any, ssrc: int = 0) -> Fill:
        """Offer a redundant copy of packet ``seq`` (recovered from a later packet, e.g.
        RED): held if its packet is still missing and its tick is still to come.

        Unlike push() it counts nothing as received or duplicate: a copy of a packet that
        arrived is expected. A copy whose tick was concealed already shows that one more
        packet of depth would have recovered the loss, so the target grows as for a late
        packet (``late_copies``). Call it after pushing the packet that carried it.
        """
        if ssrc != self._ssrc or self._highest is None or self._last_played is None:
            return Fill.IGNORED  # another sender, or playout never started
        ext = self._extend(seq)
        if ext > self._highest or self._highest - ext > self.max_depth * 2:
            return Fill.IGNORED  # not a copy of a recent packet
        if ext <= self._last_played or (self._playing and self._next is not None
                                        and ext < self._next):
            concealed = ext in self._lost_seqs or (
                ext > self._last_played and ext not in self._dropped)
            if not concealed:
                return Fill.PRESENT
            if self._late_copy is None or ext > self._late_copy:  # once per lost packet
                self._late_copy = ext
                self.stats.late_copies += 1
                self._grow()
            return Fill.LATE
        if ext in self._packets or ext in self._dropped:
            return Fill.PRESENT
        if len(self._packets) >= self.capacity:
            return Fill.IGNORED
        self._packets[ext] = payload
        self._filled.add(ext)
        return Fill.FILLED

    def _late(self) -> Push:
        """A packet that missed its tick: dropped, and the delay grows by one packet."""
        self.stats.late += 1
        self._grow()
        return Push.LATE

    def _grow(self) -> None:
        """One more packet of delay (one concealed tick now), up to ``max_depth``."""
        if self.target < self.max_depth:
            self.target += 1
            self._hold = True
        self._calm_pops = 0
        self.trim_due = False

    def _played(self, seq: int) -> None:
        """Count as lost the sequence numbers skipped since the last packet played that
        never arrived (the others were late or trimmed)."""
        last, self._last_played = self._last_played, seq
        if seq in self._filled:  # lost on the way, played from a redundant copy
            self._filled.discard(seq)
            self.stats.recovered += 1
            self.stats.lost += 1
            self._calm_pops = 0  # the depth is earning its keep: keep it
        if last is None:
            self._first_played = seq
        arrived: set[int] = set()
        if self._dropped:
            if last is not None:
                arrived = {s for s in self._dropped if last < s < seq}
            self._dropped = {s for s in self._dropped if s > seq}
        if last is None or seq == last + 1:
            return
        self.stats.lost += seq - last - 1 - len(arrived)
        floor = seq - MAX_SEQ_JUMP  # anything older arrives as a new sender: not kept
        self._lost_seqs.update(s for s in range(max(last + 1, floor), seq) if s not in arrived)
        self._lost_seqs = _bounded(self._lost_seqs, floor)

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
        if payload is None and self._wait_for_successor():
            return Pop.LOST
        self._next += 1
        if payload is not None:
            self._played(self._next - 1)
            self._missing_run = 0
            self.stats.played += 1
            self._watch_depth()
            return payload
        self._missing_run += 1
        self._pops_since_loss = 0
        if not self._packets and self._missing_run > self.max_depth:
            self.stats.underruns += 1
            self._playing = False
            self._successor_kept = False
            self._missing_run = 0
            return Pop.EMPTY
        self.stats.concealed += 1
        self._watch_depth()
        return Pop.LOST

    def peek(self) -> Any:
        """The payload to be popped next, if it is there (after Pop.LOST: the lost
        packet's successor), else None. It stays in the buffer."""
        return self._packets.get(self._next) if self._next is not None else None

    def trim(self) -> Any:
        """The deferred trim: the next packet, taken now, one tick early (the caller
        plays it instead of the one it just took); None if it is not there yet or the
        excess is gone (a loss used it up)."""
        if self._next is None or len(self._packets) < self.kept_depth:
            return None
        payload = self._packets.pop(self._next, None)
        if payload is None:
            return None
        self.trim_due = False
        self._next += 1
        self._played(self._next - 1)
        self.stats.trimmed += 1
        return payload

    def _wait_for_successor(self) -> bool:
        """Conceal this tick without advancing when the missing packet's successor is
        not there yet either, once: the packet or its successor may arrive in time."""
        assert self._next is not None
        if (not self.keep_successor or self._successor_kept
                or self._next + 1 in self._packets):
            return False
        self._successor_kept = True
        self._pops_since_loss = 0
        self.stats.stretched += 1
        self.stats.successor_waits += 1
        self.stats.concealed += 1
        return True

    def _drop_oldest(self) -> None:
        oldest = min(self._packets)
        del self._packets[oldest]
        self.stats.trimmed += 1
        if oldest in self._filled:  # a copy: its packet never arrived, so it counts as lost
            self._filled.discard(oldest)
        else:
            self._dropped.add(oldest)
        if self._highest is not None:
            self._dropped = _bounded(self._dropped, self._highest - MAX_SEQ_JUMP)
        if self._next is not None and oldest >= self._next:
            self._next = oldest + 1

    @property
    def kept_depth(self) -> int:
        """Packets kept waiting after a pop: the target, and the successor wait's extra
        packet (depth to keep, not to trim): the delay the buffer adds, in packets."""
        return self.target + (self._successor_kept and self.keep_successor)

    def _watch_depth(self) -> None:
        """Trim a packet when the buffer never ran below target over a whole window."""
        self._window_min = min(self._window_min, len(self._packets))
        self._window_pops += 1
        self._calm_pops += 1
        self._pops_since_loss += 1
        if self._calm_pops >= self._relax_after and self.target > self.min_depth:
            self.target -= 1
            self._calm_pops = 0
        if self._successor_kept and self._pops_since_loss >= self._relax_after:
            self._successor_kept = False  # no loss for a while: give the packet back
        if self._window_pops >= self._window:
            excess = self._window_min >= self.kept_depth and bool(self._packets)
            if excess and not self.defer_trim:
                self._drop_oldest()
            else:
                self.trim_due = excess
            self._window_min = SEQ_MOD
            self._window_pops = 0
