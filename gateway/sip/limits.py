"""Sans-IO flood protection: a per-source token bucket with bounded memory.

The caller passes the time in, so tests drive the clock exactly; nothing here
reads a clock or a socket.
"""

from __future__ import annotations

from collections import OrderedDict

#: Float slack so a sender at exactly ``rate`` is not dropped by rounding.
_EPSILON = 1e-9


class RateLimiter:
    """Allows each source ``burst`` requests at once, then ``rate`` per second.

    Memory is bounded: beyond ``max_sources`` tracked addresses the least
    recently seen one is forgotten, which only resets it to a full bucket, so a
    spoofed-address flood costs memory proportional to ``max_sources``, not to
    the number of addresses. ``rate <= 0`` disables limiting.
    """

    def __init__(self, rate: float, burst: int, max_sources: int = 10000) -> None:
        if rate > 0 and burst < 1:
            raise ValueError(f"burst {burst} is not >= 1")
        if max_sources < 1:
            raise ValueError(f"max_sources {max_sources} is not >= 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self.dropped = 0
        # source -> (tokens left, time they were counted); oldest first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """Number of sources currently tracked."""
        return len(self._buckets)

    def allow(self, source: str, now: float) -> bool:
        """Whether a request from ``source`` at time ``now`` (seconds) may proceed."""
        if self.rate <= 0:
            return True
        buckets = self._buckets
        state = buckets.pop(source, None)
        if state is None:
            tokens, then = float(self.burst), now
        else:
            tokens, then = state
            if now > then:  # a clock stepping backwards must not mint tokens later
                tokens = min(self.burst, tokens + (now - then) * self.rate)
                then = now
        allowed = tokens >= 1 - _EPSILON
        if allowed:
            tokens = max(0.0, tokens - 1)
        else:
            self.dropped += 1
        buckets[source] = (tokens, then)
        if len(buckets) > self.max_sources:
            buckets.popitem(last=False)
        return allowed
