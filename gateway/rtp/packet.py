"""Sans-IO RTP (RFC 3550 §5.1): packet parse/build, sender state and receiver statistics.

Nothing here touches a socket or a clock: callers feed bytes and times in and get
objects or bytes back, so every rule can be tested exactly. Parsing untrusted input
raises only :class:`RtpError`, so a receive loop needs a single ``except``.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import ClassVar

RTP_VERSION = 2
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
HEADER_SIZE = 12
MAX_CSRCS = 15

#: V/P/X/CC, M/PT, sequence, timestamp, SSRC.
_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_CSRCS = [struct.Struct(f"!{n}I") for n in range(MAX_CSRCS + 1)]


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet (the only error parse raises)."""


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4 demultiplexing: RTCP packet types 192-223 sit where RTP has M+PT.

    Needed when RTP and RTCP share one port (rtcp-mux); RTP payload types 64-95
    are never used so that this test is unambiguous.
    """
    return len(data) >= 2 and 192 <= data[1] <= 223


def build_header(
    payload_type: int, marker: bool, sequence: int, timestamp: int, ssrc: int
) -> bytes:
    """The 12-byte header of the common case (no padding, extension or CSRCs).

    This is the per-packet path: one precompiled ``struct`` call, no validation
    beyond what ``struct`` does for the 16/32-bit fields.
    """
    return _HEADER.pack(0x80, (0x80 if marker else 0) | payload_type, sequence, timestamp, ssrc)


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet; ``parse(build(p)) == p`` for every valid ``p``.

    ``padding`` is the number of padding octets (0 = P bit clear), counting the
    final count octet itself, so 1-255 when present. ``extension`` is
    ``(profile, data)`` with ``len(data)`` a multiple of 4, or ``None`` (X bit
    clear); an empty ``data`` is a present but empty extension.
    """

    version: ClassVar[int] = RTP_VERSION

    payload_type: int = 0
    sequence: int = 0
    timestamp: int = 0
    ssrc: int = 0
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> RtpPacket:
        """Decode one datagram, or raise :class:`RtpError` saying what is wrong."""
        size = len(data)
        if size < HEADER_SIZE:
            raise RtpError(f"too short: {size} bytes, an RTP header is {HEADER_SIZE}")
        b0, b1, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        version = b0 >> 6
        if version != RTP_VERSION:
            raise RtpError(f"version {version} is not RTP version 2")

        count = b0 & 0x0F
        pos = HEADER_SIZE + 4 * count
        if size < pos:
            raise RtpError(f"CSRC list truncated: {count} CSRCs need {pos} bytes, got {size}")
        csrcs = _CSRCS[count].unpack_from(data, HEADER_SIZE) if count else ()

        extension = None
        if b0 & 0x10:
            if size < pos + 4:
                raise RtpError("header extension truncated: no room for its 4-byte header")
            profile, words = _EXT_HEADER.unpack_from(data, pos)
            pos += 4
            end = pos + 4 * words
            if size < end:
                raise RtpError(
                    f"header extension truncated: {words} words need {end} bytes, got {size}"
                )
            extension = (profile, bytes(data[pos:end]))
            pos = end

        padding = 0
        end = size
        if b0 & 0x20:
            padding = data[-1]
            if padding == 0:
                raise RtpError("padding length is zero (the count includes itself)")
            if padding > size - pos:
                raise RtpError(
                    f"padding length exceeds packet: {padding} > {size - pos} bytes after header"
                )
            end = size - padding

        return cls(
            payload_type=b1 & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[pos:end]),
            marker=bool(b1 & 0x80),
            csrcs=csrcs,
            extension=extension,
            padding=padding,
        )

    def build(self) -> bytes:
        """Encode per RFC 3550 §5.1; padding octets are zero except the final count."""
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type {self.payload_type} is not 0-127")
        csrcs, extension, padding = self.csrcs, self.extension, self.padding
        if not csrcs and extension is None and not padding:
            try:
                return (
                    _HEADER.pack(
                        0x80,
                        (0x80 if self.marker else 0) | self.payload_type,
                        self.sequence,
                        self.timestamp,
                        self.ssrc,
                    )
                    + self.payload
                )
            except struct.error as exc:
                raise ValueError(f"RTP header field out of range: {exc}") from None
        return self._build_general()

    __bytes__ = build
    serialize = build

    def _build_general(self) -> bytes:
        """The slow path: CSRCs, a header extension and/or padding."""
        csrcs, extension, padding = self.csrcs, self.extension, self.padding
        if len(csrcs) > MAX_CSRCS:
            raise ValueError(f"{len(csrcs)} CSRCs, at most {MAX_CSRCS} fit")
        if not 0 <= padding <= 255:
            raise ValueError(f"padding {padding} is not 0-255")
        ext_size = 0
        if extension is not None:
            ext_size = len(extension[1])
            if ext_size % 4 or ext_size > 4 * 0xFFFF:
                raise ValueError(f"extension data of {ext_size} bytes is not whole 32-bit words")
            ext_size += 4
        csrc_size = 4 * len(csrcs)
        pos = HEADER_SIZE + csrc_size + ext_size
        buf = bytearray(pos + len(self.payload) + padding)
        b0 = 0x80 | (0x20 if padding else 0) | (0x10 if extension is not None else 0) | len(csrcs)
        try:
            _HEADER.pack_into(
                buf,
                0,
                b0,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence,
                self.timestamp,
                self.ssrc,
            )
            _CSRCS[len(csrcs)].pack_into(buf, HEADER_SIZE, *csrcs)
            if extension is not None:
                profile, data = extension
                _EXT_HEADER.pack_into(buf, HEADER_SIZE + csrc_size, profile, len(data) // 4)
                buf[HEADER_SIZE + csrc_size + 4 : pos] = data
        except struct.error as exc:
            raise ValueError(f"RTP header field out of range: {exc}") from None
        buf[pos : pos + len(self.payload)] = self.payload
        if padding:
            buf[-1] = padding
        return bytes(buf)


class RtpSender:
    """Sequence number, timestamp and SR counters of one outgoing RTP stream.

    Random initial sequence and timestamp (RFC 3550 §5.1) unless given, so
    restarts are not mistaken for old packets and plaintext attacks get harder.
    """

    def __init__(
        self,
        ssrc: int | None = None,
        payload_type: int = 0,
        clock_rate: int = 8000,
        initial_seq: int | None = None,
        initial_ts: int | None = None,
    ) -> None:
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload type {payload_type} is not 0-127")
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc & 0xFFFFFFFF
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        #: Sequence number and timestamp of the next packet.
        self.sequence = secrets.randbits(16) if initial_seq is None else initial_seq % SEQ_MOD
        self.timestamp = secrets.randbits(32) if initial_ts is None else initial_ts % TS_MOD
        #: Timestamp of the last packet sent (the next one's before any is sent).
        self.last_timestamp = self.timestamp
        #: SR counters: packets and payload octets sent (header and padding excluded).
        self.packet_count = 0
        self.octet_count = 0

    def next(self, payload: bytes, timestamp_step: int, marker: bool = False) -> bytes:
        """Packet for ``payload`` at the current timestamp, then advance by its duration.

        ``timestamp_step`` is the payload's duration in clock-rate units (160 for
        20 ms at 8 kHz), i.e. how far the *next* packet's timestamp moves.
        """
        packet = (
            _HEADER.pack(
                0x80,
                (0x80 if marker else 0) | self.payload_type,
                self.sequence,
                self.timestamp,
                self.ssrc,
            )
            + payload
        )
        self.last_timestamp = self.timestamp
        self.sequence = (self.sequence + 1) % SEQ_MOD
        self.timestamp = (self.timestamp + timestamp_step) % TS_MOD
        self.packet_count += 1
        self.octet_count += len(payload)
        return packet

    def skip(self, timestamp_step: int) -> None:
        """Advance the timestamp without sending (silence suppression, DTX); sequence stays."""
        self.timestamp = (self.timestamp + timestamp_step) % TS_MOD


# RFC 3550 Appendix A.1 constants.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
_CUMULATIVE_MIN = -(1 << 23)
_CUMULATIVE_MAX = (1 << 23) - 1


class ReceiverStats:
    """Reception statistics of one source, per RFC 3550 Appendix A.1, A.3 and A.8.

    Feed every packet with its arrival time in seconds (any monotonic clock);
    read the fields of an RTCP report block back. Duplicates count as received,
    as in A.3, so the cumulative loss can go negative. ``min_sequential`` > 0
    enables A.1's probation: a new source counts only after that many
    consecutive sequence numbers.
    """

    def __init__(self, clock_rate: int, ssrc: int | None = None, min_sequential: int = 0) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock rate {clock_rate} is not positive")
        self.clock_rate = clock_rate
        #: Source this tracks; taken from the first packet when not given.
        self.ssrc = ssrc
        self.min_sequential = min_sequential
        self.received = 0
        self.max_seq = 0
        self.cycles = 0  # count of sequence wraps, times SEQ_MOD
        self.base_seq = 0
        self.bad_seq = SEQ_MOD + 1  # impossible value: no bad sequence seen yet
        self.probation = min_sequential
        self.started = False
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: float | None = None
        self._jitter = 0.0
        #: Middle 32 bits of the last SR's NTP time and its arrival (for LSR/DLSR).
        self.last_sr = 0
        self.last_sr_arrival: float | None = None

    # -- feeding ---------------------------------------------------------

    def receive(self, packet: RtpPacket, arrival: float) -> bool:
        """Account for ``packet`` arriving at ``arrival`` seconds; False if it is ignored.

        Ignored: another SSRC, a packet during probation, or a large sequence jump
        before the second packet confirms the source restarted (A.1).
        """
        return self.update(packet.ssrc, packet.sequence, packet.timestamp, arrival)

    def update(self, ssrc: int, sequence: int, timestamp: int, arrival: float) -> bool:
        """:meth:`receive` without a parsed packet (for callers holding other packet types)."""
        if self.ssrc is None:
            self.ssrc = ssrc
        elif ssrc != self.ssrc:
            return False
        if not self.started:
            self.started = True
            self._init_seq(sequence)
            if self.probation:
                self.max_seq = (sequence - 1) % SEQ_MOD  # so this one counts as sequential
            else:
                self.received = 1
                self._update_jitter(timestamp, arrival)
                return True
        if not self._update_seq(sequence):
            return False
        self._update_jitter(timestamp, arrival)
        return True

    def on_sender_report(self, ntp_timestamp: int, arrival: float) -> None:
        """Remember an SR from this source so report blocks carry LSR and DLSR."""
        self.last_sr = (ntp_timestamp >> 16) & 0xFFFFFFFF
        self.last_sr_arrival = arrival

    def _init_seq(self, sequence: int) -> None:
        self.base_seq = sequence
        self.max_seq = sequence
        self.bad_seq = SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit = None  # a restarted source restarts its timestamps too

    def _update_seq(self, seq: int) -> bool:
        """A.1 ``update_seq``: wrap, misorder, dropout and restart handling."""
        udelta = (seq - self.max_seq) % SEQ_MOD
        if self.probation:
            if seq == (self.max_seq + 1) % SEQ_MOD:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = self.min_sequential - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += SEQ_MOD  # in order, with permissible gap: wrapped
            self.max_seq = seq
        elif udelta <= SEQ_MOD - MAX_MISORDER:
            if seq == self.bad_seq:
                # Two sequential packets after a big jump: the sender restarted.
                self._init_seq(seq)
            else:
                self.bad_seq = (seq + 1) % SEQ_MOD
                return False
        # else: duplicate or reordered packet, counted below as in A.1.
        self.received += 1
        return True

    def _update_jitter(self, timestamp: int, arrival: float) -> None:
        """A.8: J += (|D(i-1, i)| - J) / 16, in timestamp units."""
        transit = arrival * self.clock_rate - timestamp
        if self._transit is not None:
            d = transit - self._transit
            d = (d + TS_MOD / 2) % TS_MOD - TS_MOD / 2  # RTP timestamps wrap at 2^32
            self._jitter += (abs(d) - self._jitter) / 16
        self._transit = transit

    # -- reading ---------------------------------------------------------

    @property
    def extended_highest_sequence(self) -> int:
        """Highest sequence number received, with wrap cycles in the upper 16 bits."""
        return (self.cycles + self.max_seq) & 0xFFFFFFFF

    @property
    def expected(self) -> int:
        if not self.started or self.probation:
            return 0
        return self.cycles + self.max_seq - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Packets lost since the start; negative when duplicates arrived. Unclamped."""
        return self.expected - self.received

    @property
    def cumulative_lost(self) -> int:
        """:attr:`lost` clamped to the report block's signed 24-bit field."""
        return max(_CUMULATIVE_MIN, min(_CUMULATIVE_MAX, self.lost))

    @property
    def jitter(self) -> int:
        """Interarrival jitter estimate in timestamp units, as a report block carries it."""
        return int(self._jitter)

    @property
    def jitter_seconds(self) -> float:
        return self._jitter / self.clock_rate

    def fraction_lost(self) -> int:
        """A.3 fraction lost since the previous call, in 1/256 units; starts a new interval.

        Call it once per report block sent: it is what moves the interval on.
        """
        expected = self.expected
        expected_interval = expected - self._expected_prior
        self._expected_prior = expected
        received_interval = self.received - self._received_prior
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval <= 0 or lost_interval <= 0:
            return 0
        return min(255, (lost_interval << 8) // expected_interval)

    def dlsr(self, now: float) -> int:
        """Delay since the last SR from this source, in 1/65536 s (0 if none yet)."""
        if self.last_sr_arrival is None:
            return 0
        delay = max(0.0, now - self.last_sr_arrival)
        return min(0xFFFFFFFF, int(delay * 65536))
