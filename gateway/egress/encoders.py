"""Encode once per (stream, codec, bitrate) and fan the packets out through a ring.

Listeners never own an encoder: each holds a cursor into the shared encoder's packet
ring, so ten or a thousand listeners on one stream cost one encode per 20 ms.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from dataclasses import dataclass
from typing import Any

import av

from ..codecs.spec import CodecSpec
from ..codecs.transcode import make_encoder
from ..core.audio import FRAME_SAMPLES, SAMPLE_RATE
from ..core.ring import Ring, RingClosed, RingReader
from ..core.stream import Stream

log = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
#: Packets kept per encoder: one second at 20 ms.
PACKET_RING = 50


@dataclass(slots=True)
class EncodedPacket:
    """One encoded 20 ms frame, shared read-only by every listener."""

    index: int  # frame index on the stream (time = index * 20 ms)
    payload: bytes
    av_packet: av.Packet  # for aiortc's pass-through (pts/time_base set)


class SharedEncoder:
    """Reads the stream's ring with its own cursor and writes encoded packets."""

    created_total = 0  # every encoder ever started, for tests and metrics

    def __init__(self, stream: Stream, spec: CodecSpec, bitrate: int | None) -> None:
        self.stream = stream
        self.spec = spec
        self.bitrate = bitrate
        self.key = (spec.name.lower(), spec.clock_rate, bitrate)
        self.packets: Ring[EncodedPacket] = Ring(PACKET_RING)
        self.subscribers = 0
        self.frames_encoded = 0
        self._encoder = make_encoder(spec, bitrate)
        self._reader = stream.ring.reader()
        self._task = asyncio.create_task(self._run(), name=f"encode-{stream.name}-{spec.name}")
        SharedEncoder.created_total += 1

    async def _run(self) -> None:
        try:
            while True:
                index, frame = await self._reader.read()
                payload = self._encoder.encode(frame)
                if not payload:
                    continue
                packet = av.Packet(payload)
                packet.pts = index * FRAME_SAMPLES
                packet.time_base = TIME_BASE
                self.packets.write(EncodedPacket(index, payload, packet))
                self.frames_encoded += 1
        except RingClosed:
            self.packets.close()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("encoder %s for stream %s failed", self.spec.name, self.stream.name)
            self.packets.close()

    def subscribe(self) -> RingReader[EncodedPacket]:
        self.subscribers += 1
        return self.packets.reader()

    def unsubscribe(self, reader: RingReader[EncodedPacket]) -> None:
        reader.close()
        self.subscribers -= 1
        if self.subscribers <= 0:
            self.stop()

    def stop(self) -> None:
        self._task.cancel()
        self._reader.close()
        self.packets.close()
        if self.stream.egress.get(self.key) is self:
            del self.stream.egress[self.key]

    def info(self) -> dict[str, Any]:
        return {
            "codec": self.spec.name,
            "clock_rate": self.spec.clock_rate,
            "bitrate": self.bitrate,
            "subscribers": self.subscribers,
            "frames_encoded": self.frames_encoded,
            "skipped_frames": self._reader.skipped,
        }


def shared_encoder(stream: Stream, spec: CodecSpec, bitrate: int | None) -> SharedEncoder:
    """The stream's encoder for this codec and bitrate, started on first use."""
    key = (spec.name.lower(), spec.clock_rate, bitrate)
    encoder = stream.egress.get(key)
    if encoder is None:
        encoder = SharedEncoder(stream, spec, bitrate)
        stream.egress[key] = encoder
    return encoder
