"""WHIP publisher: RTP from a WebRTC sender into the stream's ring.

aiortc's audio jitter buffer (prefetch 4, and a delay that grows for good after one
loss) is replaced by a tap that hands every depayloaded packet to the gateway's own
playout (bounded jitter buffer, decoder); the media clock pulls one frame per tick.
aiortc still sends the publisher a receiver report about once a second, with the
playout's reception statistics (so the browser's encoder sees its loss and turns FEC on).
"""

from __future__ import annotations

import numpy as np
from aiortc import RTCRtpTransceiver
from aiortc.rtp import RtpPacket

from ..codecs.spec import OPUS
from ..core.counters import SenderStats
from ..models.info import PublisherInfo
from ..rtp.packet import ReceiverStats
from ..webrtc.aiortc_patches import (
    depayloaded,
    negotiated_codecs,
    replace_jitter_buffer,
    report_reception,
)
from ..webrtc.session import WebRTCSession, codec_spec
from .playout import Playout


class PacketTap:
    """Stands in for aiortc's JitterBuffer: takes each packet, never decodes in aiortc."""

    capacity = 16

    def __init__(self, playout: Playout) -> None:
        self._playout = playout

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        self._playout.push(packet.sequence_number, packet.payload_type, depayloaded(packet),
                           packet.ssrc, packet.timestamp)
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
        for codec in negotiated_codecs(transceiver):
            spec = codec_spec(codec.mimeType)
            if spec is not None:
                self.playout.codecs[codec.payloadType] = spec
            if spec is OPUS:  # RFC 7587: the receiver says it can use in-band FEC, so a
                # browser's encoder adds it when our receiver reports show loss
                codec.parameters.update(minptime=10, useinbandfec=1)
        self.playout.source.clock_rate = self.playout.clock_rate()
        if self.red_payload_type is not None:
            self.playout.red_payload_types.add(self.red_payload_type)
        replace_jitter_buffer(transceiver.receiver, PacketTap(self.playout))
        report_reception(transceiver.receiver, self._reception, self._reported)

    def _reception(self, ssrc: int) -> ReceiverStats | None:
        return self.playout.source.for_ssrc(ssrc)

    def _reported(self) -> None:
        self.playout.source.reports += 1

    def pull(self) -> np.ndarray | None:
        return self.playout.pull()

    def stats(self) -> SenderStats:
        return self.playout.stats()

    def release(self) -> None:
        self.stream.detach(self)

    def info(self) -> PublisherInfo:
        return PublisherInfo(**self.fields(), **vars(self.playout.info()))
