"""Encode once per (stream, codec, bitrate) and fan the packets out through a ring.

Listeners never own an encoder: they read the shared encoder's packet ring (WHEP
listeners and RTP outputs through one fan-out per encoder, which reads each packet
once), so ten or a thousand listeners on one stream cost one encode per 20 ms. The
stream's ring drives the encoder and the packet ring drives the fan-outs
(``Ring.drive``): a frame is encoded and sent in the media clock's tick that wrote it.

An Opus encoder's in-band FEC follows the loss its listeners report in RTCP (the worst
of them, with hysteresis: ``codecs/fec_policy.py``); other codecs have none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from ..codecs.fec_policy import FecPolicy
from ..codecs.spec import CodecSpec
from ..codecs.transcode import Packetizer
from ..core.audio import FRAME_MS
from ..core.ring import Ring, RingClosed, RingReader
from ..core.stream import Stream
from ..models.info import EncoderInfo

log = logging.getLogger(__name__)

#: Packets kept per encoder: one second at 20 ms.
PACKET_RING = 50
#: Frames between two looks at the FEC policy without a report (its hold and staleness).
FEC_CHECK_FRAMES = 50


@dataclass(slots=True)
class EncodedPacket:
    """One encoded packet, shared read-only by every listener of its encoder."""

    timestamp: int  # in the codec's RTP clock, counted from the stream's start
    payload: bytes


def encoder_key(spec: CodecSpec, bitrate: int | None, ptime: int) -> tuple:
    return (spec.name.lower(), spec.clock_rate, bitrate if spec.name == "opus" else None, ptime)


class SharedEncoder:
    """Reads the stream's ring with its own cursor, as the ring's writes drive it, and
    writes encoded packets."""

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
        self.fec = FecPolicy()
        self.fec_changes = 0
        self._reader = stream.ring.reader(kind="encoder")
        self._per_frame = spec.timestamp_step(FRAME_MS)  # RTP clock ticks per frame
        self._next_ts: int | None = None  # the next packet's RTP timestamp
        self._expected = 0  # the frame index that follows the last one read
        stream.ring.drive(self._pump)
        stream.counters.encoders_created += 1

    def _pump(self) -> None:
        """Encode every frame written since the last call: the stream's ring calls it as
        each frame is written, so the packets leave in the media clock's tick."""
        try:
            while (got := self._reader.read_nowait()) is not None:
                self._encode(*got)
        except RingClosed:
            self._halt()
        except Exception:
            log.exception("encoder %s for stream %s failed", self.spec.name, self.stream.name)
            self._halt()

    def _encode(self, index: int, frame: np.ndarray) -> None:
        next_ts = self._next_ts
        if next_ts is None:
            next_ts = index * self._per_frame
        elif index != self._expected:  # media time passed unread (a clock jump, a skip):
            next_ts += (index - self._expected) * self._per_frame  # timestamps follow it
        self._expected = index + 1
        step = self._packetizer.timestamp_step
        for payload in self._packetizer.encode(frame):
            self.packets.write(EncodedPacket(next_ts, payload))
            next_ts += step
        self._next_ts = next_ts
        self.frames_encoded += 1
        if self.frames_encoded % FEC_CHECK_FRAMES == 0 and self.fec.percent:
            self._apply_fec(self.fec.decide(time.monotonic()))

    def _halt(self) -> None:
        """The stream ended, or encoding failed: no more packets; readers see the end."""
        self.stream.ring.undrive(self._pump)
        self.packets.close()

    def report_loss(self, listener: Hashable, loss: float, now: float | None = None) -> None:
        """A listener's smoothed reported loss (0-1, from its RTCP receiver reports)."""
        now = time.monotonic() if now is None else now
        self._apply_fec(self.fec.report(listener, loss, now))

    def forget_loss(self, listener: Hashable) -> None:
        """The listener left: its reports no longer count (the hold still applies)."""
        self.fec.forget(listener)

    def _apply_fec(self, percent: int) -> None:
        if self._packetizer.expected_loss not in (None, percent):
            self._packetizer.set_expected_loss(percent)
            self.fec_changes += 1
            log.info("encoder %s/%s for stream %s: in-band FEC %s",
                     self.spec.name, self.bitrate, self.stream.name,
                     f"for {percent} % loss" if percent else "off")

    def subscribe(self, kind: str = "reader") -> RingReader[EncodedPacket]:
        """A cursor on the packets; ``kind`` (webrtc, rtp, recording) labels its skips."""
        self.subscribers += 1
        return self.packets.reader(kind=kind)

    def unsubscribe(self, reader: RingReader[EncodedPacket]) -> None:
        reader.close()
        self.subscribers -= 1
        if self.subscribers <= 0:
            self.stop()

    def stop(self) -> None:
        self._halt()
        self._reader.close()
        if self.stream.egress.get(self.key) is self:
            del self.stream.egress[self.key]
            self.stream.end_packet_ring(self.packets)

    def info(self) -> EncoderInfo:
        return EncoderInfo(
            codec=self.spec.name,
            clock_rate=self.spec.clock_rate,
            bitrate=self.bitrate,
            ptime=self.ptime,
            subscribers=self.subscribers,
            frames_encoded=self.frames_encoded,
            skipped_frames=self._reader.skipped,
            expected_loss_percent=self._packetizer.expected_loss,
        )


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
