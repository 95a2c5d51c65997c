"""How much loss a shared Opus encoder should protect against, from its listeners' reports.

One encoder serves every listener of a stream on its codec, so one setting must fit all
of them. The policy takes the **worst** listener: in-band FEC is what lets a listener on
a lossy link decode a lost packet from the next one (speech at 3 % loss: about 2.9 PESQ
concealed, 4.3 with FEC), while a clean listener only pays for it in bits (at the same
bit rate, libopus moves from CELT to hybrid and spends part of the packet on the
redundant copy). A percentile would leave exactly the few listeners on Wi-Fi or mobile
unprotected whom FEC is for; one listener at 50 % loss cannot make it worse than the cap.

Hysteresis: the setting rises at once (loss hurts now) and falls only after the worst
listener stayed below it for ``hold_s`` (a quiet minute between bursts is common on
Wi-Fi, and each change of ``OPUS_SET_PACKET_LOSS_PERC`` moves the encoder's mode and
bandwidth decisions). A listener whose last report is older than ``stale_s`` no longer
counts (it stopped reporting: gone, or an RTP receiver without RTCP).
"""

from __future__ import annotations

from collections.abc import Hashable


class FecPolicy:
    """Sans-IO: listeners' smoothed reported loss in, the encoder's expected loss out."""

    def __init__(self, hold_s: float = 10.0, stale_s: float = 10.0, cap: int = 20) -> None:
        self.hold_s = hold_s
        self.stale_s = stale_s
        self.cap = cap
        self._listeners: dict[Hashable, tuple[float, float]] = {}  # key -> (loss 0-1, at)
        self._applied = 0
        self._below_since: float | None = None

    @property
    def percent(self) -> int:
        """The expected loss in force, in percent (0: FEC off)."""
        return self._applied

    def report(self, listener: Hashable, loss: float, now: float) -> int:
        """A listener's smoothed reported loss (0-1); returns the setting in force."""
        self._listeners[listener] = (loss, now)
        return self.decide(now)

    def forget(self, listener: Hashable) -> None:
        self._listeners.pop(listener, None)

    def target(self, now: float) -> int:
        """The worst fresh listener's loss, in whole percent (at least 1 from 0.5 %)."""
        worst = 0.0
        for key, (loss, at) in list(self._listeners.items()):
            if now - at > self.stale_s:
                del self._listeners[key]
            elif loss > worst:
                worst = loss
        return min(self.cap, round(worst * 100 + 1e-9))

    def decide(self, now: float) -> int:
        target = self.target(now)
        if target >= self._applied:
            self._applied = target
            self._below_since = None
        elif self._below_since is None:
            self._below_since = now
        elif now - self._below_since >= self.hold_s:
            self._applied = target
            self._below_since = None
        return self._applied
