"""The RTP side of one SIP call: a socket pair, symmetric RTP, DTMF and the caller's audio.

The gateway's packets to the phone leave from the same socket the phone sends to, and
go to where the phone's packets really come from once one has arrived (latching), so a
phone behind NAT hears the stream even though its SDP names a private address.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..codecs.spec import CodecSpec
from ..ingress.playout import Playout
from ..rtp.packet import RtpError, RtpPacket, is_rtcp
from .dtmf import DtmfReceiver

log = logging.getLogger(__name__)


class MediaPortsExhausted(OSError):
    """No free RTP port pair in the configured range."""


class CallMedia(asyncio.DatagramProtocol):
    """Receives the phone's RTP; owns the socket the gateway sends the stream from."""

    def __init__(self, on_digit: Callable[[str], None] | None = None) -> None:
        self.sock: socket.socket | None = None
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp_transport: asyncio.DatagramTransport | None = None
        self.remote: tuple | None = None  # latched source of the phone's RTP
        self.on_latch: Callable[[tuple], None] | None = None
        self.on_digit = on_digit
        self.playout: Playout | None = None  # set when the caller's audio is published
        self.telephone_event: int | None = None
        self.dtmf = DtmfReceiver()
        self.packets = 0
        self.rtcp_packets = 0
        self.malformed = 0
        self.last_activity = time.monotonic()  # RTP or RTCP from the phone

    # -- asyncio protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if is_rtcp(data):
            self.rtcp_packets += 1
            self.last_activity = time.monotonic()
            return
        if len(data) < 12 or data[0] >> 6 != 2:
            self.malformed += 1
            return
        self.packets += 1
        self.last_activity = time.monotonic()
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
            self.playout.push(packet.sequence, packet.payload_type, packet.payload, packet.ssrc)

    def error_received(self, exc: Exception) -> None:
        log.debug("call media port %d: %s", self.port, exc)

    def publish(self, codecs: dict[int, CodecSpec], max_depth: int = 5) -> None:
        """Start decoding the phone's audio (the caller publishes into a stream)."""
        if self.playout is None or self.playout.codecs != codecs:
            self.playout = Playout(codecs, min_depth=1, max_depth=max_depth)

    def pull(self) -> np.ndarray | None:
        return self.playout.pull() if self.playout is not None else None

    def idle_for(self) -> float:
        return time.monotonic() - self.last_activity

    def close(self) -> None:
        for transport in (self.transport, self.rtcp_transport):
            if transport is not None:
                transport.close()
        self.transport = self.rtcp_transport = None

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "local_port": self.port,
            "remote": f"{self.remote[0]}:{self.remote[1]}" if self.remote else None,
            "packets_in": self.packets,
            "rtcp_in": self.rtcp_packets,
            "malformed_in": self.malformed,
            "dtmf_digits": self.dtmf.digits,
        }
        if self.playout is not None:
            out["playout"] = self.playout.info()
        return out


class RtcpSink(asyncio.DatagramProtocol):
    """The odd port next to the RTP one: phones send RTCP there; it proves they live."""

    def __init__(self, media: CallMedia) -> None:
        self.media = media

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.media.rtcp_packets += 1
        self.media.last_activity = time.monotonic()


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
            await loop.create_datagram_endpoint(lambda: media, sock=rtp)
            media.rtcp_transport, _ = await loop.create_datagram_endpoint(
                lambda: RtcpSink(media), sock=rtcp
            )
            media.sock = rtp
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
