"""WHIP publisher: RTP from a WebRTC sender into the stream's ring.

aiortc's audio jitter buffer (prefetch 4, and a delay that grows for good after one
loss) is replaced by a tap that hands every depayloaded packet to the gateway's own
bounded jitter buffer; the media clock then pulls one 20 ms frame per tick.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from aiortc import RTCRtpTransceiver
from aiortc.rtp import RtpPacket

from ..codecs.spec import CodecSpec
from ..codecs.transcode import Decoder, make_decoder
from ..core.audio import FRAME_SAMPLES
from ..rtp.jitter import JitterBuffer, Pop
from ..webrtc.session import WebRTCSession, codec_spec
from .concealment import Concealer


class PacketTap:
    """Stands in for aiortc's JitterBuffer: takes each packet, never decodes in aiortc."""

    capacity = 16

    def __init__(self, ingress: WebRTCIngress) -> None:
        self._ingress = ingress

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        self._ingress.on_packet(packet)
        return False, None


class WebRTCIngress(WebRTCSession):
    """A stream's sender, fed by a WHIP peer connection."""

    role = "publisher"

    def __init__(self, pc, stream, min_depth: int = 1, max_depth: int = 3) -> None:  # type: ignore[no-untyped-def]
        super().__init__(pc, stream)
        self.jitter = JitterBuffer(min_depth=min_depth, max_depth=max_depth)
        self.last_packet: float | None = None  # monotonic time of the last packet
        self._decoders: dict[int, Decoder] = {}
        self._specs: dict[int, CodecSpec] = {}
        self._fifo = np.zeros(0, dtype=np.int16)
        self._conceal = Concealer()
        self._loop = asyncio.get_event_loop()
        self.delay_ms_max = 0.0
        self.delay_ms_avg = 0.0
        self.frames = 0
        self.unknown_payload = 0

    def prepare(self, transceiver: RTCRtpTransceiver) -> None:
        transceiver.direction = "recvonly"
        for codec in transceiver._codecs:
            spec = codec_spec(codec.mimeType)
            if spec is not None:
                self._specs[codec.payloadType] = spec
        # aiortc offers no hook for this; the attribute is pinned by a regression test.
        transceiver.receiver._RTCRtpReceiver__jitter_buffer = PacketTap(self)  # type: ignore[attr-defined]

    # -- packets in (event loop, per packet) ---------------------------------------
    def on_packet(self, packet: RtpPacket) -> None:
        if packet.payload_type not in self._specs:
            self.unknown_payload += 1
            return
        now = time.monotonic()
        self.last_packet = now
        data = packet._data  # type: ignore[attr-defined]
        self.jitter.push(packet.sequence_number, (packet.payload_type, data, now), packet.ssrc)

    # -- frames out (media clock tick) -------------------------------------------
    def pull(self) -> np.ndarray | None:
        while len(self._fifo) < FRAME_SAMPLES:
            got = self.jitter.pop()
            if got is Pop.EMPTY:
                return None
            if got is Pop.LOST:
                pcm = self._conceal.conceal()
            else:
                pt, payload, arrived = got
                pcm = self._decoder(pt).decode(payload)
                self._conceal.remember(pcm)
                self._note_delay(time.monotonic() - arrived)
            self._fifo = pcm if not len(self._fifo) else np.concatenate((self._fifo, pcm))
        frame, self._fifo = self._fifo[:FRAME_SAMPLES], self._fifo[FRAME_SAMPLES:]
        self.frames += 1
        return frame

    def _decoder(self, pt: int) -> Decoder:
        decoder = self._decoders.get(pt)
        if decoder is None:
            decoder = self._decoders[pt] = make_decoder(self._specs[pt])
        return decoder

    def _note_delay(self, seconds: float) -> None:
        ms = seconds * 1000.0
        self.delay_ms_max = max(self.delay_ms_max, ms)
        self.delay_ms_avg += (ms - self.delay_ms_avg) / 16.0

    def release(self) -> None:
        self.stream.detach(self)

    def info(self) -> dict[str, Any]:
        stats = self.jitter.stats
        return {
            **super().info(),
            "frames": self.frames,
            "packets": stats.received,
            "lost": stats.lost,
            "late": stats.late,
            "underruns": stats.underruns,
            "jitter_target_ms": self.jitter.target * 20,
            "delay_ms_avg": round(self.delay_ms_avg, 1),
            "delay_ms_max": round(self.delay_ms_max, 1),
        }
