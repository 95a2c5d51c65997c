"""Sans-IO RTCP (RFC 3550 §6): SR, RR, SDES and BYE in compound packets, and NTP time.

Parse returns plain dataclasses (unknown packet types are kept as
:class:`UnknownRtcp`, so feedback from browsers does not break a receive loop);
build is the exact inverse. Parsing untrusted input raises only :class:`RtcpError`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .packet import ReceiverStats, RtpSender

SR = 200
RR = 201
SDES = 202
BYE = 203

SDES_CNAME = 1
MAX_COUNT = 31  # the 5-bit RC/SC field

#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET = 2_208_988_800

_HEADER = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_SENDER_INFO = struct.Struct("!IIIIII")  # SSRC, NTP msw, NTP lsw, RTP ts, packets, octets
_REPORT_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction|lost, highest, jitter, LSR, DLSR


class RtcpError(ValueError):
    """Data that is not a well-formed RTCP compound packet (the only error parse raises)."""


# -- NTP time ----------------------------------------------------------------


def ntp_from_unix(seconds: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point since 1900) of a Unix wall-clock time."""
    whole = math.floor(seconds)
    fraction = int((seconds - whole) * (1 << 32))
    return (((whole + NTP_UNIX_OFFSET) << 32) | fraction) & 0xFFFF_FFFF_FFFF_FFFF


def unix_from_ntp(ntp: int) -> float:
    """Inverse of :func:`ntp_from_unix` (for the current NTP era)."""
    return (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: what an RR echoes as LSR."""
    return (ntp >> 16) & 0xFFFFFFFF


# -- packet types ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """Reception report about one source (RFC 3550 §6.4.1).

    ``cumulative_lost`` is signed 24-bit (negative with duplicates); ``lsr`` is
    the middle 32 bits of the last SR's NTP time, ``dlsr`` in 1/65536 s.
    """

    ssrc: int
    fraction_lost: int = 0
    cumulative_lost: int = 0
    highest_seq: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    def _pack(self) -> bytes:
        if not 0 <= self.fraction_lost <= 255:
            raise ValueError(f"fraction lost {self.fraction_lost} is not 0-255")
        if not -(1 << 23) <= self.cumulative_lost < (1 << 23):
            raise ValueError(f"cumulative lost {self.cumulative_lost} is not signed 24-bit")
        loss = (self.fraction_lost << 24) | (self.cumulative_lost & 0xFFFFFF)
        return _pack(
            _REPORT_BLOCK, self.ssrc, loss, self.highest_seq, self.jitter, self.lsr, self.dlsr
        )

    @classmethod
    def _unpack(cls, data: bytes, pos: int) -> ReportBlock:
        ssrc, loss, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, pos)
        lost = loss & 0xFFFFFF
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, loss >> 24, lost, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR (PT 200): what a sender has sent, tying its RTP clock to wall-clock time."""

    ssrc: int
    ntp_timestamp: int = 0
    rtp_timestamp: int = 0
    packet_count: int = 0
    octet_count: int = 0
    reports: tuple[ReportBlock, ...] = ()
    #: Profile-specific extension after the report blocks (whole 32-bit words).
    profile_extension: bytes = b""

    packet_type = SR

    def _body(self) -> tuple[int, bytes]:
        info = _pack(
            _SENDER_INFO,
            self.ssrc,
            self.ntp_timestamp >> 32,
            self.ntp_timestamp & 0xFFFFFFFF,
            self.rtp_timestamp,
            self.packet_count,
            self.octet_count,
        )
        blocks = b"".join(block._pack() for block in self.reports)
        return len(self.reports), info + blocks + _words(self.profile_extension)


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR (PT 201): reception reports from a participant that is not sending."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    profile_extension: bytes = b""

    packet_type = RR

    def _body(self) -> tuple[int, bytes]:
        blocks = b"".join(block._pack() for block in self.reports)
        return len(self.reports), _pack(_U32, self.ssrc) + blocks + _words(self.profile_extension)


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One source's description items: ``(item type 1-255, value bytes)`` pairs."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()

    @property
    def cname(self) -> str | None:
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value.decode("utf-8", errors="replace")
        return None

    def _pack(self) -> bytes:
        out = bytearray(_pack(_U32, self.ssrc))
        for kind, value in self.items:
            if not 1 <= kind <= 255:
                raise ValueError(f"SDES item type {kind} is not 1-255")
            if len(value) > 255:
                raise ValueError(f"SDES item of {len(value)} bytes, at most 255 fit")
            out += bytes((kind, len(value))) + value
        # At least one null octet ends the item list, then pad to a 32-bit boundary.
        out += bytes(4 - len(out) % 4)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class Sdes:
    """SDES (PT 202): source descriptions; the CNAME binds an SSRC to a participant."""

    chunks: tuple[SdesChunk, ...] = ()

    packet_type = SDES

    @classmethod
    def for_cname(cls, ssrc: int, cname: str) -> Sdes:
        return cls((SdesChunk(ssrc, ((SDES_CNAME, cname.encode()),)),))

    def _body(self) -> tuple[int, bytes]:
        return len(self.chunks), b"".join(chunk._pack() for chunk in self.chunks)


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE (PT 203): the sources are leaving; ``reason`` is optional text."""

    sources: tuple[int, ...] = ()
    reason: str | None = None

    packet_type = BYE

    def _body(self) -> tuple[int, bytes]:
        body = b"".join(_pack(_U32, ssrc) for ssrc in self.sources)
        if self.reason is not None:
            text = self.reason.encode()
            if len(text) > 255:
                raise ValueError(f"BYE reason of {len(text)} bytes, at most 255 fit")
            reason = bytes((len(text),)) + text
            body += reason + bytes(-len(reason) % 4)
        return len(self.sources), body


@dataclass(frozen=True, slots=True)
class UnknownRtcp:
    """Any other packet type (APP, feedback, XR...), kept whole so it can be passed on."""

    packet_type: int
    count: int = 0  # the 5-bit RC/SC/FMT field
    payload: bytes = b""

    def _body(self) -> tuple[int, bytes]:
        if self.packet_type in (SR, RR, SDES, BYE) or not 0 <= self.packet_type <= 255:
            raise ValueError(f"packet type {self.packet_type} is not an unknown RTCP type")
        return self.count, _words(self.payload)


RtcpPacket = SenderReport | ReceiverReport | Sdes | Bye | UnknownRtcp


# -- build -------------------------------------------------------------------


def _pack(fmt: struct.Struct, *values: int) -> bytes:
    try:
        return fmt.pack(*values)
    except struct.error as exc:
        raise ValueError(f"RTCP field out of range: {exc}") from None


def _words(data: bytes) -> bytes:
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes is not whole 32-bit words")
    return data


def build_packet(packet: RtcpPacket) -> bytes:
    """One RTCP packet with its common header (never padded)."""
    count, body = packet._body()
    if not 0 <= count <= MAX_COUNT:
        raise ValueError(f"{count} report blocks/sources/chunks, at most {MAX_COUNT} fit")
    words = len(body) // 4
    if words > 0xFFFF:
        raise ValueError(f"RTCP packet body of {len(body)} bytes is too long")
    return _HEADER.pack(0x80 | count, packet.packet_type, words) + body


def build_compound(packets: Iterable[RtcpPacket]) -> bytes:
    """Concatenate packets into one compound datagram (order is the caller's: SR/RR first)."""
    return b"".join(build_packet(packet) for packet in packets)


# -- parse -------------------------------------------------------------------


def parse_compound(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Split and decode a compound RTCP datagram (RFC 3550 §6.1, A.2 length checks).

    Lenient where interop needs it: the first packet need not be SR/RR
    (reduced-size RTCP, RFC 5506), and padding is accepted on any packet.
    """
    data = bytes(data)
    if not data:
        raise RtcpError("too short: empty datagram")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise RtcpError(f"too short: {len(data) - pos} bytes left, a header is 4")
        b0, packet_type, words = _HEADER.unpack_from(data, pos)
        version = b0 >> 6
        if version != 2:
            raise RtcpError(f"version {version} is not RTP version 2")
        end = pos + 4 + 4 * words
        if end > len(data):
            raise RtcpError(f"length field says {end - pos} bytes, only {len(data) - pos} left")
        body_end = end
        if b0 & 0x20:
            padding = data[end - 1]
            if padding == 0 or padding > 4 * words:
                raise RtcpError(f"padding length {padding} is invalid for a {4 * words}-byte body")
            body_end -= padding
        packets.append(_parse_one(packet_type, b0 & 0x1F, data[pos + 4 : body_end]))
        pos = end
    return packets


def _parse_one(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == SR:
        return _parse_sr(count, body)
    if packet_type == RR:
        return _parse_rr(count, body)
    if packet_type == SDES:
        return _parse_sdes(count, body)
    if packet_type == BYE:
        return _parse_bye(count, body)
    return UnknownRtcp(packet_type, count, body)


def _report_blocks(count: int, body: bytes, pos: int, kind: str) -> tuple[ReportBlock, ...]:
    if len(body) < pos + 24 * count:
        raise RtcpError(f"{kind} truncated: {count} report blocks do not fit in {len(body)} bytes")
    return tuple(ReportBlock._unpack(body, pos + 24 * i) for i in range(count))


def _parse_sr(count: int, body: bytes) -> SenderReport:
    if len(body) < 24:
        raise RtcpError(f"SR too short: {len(body)} bytes, sender info is 24")
    ssrc, msw, lsw, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body)
    reports = _report_blocks(count, body, 24, "SR")
    return SenderReport(
        ssrc, (msw << 32) | lsw, rtp_ts, packets, octets, reports, body[24 + 24 * count :]
    )


def _parse_rr(count: int, body: bytes) -> ReceiverReport:
    if len(body) < 4:
        raise RtcpError(f"RR too short: {len(body)} bytes, no SSRC")
    reports = _report_blocks(count, body, 4, "RR")
    return ReceiverReport(_U32.unpack_from(body)[0], reports, body[4 + 24 * count :])


def _parse_sdes(count: int, body: bytes) -> Sdes:
    chunks = []
    pos = 0
    for _ in range(count):
        if len(body) < pos + 4:
            raise RtcpError("SDES chunk truncated: no SSRC")
        ssrc = _U32.unpack_from(body, pos)[0]
        pos += 4
        items = []
        while True:
            if pos >= len(body):
                raise RtcpError("SDES chunk truncated: item list has no null terminator")
            kind = body[pos]
            if kind == 0:
                pos = (pos + 4) & ~3  # the null octet(s) pad to the next 32-bit boundary
                break
            if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                raise RtcpError("SDES item truncated")
            length = body[pos + 1]
            items.append((kind, body[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return Sdes(tuple(chunks))


def _parse_bye(count: int, body: bytes) -> Bye:
    if len(body) < 4 * count:
        raise RtcpError(f"BYE truncated: {count} SSRCs do not fit in {len(body)} bytes")
    sources = struct.unpack_from(f"!{count}I", body)
    reason = None
    pos = 4 * count
    if pos < len(body):
        length = body[pos]
        if pos + 1 + length > len(body):
            raise RtcpError("BYE reason truncated")
        reason = body[pos + 1 : pos + 1 + length].decode("utf-8", errors="replace")
    return Bye(sources, reason)


# -- helpers for senders and receivers ------------------------------------------


def make_sender_report(
    sender: RtpSender,
    wall_time: float,
    rtp_timestamp: int,
    reports: Sequence[ReportBlock] = (),
) -> SenderReport:
    """An SR from a sender's counters; ``rtp_timestamp`` is the media clock at ``wall_time``.

    Counters wrap at 2^32 on the wire, as RFC 3550 §6.4.1 says they do.
    """
    return SenderReport(
        ssrc=sender.ssrc,
        ntp_timestamp=ntp_from_unix(wall_time),
        rtp_timestamp=rtp_timestamp & 0xFFFFFFFF,
        packet_count=sender.packet_count & 0xFFFFFFFF,
        octet_count=sender.octet_count & 0xFFFFFFFF,
        reports=tuple(reports),
    )


def report_block(stats: ReceiverStats, now: float) -> ReportBlock:
    """A report block from receiver statistics; starts a new fraction-lost interval.

    ``now`` is on the same clock as the arrival times given to ``stats``.
    """
    if stats.ssrc is None:
        raise ValueError("no packet received yet: the source SSRC is unknown")
    return ReportBlock(
        ssrc=stats.ssrc,
        fraction_lost=stats.fraction_lost(),
        cumulative_lost=stats.cumulative_lost,
        highest_seq=stats.extended_highest_sequence,
        jitter=min(stats.jitter, 0xFFFFFFFF),
        lsr=stats.last_sr,
        dlsr=stats.dlsr(now),
    )


def sender_report(
    *,
    ssrc: int,
    ntp_time: float,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    cname: str | None = None,
    reports: Sequence[ReportBlock] = (),
) -> bytes:
    """A ready-to-send compound SR (+ SDES CNAME); ``ntp_time`` is Unix wall-clock seconds."""
    packets: list[RtcpPacket] = [
        SenderReport(
            ssrc=ssrc,
            ntp_timestamp=ntp_from_unix(ntp_time),
            rtp_timestamp=rtp_timestamp & 0xFFFFFFFF,
            packet_count=packet_count & 0xFFFFFFFF,
            octet_count=octet_count & 0xFFFFFFFF,
            reports=tuple(reports),
        )
    ]
    if cname is not None:
        packets.append(Sdes.for_cname(ssrc, cname))
    return build_compound(packets)


def receiver_report(
    *, ssrc: int, reports: Sequence[ReportBlock] = (), cname: str | None = None
) -> bytes:
    """A ready-to-send compound RR (+ SDES CNAME)."""
    packets: list[RtcpPacket] = [ReceiverReport(ssrc, tuple(reports))]
    if cname is not None:
        packets.append(Sdes.for_cname(ssrc, cname))
    return build_compound(packets)


def bye(ssrc: int, reason: str | None = None) -> bytes:
    """A ready-to-send compound RR + BYE: RFC 3550 §6.1 wants SR/RR first in every compound."""
    return build_compound([ReceiverReport(ssrc), Bye((ssrc,), reason)])
