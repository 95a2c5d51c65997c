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
from ..codecs.transcode import Packetizer
from ..core.audio import FRAME_MS, SAMPLE_RATE
from ..core.ring import Ring, RingClosed, RingReader
from ..core.stream import Stream

log = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
#: Packets kept per encoder: one second at 20 ms.
PACKET_RING = 50


@dataclass(slots=True)
class EncodedPacket:
    """One encoded packet, shared read-only by every listener of its encoder."""

    timestamp: int  # in the codec's RTP clock, counted from the stream's start
    payload: bytes
    pts: int  # the same instant in 48 kHz samples
    _av_packet: av.Packet | None = None

    @property
    def av_packet(self) -> av.Packet:
        """The packet as aiortc's pass-through wants it (made once, on first use)."""
        if self._av_packet is None:
            packet = av.Packet(self.payload)
            packet.pts = self.pts
            packet.time_base = TIME_BASE
            self._av_packet = packet
        return self._av_packet


def encoder_key(spec: CodecSpec, bitrate: int | None, ptime: int) -> tuple:
    return (spec.name.lower(), spec.clock_rate, bitrate if spec.name == "opus" else None, ptime)


class SharedEncoder:
    """Reads the stream's ring with its own cursor and writes encoded packets."""

    created_total = 0  # every encoder ever started, for tests and metrics

    def __init__(
        self, stream: Stream, spec: CodecSpec, bitrate: int | None, ptime: int = 20
    ) -> None:
        self.stream = stream
        self.spec = spec
        self.bitrate = bitrate if spec.name == "opus" else None
        self.ptime = ptime
        self.key = encoder_key(spec, bitrate, ptime)
        self.packets: Ring[EncodedPacket] = Ring(PACKET_RING)
        self.subscribers = 0
        self.frames_encoded = 0
        self._packetizer = Packetizer(spec, ptime, self.bitrate)
        self._reader = stream.ring.reader()
        self._task = asyncio.create_task(self._run(), name=f"encode-{stream.name}-{spec.name}")
        SharedEncoder.created_total += 1

    async def _run(self) -> None:
        try:
            step = self._packetizer.timestamp_step
            per_frame = self.spec.timestamp_step(FRAME_MS)
            next_ts: int | None = None
            while True:
                index, frame = await self._reader.read()
                if next_ts is None:
                    next_ts = index * per_frame
                for payload in self._packetizer.encode(frame):
                    pts = next_ts * SAMPLE_RATE // self.spec.clock_rate
                    self.packets.write(EncodedPacket(next_ts, payload, pts))
                    next_ts += step
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
            "ptime": self.ptime,
            "subscribers": self.subscribers,
            "frames_encoded": self.frames_encoded,
            "skipped_frames": self._reader.skipped,
        }


def shared_encoder(
    stream: Stream, spec: CodecSpec, bitrate: int | None = None, ptime: int = 20
) -> SharedEncoder:
    """The stream's encoder for this codec, bitrate and packet time, started on first use."""
    key = encoder_key(spec, bitrate, ptime)
    encoder = stream.egress.get(key)
    if encoder is None:
        encoder = SharedEncoder(stream, spec, bitrate, ptime)
        stream.egress[key] = encoder
    return encoder
