"""Plain RTP in: a UDP port whose packets become a stream's sender.

Malformed packets and unknown payload types are counted and dropped; RTCP on the same
port (RFC 5761 mux) or on port+1 is counted and ignored. The playout's jitter buffer
handles reordering, duplicates, loss, SSRC changes and sender clock drift.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import time
from typing import Any

import numpy as np

from ..codecs.spec import CodecSpec
from ..core.stream import Stream
from ..rtp.packet import RtpError, RtpPacket, is_rtcp
from .playout import Playout

log = logging.getLogger(__name__)


class InputError(ValueError):
    """The input cannot be created (bad port, port in use); the message says why."""

    def __init__(self, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict  # the port is taken: 409 rather than 400


class RtpInput(asyncio.DatagramProtocol):
    kind = "rtp"

    def __init__(self, stream: Stream, codecs: dict[int, CodecSpec], max_depth: int = 5) -> None:
        self.id = secrets.token_urlsafe(8)
        self.stream = stream
        self.playout = Playout(codecs, min_depth=1, max_depth=max_depth)
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.port = 0
        self.malformed = 0
        self.rtcp_packets = 0
        self.source: tuple | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.closed = False

    @property
    def last_packet(self) -> float | None:
        return self.playout.last_packet

    # -- asyncio protocol (per packet) -------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if is_rtcp(data):
            self.rtcp_packets += 1
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpError as exc:
            self.malformed += 1
            if self.malformed == 1 or self.malformed % 1000 == 0:
                log.warning("rtp input %s: malformed packet from %s: %s", self.id, addr, exc)
            return
        self.source = addr
        self.playout.push(packet.sequence, packet.payload_type, packet.payload, packet.ssrc)

    # -- FrameSource ---------------------------------------------------------------
    def pull(self) -> np.ndarray | None:
        return self.playout.pull()

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.stream.detach(self)  # type: ignore[arg-type]
        if self.transport is not None:
            self.transport.close()
        log.info("rtp input %s on port %d ended: %s", self.id, self.port, reason)

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "rtp",
            "kind": "rtp",
            "stream": self.stream.name,
            "port": self.port,
            "codecs": {pt: spec.name for pt, spec in self.playout.codecs.items()},
            "source": f"{self.source[0]}:{self.source[1]}" if self.source else None,
            "malformed": self.malformed,
            "rtcp_packets": self.rtcp_packets,
            "since": self.started,
            **self.playout.info(),
        }


async def open_rtp_input(
    stream: Stream, host: str, port: int, codecs: dict[int, CodecSpec], max_depth: int = 5
) -> RtpInput:
    """Bind the port and attach the input as the stream's sender."""
    if not 0 <= port < 65536:
        raise InputError(f"port must be 0-65535, got {port}")
    loop = asyncio.get_running_loop()
    protocol = RtpInput(stream, codecs, max_depth)
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: protocol, local_addr=(host, port)
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} is already in use", conflict=True) from None
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    protocol.port = transport.get_extra_info("sockname")[1]
    try:
        stream.attach(protocol)  # type: ignore[arg-type]
    except Exception:
        transport.close()
        raise
    log.info("rtp input %s: %s:%d -> stream %s", protocol.id, host, protocol.port, stream.name)
    return protocol
