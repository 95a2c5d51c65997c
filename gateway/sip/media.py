"""The RTP side of one SIP call: a socket pair, symmetric RTP, DTMF and the caller's audio.

The gateway's packets to the phone leave from the same socket the phone sends to, and
go to where the phone's packets really come from once one has arrived (latching), so a
phone behind NAT hears the stream even though its SDP names a private address.

RTCP: the phone's RTP is counted as RFC 3550 says (``reception``), so the gateway's
sender reports to the phone carry a report block about it (loss, jitter, LSR/DLSR);
the phone's own reports (on port + 1, or muxed on the RTP port) go to ``on_rtcp``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
import struct
import time
from collections.abc import Callable

import numpy as np

from ..codecs.spec import CodecSpec
from ..core.counters import SenderCounters, SenderStats
from ..ingress.playout import Playout
from ..models.info import CallMediaInfo
from ..rtp import rtcp, stun
from ..rtp.feedback import SourceReception
from ..rtp.packet import RtpError, RtpPacket, is_rtcp
from .dtmf import DtmfReceiver
from .sdes import SrtpError, SrtpPair

log = logging.getLogger(__name__)

_SEQ_TS_SSRC = struct.Struct("!HII")  # sequence, timestamp, SSRC from byte 2

#: STUN answers per call and second, at most: a Binding response is up to twice the size
#: of a minimal request, so unthrottled answers would amplify traffic to a spoofed source.
STUN_ANSWERS_PER_S = 10


class MediaPortsExhausted(OSError):
    """No free RTP port pair in the configured range."""


class CallMedia(asyncio.DatagramProtocol):
    """Receives the phone's RTP; owns the socket the gateway sends the stream from."""

    def __init__(self, on_digit: Callable[[str], None] | None = None) -> None:
        self.sock: socket.socket | None = None
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp_transport: asyncio.DatagramTransport | None = None
        self.rtcp_sock: socket.socket | None = None  # port + 1: our RTCP leaves from it
        self.rtcp_remote: tuple | None = None  # where the phone's RTCP comes from (the call)
        #: The phone's parsed RTCP packets (set by the call: its reports about our stream).
        self.on_rtcp: Callable[[list[rtcp.RtcpPacket], tuple], None] | None = None
        #: RFC 3550 statistics of the phone's RTP (the call sets the codec's clock rate).
        self.reception = SourceReception(8000)
        self.remote: tuple | None = None  # latched source of the phone's RTP
        self.on_latch: Callable[[tuple], None] | None = None
        self.on_digit = on_digit
        self.playout: Playout | None = None  # set when the caller's audio is published
        self._earlier_playouts = SenderCounters()  # what playouts replaced on re-INVITE counted
        self.telephone_event: int | None = None
        self.dtmf = DtmfReceiver()
        self.packets = 0
        self.rtcp_packets = 0
        self.rtcp_malformed = 0
        self.malformed = 0
        self.stun = 0  # STUN messages (NAT keepalives) on the RTP and RTCP ports
        self._stun_window = (0.0, 0)  # (start of the current second, answers in it)
        self.last_activity = time.monotonic()  # RTP or RTCP from the phone
        self.srtp: SrtpPair | None = None  # SDES keys negotiated: packets are SRTP
        self.srtp_failed = 0  # SRTP packets that failed authentication (dropped)
        self.srtcp_failed = 0  # and SRTCP ones

    # -- asyncio protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if stun.is_stun(data):
            self.stun_received(data, addr, self.transport)
            return
        if is_rtcp(data):
            self.rtcp_received(data, addr)
            return
        if len(data) < 12 or data[0] >> 6 != 2:
            self.malformed += 1
            return
        if self.srtp is not None:
            try:
                data = self.srtp.unprotect(data)
            except SrtpError:
                self.srtp_failed += 1  # forged, replayed or not ours: dropped
                return
        self.packets += 1
        self.last_activity = now = time.monotonic()
        seq, timestamp, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
        self.reception.packet(ssrc, seq, timestamp, now)
        if addr != self.remote:
            self.remote = addr
            if self.on_latch is not None:
                self.on_latch(addr)
        if self.playout is None and data[1] & 0x7F != self.telephone_event:
            return  # a listen-only call: the packet proves the phone lives, nothing more
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self.malformed += 1
            return
        if packet.payload_type == self.telephone_event:
            digit = self.dtmf.feed(packet.timestamp, packet.marker, packet.payload)
            if digit is not None and self.on_digit is not None:
                self.on_digit(digit)
            return
        if self.playout is not None:
            self.playout.push(packet.sequence, packet.payload_type, packet.payload, packet.ssrc,
                             packet.timestamp)

    def rtcp_received(self, data: bytes, addr: tuple) -> None:
        """The phone's RTCP (on either port): it lives; its SR is echoed in our next
        report block; its report blocks about our stream go to the call."""
        if self.srtp is not None:
            try:
                data = self.srtp.unprotect_rtcp(data)
            except SrtpError:
                self.srtcp_failed += 1  # baresip sends an unprotected RTCP APP at start
                return
        self.rtcp_packets += 1
        self.last_activity = now = time.monotonic()
        try:
            packets = rtcp.parse_compound(data)
        except rtcp.RtcpError:
            self.rtcp_malformed += 1
            return
        for packet in packets:
            if isinstance(packet, rtcp.SenderReport):
                self.reception.sender_report(packet.ssrc, packet.ntp_timestamp, now)
        if self.on_rtcp is not None:
            self.on_rtcp(packets, addr)

    def report_blocks(self) -> list[rtcp.ReportBlock]:
        """A block about the phone's RTP for our next SR (none before its first packet)."""
        return self.reception.report_blocks(time.monotonic())

    def stun_received(self, data: bytes, addr: tuple,
                      transport: asyncio.DatagramTransport | None) -> None:
        """A STUN message on the RTP or RTCP port: a keepalive proves the phone lives, and
        an unsigned Binding request is answered from the port it reached."""
        try:
            message = stun.parse(data)
        except stun.StunError:
            self.malformed += 1
            return
        self.stun += 1
        self.last_activity = now = time.monotonic()
        if not message.is_binding_request or message.signed or transport is None:
            return
        start, answered = self._stun_window
        if now - start >= 1.0:
            start, answered = now, 0
        if answered < STUN_ANSWERS_PER_S:
            self._stun_window = (start, answered + 1)
            transport.sendto(stun.binding_success(message, addr), addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("call media port %d: %s", self.port, exc)

    def publish(self, codecs: dict[int, CodecSpec], max_depth: int = 5) -> None:
        """Start decoding the phone's audio (the caller publishes into a stream)."""
        if self.playout is None or self.playout.codecs != codecs:
            if self.playout is not None:
                self._earlier_playouts.add(self.playout.stats().counters)
            self.playout = Playout(codecs, min_depth=1, max_depth=max_depth)

    def pull(self) -> np.ndarray | None:
        return self.playout.pull() if self.playout is not None else None

    def stats(self) -> SenderStats | None:
        """The caller's audio: the playout's delays, and counters over the whole call."""
        if self.playout is None:
            return None
        stats = self.playout.stats()
        stats.counters.add(self._earlier_playouts)
        return stats

    def idle_for(self) -> float:
        return time.monotonic() - self.last_activity

    def close(self) -> None:
        for transport in (self.transport, self.rtcp_transport):
            if transport is not None:
                transport.close()
        self.transport = self.rtcp_transport = None

    def info(self) -> CallMediaInfo:
        return CallMediaInfo(
            local_port=self.port,
            remote=f"{self.remote[0]}:{self.remote[1]}" if self.remote else None,
            srtp=self.srtp.suite if self.srtp is not None else None,
            srtp_failed=self.srtp_failed,
            srtcp_failed=self.srtcp_failed,
            packets_in=self.packets,
            rtcp_in=self.rtcp_packets,
            malformed_in=self.malformed,
            stun_in=self.stun,
            dtmf_digits=self.dtmf.digits,
            playout=self.playout.info() if self.playout is not None else None,
        )


class RtcpSink(asyncio.DatagramProtocol):
    """The odd port next to the RTP one: phones send RTCP there; it proves they live."""

    def __init__(self, media: CallMedia) -> None:
        self.media = media

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if stun.is_stun(data):
            self.media.stun_received(data, addr, self.transport)
            return
        self.media.rtcp_received(data, addr)


class MediaPorts:
    """Hands out even RTP ports (RTCP on the odd one above) from a configured range."""

    def __init__(self, host: str, port_min: int, port_max: int) -> None:
        self.host = host
        self.port_min = port_min + (port_min % 2)
        self.port_max = port_max
        self.in_use: set[int] = set()

    async def open(self, media: CallMedia) -> CallMedia:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for port in self._candidates(64):
            rtp = socket.socket(family, socket.SOCK_DGRAM)
            rtcp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                rtp.bind((self.host, port))
                rtcp.bind((self.host, port + 1))
            except OSError as exc:
                rtp.close()
                rtcp.close()
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            rtp.setblocking(False)
            rtp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 18)
            try:
                await loop.create_datagram_endpoint(lambda: media, sock=rtp)
                media.rtcp_transport, _ = await loop.create_datagram_endpoint(
                    lambda: RtcpSink(media), sock=rtcp
                )
            except BaseException:  # cancelled (a CANCEL) half-way: keep no socket open
                media.close()
                rtp.close()
                rtcp.close()
                raise
            media.sock = rtp
            media.rtcp_sock = rtcp
            media.port = port
            self.in_use.add(port)
            return media
        raise MediaPortsExhausted(
            errno.EADDRINUSE, f"no free RTP port in {self.port_min}-{self.port_max}"
        )

    def _candidates(self, count: int) -> list[int]:
        """Up to ``count`` random free even ports, without walking the whole range."""
        pairs = (self.port_max - self.port_min) // 2
        if len(self.in_use) > pairs // 2:  # crowded: pick from the free ones
            free = [p for p in range(self.port_min, self.port_max, 2) if p not in self.in_use]
            return random.sample(free, min(count, len(free)))
        picked: set[int] = set()
        while len(picked) < min(count, pairs - len(self.in_use)):
            port = self.port_min + 2 * random.randrange(pairs)
            if port not in self.in_use:
                picked.add(port)
        return list(picked)

    def release(self, media: CallMedia) -> None:
        media.close()
        self.in_use.discard(media.port)
