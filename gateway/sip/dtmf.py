"""Sans-IO DTMF: RFC 4733 telephone-event payloads and digit commands.

Callers feed the RTP timestamp, marker bit and payload of each telephone-event
packet; nothing here reads a socket or a clock, so loss, duplication and
timestamp wrap-around can all be tested exactly. Parsing untrusted input raises
only :class:`DtmfError`.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

#: RFC 4733 §3: events 0-15 are the DTMF digits, in this order.
EVENT_DIGITS = "0123456789*#ABCD"

TS_MOD = 1 << 32
MAX_DURATION = 0xFFFF
#: Timestamps of recent events remembered for deduplication; more than one, so a
#: late (reordered) packet of an earlier key press is not reported a second time.
_RECENT_EVENTS = 16

_PAYLOAD = struct.Struct("!BBH")


class DtmfError(ValueError):
    """A payload that is not a telephone event (the only error parse raises)."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 §2.3 payload: event code, E bit, volume (-dBm0) and duration."""

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse(cls, payload: bytes | bytearray | memoryview) -> TelephoneEvent:
        """Decode the first 4 bytes; anything after them is ignored."""
        if len(payload) < _PAYLOAD.size:
            raise DtmfError(f"too short: {len(payload)} bytes, a telephone event is 4")
        event, flags, duration = _PAYLOAD.unpack_from(payload)
        # The R bit (0x40) is reserved: senders set it to 0, receivers ignore it.
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def to_bytes(self) -> bytes:
        """Encode per RFC 4733 §2.3 (R bit clear)."""
        if not 0 <= self.event <= 0xFF:
            raise DtmfError(f"event {self.event} is not 0-255")
        if not 0 <= self.volume <= 0x3F:
            raise DtmfError(f"volume {self.volume} is not 0-63")
        if not 0 <= self.duration <= MAX_DURATION:
            raise DtmfError(f"duration {self.duration} is not 0-65535")
        return _PAYLOAD.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)

    @property
    def digit(self) -> str | None:
        """The DTMF digit, or None for other events (flash, tones...)."""
        return EVENT_DIGITS[self.event] if self.event < len(EVENT_DIGITS) else None


class DtmfReceiver:
    """Turns the telephone-event packets of one RTP stream into key presses.

    An event is identified by its RTP timestamp (RFC 4733 §2.3: every packet
    of one event carries the event's start time), so the redundant start and end
    packets are deduplicated and the same digit pressed twice is reported twice.
    A digit is reported on the first packet seen of a new event, i.e. on the key
    press and not its release, for low latency; if the start packets are lost the
    next packet (even an end packet) reports it.
    """

    def __init__(self) -> None:
        self.digits = 0
        self.malformed = 0
        self._recent: deque[int] = deque(maxlen=_RECENT_EVENTS)
        self._last_ts: int | None = None
        self._last_event = -1
        self._last_ended = True

    def feed(self, rtp_timestamp: int, marker: bool, payload: bytes) -> str | None:
        """The digit if this packet starts a new key press, else None."""
        try:
            ev = TelephoneEvent.parse(payload)
        except DtmfError:
            self.malformed += 1
            return None
        ts = rtp_timestamp % TS_MOD
        if ts in self._recent:
            if ts == self._last_ts and ev.end:
                self._last_ended = True
            return None
        continuation = (
            self._last_ts is not None
            and not marker
            and not self._last_ended
            and ev.event == self._last_event
            and 0 < (ts - self._last_ts) % TS_MOD <= MAX_DURATION + 1
        )
        self._recent.append(ts)
        self._last_ts, self._last_event, self._last_ended = ts, ev.event, ev.end
        if continuation:
            # RFC 4733 §2.5.1.3: an event longer than 65535 timestamp units goes
            # on in a new segment with a new timestamp; it is the same key press.
            return None
        digit = ev.digit
        if digit is not None:
            self.digits += 1
        return digit


class DigitCommands:
    """Collects ``<prefix>digits<terminator>`` commands (e.g. ``*12#``) from key presses.

    Digits outside a command are ignored, so ordinary keypad use does not trigger
    anything; a stalled, over-long or restarted command is discarded rather than
    executed half-typed.
    """

    def __init__(
        self,
        prefix: str = "*",
        terminator: str = "#",
        max_length: int = 16,
        timeout_s: float = 5.0,
    ) -> None:
        if prefix == terminator:
            raise ValueError("prefix and terminator must differ")
        if max_length < 1:
            raise ValueError(f"max_length {max_length} is not >= 1")
        self.prefix = prefix
        self.terminator = terminator
        self.max_length = max_length
        self.timeout_s = timeout_s
        self.discarded = 0
        self._buf: list[str] | None = None  # None: not inside a command
        self._last = 0.0

    def feed(self, digit: str, now: float) -> str | None:
        """The digits between prefix and terminator when a command completes, else None.

        An empty command (prefix directly followed by terminator) returns None.
        """
        if self._buf is not None and now - self._last > self.timeout_s:
            self._discard()
        if digit == self.prefix:
            if self._buf:
                self.discarded += 1
            self._buf, self._last = [], now
            return None
        if self._buf is None:
            return None
        if digit == self.terminator:
            command = "".join(self._buf)
            self._buf = None
            return command or None
        self._buf.append(digit)
        self._last = now
        if len(self._buf) > self.max_length:
            self._discard()
        return None

    def _discard(self) -> None:
        self._buf = None
        self.discarded += 1


def encode_event_packets(
    digit: str, duration_ms: int = 100, ptime_ms: int = 20, clock_rate: int = 8000
) -> list[tuple[bool, int, bytes]]:
    """``(marker, duration, payload)`` of every packet of one key press.

    One packet per ``ptime_ms`` with a growing duration, the first with the marker
    bit, then the final (E bit) packet sent three times as RFC 4733 §2.5.1.4
    recommends. All are sent with the RTP timestamp of the event's start.
    """
    if len(digit) != 1 or digit not in EVENT_DIGITS:
        raise DtmfError(f"{digit!r} is not a DTMF digit")
    if duration_ms <= 0 or ptime_ms <= 0:
        raise DtmfError("duration_ms and ptime_ms must be positive")
    step = ptime_ms * clock_rate // 1000
    total = duration_ms * clock_rate // 1000
    if not 0 < step <= total <= MAX_DURATION:
        raise DtmfError(f"duration {total} is not between one packet ({step}) and 65535")
    event = EVENT_DIGITS.index(digit)
    durations = list(range(step, total, step))
    packets = [(False, d, TelephoneEvent(event, False, 10, d).to_bytes()) for d in durations]
    end = TelephoneEvent(event, True, 10, total).to_bytes()
    packets += [(False, total, end)] * 3
    first = packets[0]
    packets[0] = (True, first[1], first[2])
    return packets
