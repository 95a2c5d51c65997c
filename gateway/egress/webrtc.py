"""WHEP listener: the stream's shared encoder's packets out to one WebRTC peer.

The track hands aiortc ``av.Packet``s that were encoded once for every listener on
the same codec; aiortc only packetizes them (no per-listener encoder).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc import MediaStreamTrack, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError

from ..codecs.spec import OPUS
from ..core.ring import RingClosed, RingReader
from ..webrtc.session import WebRTCSession
from .encoders import EncodedPacket, SharedEncoder, shared_encoder


class PacketTrack(MediaStreamTrack):
    """An audio track whose recv() returns pre-encoded packets from a shared encoder."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.reader: RingReader[EncodedPacket] | None = None
        self._bound = asyncio.Event()
        self.sent = 0

    def bind(self, reader: RingReader[EncodedPacket]) -> None:
        self.reader = reader
        self._bound.set()

    async def recv(self):  # type: ignore[no-untyped-def]
        if self.readyState != "live":
            raise MediaStreamError
        await self._bound.wait()
        assert self.reader is not None
        if self.sent == 0:
            self.reader.seek_head()  # media starts flowing only once ICE/DTLS are up
        try:
            _, packet = await self.reader.read()
        except RingClosed:
            self.stop()
            raise MediaStreamError from None
        self.sent += 1
        return packet.av_packet


class WebRTCEgress(WebRTCSession):
    role = "listener"

    def __init__(self, pc, stream, opus_bitrate: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(pc, stream)
        self.opus_bitrate = opus_bitrate
        self.track = PacketTrack()
        self.encoder: SharedEncoder | None = None

    def prepare(self, transceiver: RTCRtpTransceiver) -> None:
        assert self.codec is not None
        transceiver.direction = "sendonly"
        transceiver.sender.replaceTrack(self.track)
        bitrate = self.opus_bitrate if self.codec is OPUS else None
        self.encoder = shared_encoder(self.stream, self.codec, bitrate)
        self.track.bind(self.encoder.subscribe())
        self.stream.add_listener(self)

    def release(self) -> None:
        self.stream.remove_listener(self)
        if self.encoder is not None and self.track.reader is not None:
            self.encoder.unsubscribe(self.track.reader)
            self.encoder = None
        self.track.stop()

    def info(self) -> dict[str, Any]:
        reader = self.track.reader
        return {
            **super().info(),
            "packets_sent": self.track.sent,
            "skipped": reader.skipped if reader else 0,
        }
