"""Sans-IO SIP overload protection: which new calls may open a transaction at all.

A gateway answering INVITEs more slowly than they arrive falls into congestion collapse:
its answers come after the phones' retransmission timers (T1, 500 ms), each
retransmission is more work, and soon no call gets through. Refusing the excess early
and cheaply keeps the answer time short for everyone (RFC 3261 §21.5.4; RFC 6357 on why
the refusal itself must cost little). So the transaction layer asks this gate about every
new out-of-dialog INVITE before it builds anything for it, and answers a refused one with
``503`` + ``Retry-After`` itself, without a transaction, a task or a port.

Refused, in this order:

* ``admission``: admission control (``core.headroom``) is refusing new work anyway;
* ``setup_rate``: more new INVITEs than ``rate`` per second (a token bucket holding a
  tenth of a second's worth, at least two). Arrivals are never evenly spaced, and a bucket
  of one would admit less than ``rate``; a large one lets a burst of call set-ups hold the
  event loop (about 3 ms each) while the refusals behind them wait: 12 at 120/s is ~40 ms.
* ``transactions``: the transaction table is full (the layer decides, the gate counts).

Requests inside a dialog (re-INVITE, BYE, ACK, CANCEL...) never come here.

A refusal is remembered for as long as the phone may retransmit its INVITE (64*T1), so a
retransmission gets the same ``503`` (even if a token is free by then) and the ACK of the
``503`` is absorbed. An overload *episode* starts with the first refusal and ends ``quiet_s``
after the last one, so the adapter logs once per episode, not once per INVITE.

Nothing here reads a clock or touches a socket: every call passes ``now``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

ADMISSION = "admission"
SETUP_RATE = "setup_rate"
TRANSACTIONS = "transactions"
REASONS = (ADMISSION, SETUP_RATE, TRANSACTIONS)

#: Float slack so INVITEs at exactly ``rate`` are not refused by rounding.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Verdict:
    """Why a new INVITE is refused, and the ``Retry-After`` (seconds) its 503 carries."""

    reason: str
    retry_after_s: int


def _admit_all() -> int | None:
    return None


def _never_busy() -> bool:
    return False


class SetupGate:
    """Admits new INVITEs at most ``rate`` per second, and not while admission control
    refuses; remembers what it refused; tells overload episodes apart.

    ``rate <= 0`` turns the rate limit off (the admission check and the counters stay).
    ``admission`` returns the Retry-After (seconds) while admission control refuses new
    work, else None; it is asked first, and a refusal there spends no token.
    """

    def __init__(self, rate: float, remember_s: float = 32.0, max_remembered: int = 20000,
                 quiet_s: float = 1.0) -> None:
        if max_remembered < 1:
            raise ValueError(f"max_remembered {max_remembered} is not >= 1")
        self.rate = rate
        self.burst = max(2, math.ceil(rate / 10)) if rate > 0 else 0
        self.remember_s = remember_s
        self.max_remembered = max_remembered
        self.quiet_s = quiet_s
        self.admission: Callable[[], int | None] = _admit_all
        #: Whether admission control is refusing, without counting a refusal.
        self.busy: Callable[[], bool] = _never_busy
        self.refused: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.retransmissions = 0  # retransmitted refused INVITEs, answered 503 again
        self.acks_absorbed = 0  # ACKs of our 503s
        self.episodes = 0
        self.episode_reason = ""  # why the current (or last) episode began
        self._tokens = float(self.burst)
        self._filled_at: float | None = None
        # (server transaction key) -> (remembered until, verdict); oldest first
        self._remembered: OrderedDict[tuple, tuple[float, Verdict]] = OrderedDict()
        self._episode_started: float | None = None
        self._episode_refusals = 0
        self._last_refusal = 0.0

    # -- decisions -------------------------------------------------------------------
    def check(self, now: float) -> Verdict | None:
        """Whether a new out-of-dialog INVITE arriving at ``now`` is refused; admitting one
        spends a token."""
        retry_after = self.admission()
        if retry_after is not None:
            return Verdict(ADMISSION, retry_after)
        if self.rate <= 0:
            return None
        self._tokens = self._tokens_at(now)
        if self._filled_at is None or now > self._filled_at:  # a clock stepping back
            self._filled_at = now  # must not mint tokens later
        if self._tokens < 1 - _EPSILON:
            return Verdict(SETUP_RATE, 1)  # the bucket refills within a second
        self._tokens = max(0.0, self._tokens - 1)
        return None

    def refusing(self, now: float, claims: int = 0) -> bool:
        """Whether a new INVITE arriving at ``now`` would be refused, with ``claims``
        earlier INVITEs still to be judged (spends nothing): the UDP reader answers
        those at once instead of letting their 503 wait for the CPU budget."""
        if self.busy():
            return True
        if self.rate <= 0:
            return False
        return self._tokens_at(now) - claims < 1 - _EPSILON

    def _tokens_at(self, now: float) -> float:
        """The bucket at ``now``, refilled since it was last drawn from."""
        if self._filled_at is None:
            return self._tokens
        return min(self.burst, self._tokens + max(0.0, now - self._filled_at) * self.rate)

    def refuse(self, key: tuple, verdict: Verdict, now: float) -> None:
        """Count a refusal and remember it, so retransmissions and the ACK are recognised."""
        self.refused[verdict.reason] += 1
        remembered = self._remembered
        remembered[key] = (now + self.remember_s, verdict)
        remembered.move_to_end(key)
        while remembered and (len(remembered) > self.max_remembered
                              or next(iter(remembered.values()))[0] <= now):
            remembered.popitem(last=False)
        if self._episode_started is None:
            self._episode_started = now
            self._episode_refusals = 0
            self.episodes += 1
            self.episode_reason = verdict.reason
        self._episode_refusals += 1
        self._last_refusal = now

    def refused_before(self, key: tuple, now: float) -> Verdict | None:
        """The verdict given to this INVITE earlier (it is a retransmission), if any."""
        entry = self._remembered.get(key)
        if entry is None or entry[0] <= now:
            return None
        self.retransmissions += 1
        return entry[1]

    def absorb_ack(self, key: tuple, now: float) -> bool:
        """True for the ACK of one of our 503s (nothing more to do with it)."""
        entry = self._remembered.get(key)
        if entry is None or entry[0] <= now:
            return False
        self.acks_absorbed += 1
        return True

    # -- episodes --------------------------------------------------------------------
    @property
    def overloaded(self) -> bool:
        """An episode is on (it may have ended by the clock; see end_episode)."""
        return self._episode_started is not None

    def episode_deadline(self) -> float | None:
        """When the current episode ends if nothing more is refused; None outside one."""
        if self._episode_started is None:
            return None
        return self._last_refusal + self.quiet_s

    def end_episode(self, now: float) -> tuple[float, int] | None:
        """End the episode if ``quiet_s`` passed since the last refusal: its (duration,
        refusals), once; else None."""
        deadline = self.episode_deadline()
        if deadline is None or now < deadline or self._episode_started is None:
            return None
        summary = (self._last_refusal - self._episode_started, self._episode_refusals)
        self._episode_started = None
        self._episode_refusals = 0
        return summary

    def __len__(self) -> int:
        """Refused INVITEs remembered now."""
        return len(self._remembered)
