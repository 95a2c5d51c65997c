"""Plain RTP in: a UDP port whose packets become a stream's sender.

Malformed packets and unknown payload types are counted and dropped. The playout's
jitter buffer handles reordering, duplicates, loss, SSRC changes and sender clock drift.

RTCP: a sender that sends its own RTCP to the input (on the RTP port, RFC 5761 mux, or on
port + 1 when the input was opened with ``rtcp_port``) gets receiver reports back where its
RTCP came from: fraction and number lost, highest sequence, jitter, and LSR/DLSR for
its round trip (RFC 3550 §6.4.2), every 5 s (randomised, A.7). A sender that sends no
RTCP gets none: it did not ask, and its address may not want unsolicited packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import secrets
import socket
import time

import numpy as np

from gateway.core.ids import new_id

from ..codecs.spec import CodecSpec
from ..core.counters import SenderStats
from ..core.stream import Stream
from ..models.info import RtpInputInfo
from ..rtp import rtcp
from ..rtp.feedback import RTCP_MIN_INTERVAL_S, rtcp_interval
from ..rtp.packet import RtpError, RtpPacket, is_rtcp
from .playout import Playout

log = logging.getLogger(__name__)

#: RFC 3550's minimum report interval (a test may shorten it).
REPORT_INTERVAL_S = RTCP_MIN_INTERVAL_S
#: The session bandwidth A.7 divides (octets/s): a 64 kbit/s stream, 5 % for RTCP.
_RTCP_BW = 64000 / 8 * 0.05
#: Audio an input holds however it arrives: plain RTP senders that are not real-time
#: stacks send a chunk of their input at once (``ffmpeg -re``: 256 ms).
BURST_S = 0.3


class InputError(ValueError):
    """The input cannot be created (bad port, port in use); the message says why."""

    def __init__(self, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict  # the port is taken: 409 rather than 400


class RtpInput(asyncio.DatagramProtocol):
    kind = "rtp"

    def __init__(self, stream: Stream, codecs: dict[int, CodecSpec], max_depth: int = 5) -> None:
        self.id = new_id(8)
        self.stream = stream
        self.playout = Playout(codecs, min_depth=1, max_depth=max_depth, burst_s=BURST_S)
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.port = 0
        self.malformed = 0
        self.rtcp_packets = 0
        self.rtcp_malformed = 0
        self.source: tuple | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp_transport: asyncio.DatagramTransport | None = None  # port + 1, if opened
        #: Where the sender's RTCP comes from, and the transport it reached: reports go back.
        self.rtcp_peer: tuple[asyncio.DatagramTransport, tuple] | None = None
        self.ssrc = secrets.randbits(32)  # ours, in the receiver reports
        self.closed = False
        self._reporter: asyncio.Task | None = None

    @property
    def last_packet(self) -> float | None:
        return self.playout.last_packet

    # -- asyncio protocol (per packet) -------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if is_rtcp(data):
            self.rtcp_received(data, addr, self.transport)
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpError as exc:
            self.malformed += 1
            if self.malformed == 1 or self.malformed % 1000 == 0:
                log.warning("rtp input %s: malformed packet from %s: %s", self.id, addr, exc)
            return
        self.source = addr
        self.playout.push(packet.sequence, packet.payload_type, packet.payload, packet.ssrc,
                         packet.timestamp)

    def rtcp_received(self, data: bytes, addr: tuple,
                      transport: asyncio.DatagramTransport | None) -> None:
        """The sender's RTCP: remember where to report to, and its SR's time for LSR."""
        self.rtcp_packets += 1
        try:
            packets = rtcp.parse_compound(data)
        except rtcp.RtcpError:
            self.rtcp_malformed += 1
            return
        if transport is not None:
            self.rtcp_peer = (transport, addr)
        for packet in packets:
            if isinstance(packet, rtcp.SenderReport):
                self.playout.on_sender_report(packet.ssrc, packet.ntp_timestamp)
        if self._reporter is None and not self.closed:
            self._reporter = asyncio.get_running_loop().create_task(
                self._report(), name=f"rtcp-rr-{self.id}")

    async def _report(self) -> None:
        """Receiver reports to the sender's RTCP address, as long as the input lives."""
        initial = True
        while not self.closed:
            await asyncio.sleep(rtcp_interval(2, 1, _RTCP_BW, False, 100, initial,
                                              random.random, REPORT_INTERVAL_S))
            initial = False
            self.send_report()

    def send_report(self, extra: tuple[rtcp.RtcpPacket, ...] = ()) -> None:
        if self.rtcp_peer is None:
            return
        transport, addr = self.rtcp_peer
        packets: list[rtcp.RtcpPacket] = [
            rtcp.ReceiverReport(self.ssrc, tuple(self.playout.report_blocks())),
            rtcp.Sdes.for_cname(self.ssrc, f"gateway-{self.stream.name}"), *extra]
        with contextlib.suppress(OSError):
            transport.sendto(rtcp.build_compound(packets), addr)

    # -- FrameSource ---------------------------------------------------------------
    def pull(self) -> np.ndarray | None:
        return self.playout.pull()

    def stats(self) -> SenderStats:
        return self.playout.stats()

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.stream.detach(self)  # type: ignore[arg-type]
        if self._reporter is not None:
            self._reporter.cancel()
            self.send_report((rtcp.Bye((self.ssrc,), "input closed"),))
        for transport in (self.transport, self.rtcp_transport):
            if transport is not None:
                transport.close()
        log.info("rtp input %s on port %d ended: %s", self.id, self.port, reason)

    def info(self) -> RtpInputInfo:
        return RtpInputInfo(
            id=self.id,
            type="rtp",
            kind="rtp",
            stream=self.stream.name,
            port=self.port,
            codecs={pt: spec.name for pt, spec in self.playout.codecs.items()},
            source=f"{self.source[0]}:{self.source[1]}" if self.source else None,
            malformed=self.malformed,
            rtcp_port=self.port + 1 if self.rtcp_transport is not None else None,
            rtcp_packets=self.rtcp_packets,
            rtcp_peer=f"{self.rtcp_peer[1][0]}:{self.rtcp_peer[1][1]}" if self.rtcp_peer
            else None,
            since=self.started,
            **vars(self.playout.info()),
        )


class RtcpPort(asyncio.DatagramProtocol):
    """Port + 1 of an input opened with ``rtcp_port``: the sender's RTCP (RTP/AVP, no mux)."""

    def __init__(self, owner: RtpInput) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.owner.rtcp_received(data, addr, self.transport)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _bind_pair(host: str, port: int, with_rtcp: bool) -> tuple[socket.socket, socket.socket | None]:
    """The RTP socket, and with ``with_rtcp`` the one on the port above (port 0: any
    pair, RTP on the even port as RFC 3550 §11 asks)."""
    if not with_rtcp:
        return _bind(host, port), None
    for _ in range(1 if port else 40):
        rtp = _bind(host, port)
        actual = rtp.getsockname()[1]
        if not port and actual % 2:
            rtp.close()
            continue
        try:
            return rtp, _bind(host, actual + 1)
        except OSError as exc:
            rtp.close()
            if port or exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, "no free port pair")


async def open_rtp_input(
    stream: Stream, host: str, port: int, codecs: dict[int, CodecSpec], max_depth: int = 5,
    attach: bool = True, rtcp_port: bool = False,
) -> RtpInput:
    """Bind the port (checked by the request, models.limits.ListenPort, or by the SDP
    parser), and port + 1 for RTCP with ``rtcp_port``, and (unless ``attach`` is false) attach
    the input as the stream's sender."""
    loop = asyncio.get_running_loop()
    protocol = RtpInput(stream, codecs, max_depth)
    try:
        rtp_sock, rtcp_sock = _bind_pair(host, port, rtcp_port)
    except OSError as exc:
        which = f"{port} or {port + 1}" if rtcp_port and port else str(port)
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"port {which} is already in use", conflict=True) from None
        raise InputError(f"cannot listen on {host}:{which}: {exc.strerror}") from None
    transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=rtp_sock)
    if rtcp_sock is not None:
        protocol.rtcp_transport, _ = await loop.create_datagram_endpoint(
            lambda: RtcpPort(protocol), sock=rtcp_sock)
    protocol.port = transport.get_extra_info("sockname")[1]
    if attach:
        try:
            stream.attach(protocol)  # type: ignore[arg-type]
        except Exception:
            transport.close()
            if protocol.rtcp_transport is not None:
                protocol.rtcp_transport.close()
            raise
    log.info("rtp input %s: %s:%d -> stream %s", protocol.id, host, protocol.port, stream.name)
    return protocol
