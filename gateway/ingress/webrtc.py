"""WHIP publisher: RTP from a WebRTC sender into the stream's ring.

aiortc's audio jitter buffer (prefetch 4, and a delay that grows for good after one
loss) is replaced by a tap that hands every depayloaded packet to the gateway's own
playout (bounded jitter buffer, decoder); the media clock pulls one frame per tick.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiortc import RTCRtpTransceiver
from aiortc.rtp import RtpPacket

from ..webrtc.session import WebRTCSession, codec_spec
from .playout import Playout


class PacketTap:
    """Stands in for aiortc's JitterBuffer: takes each packet, never decodes in aiortc."""

    capacity = 16

    def __init__(self, playout: Playout) -> None:
        self._playout = playout

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        data = packet._data  # type: ignore[attr-defined]  # depayloaded by aiortc
        self._playout.push(packet.sequence_number, packet.payload_type, data, packet.ssrc)
        return False, None


class WebRTCIngress(WebRTCSession):
    """A stream's sender, fed by a WHIP peer connection."""

    role = "publisher"

    def __init__(self, pc, stream, min_depth: int = 1, max_depth: int = 3) -> None:  # type: ignore[no-untyped-def]
        super().__init__(pc, stream)
        self.playout = Playout({}, min_depth, max_depth)

    @property
    def jitter(self):  # type: ignore[no-untyped-def]
        return self.playout.jitter

    @property
    def last_packet(self) -> float | None:
        return self.playout.last_packet

    @property
    def delay_ms_max(self) -> float:
        return self.playout.delay_ms_max

    def prepare(self, transceiver: RTCRtpTransceiver) -> None:
        transceiver.direction = "recvonly"
        for codec in transceiver._codecs:
            spec = codec_spec(codec.mimeType)
            if spec is not None:
                self.playout.codecs[codec.payloadType] = spec
        # aiortc offers no hook for this; the attribute is pinned by a regression test.
        receiver = transceiver.receiver
        receiver._RTCRtpReceiver__jitter_buffer = PacketTap(self.playout)  # type: ignore[attr-defined]

    def pull(self) -> np.ndarray | None:
        return self.playout.pull()

    def release(self) -> None:
        self.stream.detach(self)

    def info(self) -> dict[str, Any]:
        return {**super().info(), **self.playout.info()}
