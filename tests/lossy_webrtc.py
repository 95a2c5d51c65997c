"""A WHIP publisher on a lossy uplink, for the loss tests and bench/loss_quality.py.

The kernel here has no netem, so the sending client drops packets itself (seeded, by
index among the media packets it sends: the same packets of the speech are lost on every
run). Its Opus encoder (aiortc's, FFmpeg's libopus) adds in-band FEC or not, and it can
send RED (RFC 2198) as browsers do: aiortc knows no RED, so the offer gets
``red/48000/2`` added and each Opus packet leaves wrapped with the previous one as its
redundant block.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from gateway.rtp.packet import RtpPacket
from gateway.rtp.red import red_with_previous
from gateway.webrtc.client import Publisher, ToneTrack

FRAME = 960
RED_PT = 63


def with_red(sdp: str, red_pt: int = RED_PT) -> str:
    """aiortc's offer with ``red/48000/2`` added after Opus, as browsers offer it."""
    opus = re.search(r"a=rtpmap:(\d+) opus/48000/2", sdp)
    assert opus
    pt = opus.group(1)
    lines = []
    for line in sdp.splitlines():
        if line.startswith("m=audio "):
            head, formats = line.split(" UDP/TLS/RTP/SAVPF ")
            rest = [f for f in formats.split() if f != pt]
            line = f"{head} UDP/TLS/RTP/SAVPF {pt} {red_pt} {' '.join(rest)}"
        lines.append(line)
        if line.startswith(f"a=rtpmap:{pt} "):
            lines += [f"a=rtpmap:{red_pt} red/48000/2", f"a=fmtp:{red_pt} {pt}/{pt}"]
    return "\r\n".join(lines) + "\r\n"


@contextmanager
def aiortc_opus(fec: bool, bitrate: int | None = None) -> Iterator[None]:
    """aiortc's Opus encoder with in-band FEC on (for 10 % expected loss, as a browser
    sets it when its receiver reports show loss) or off; ``bitrate`` or aiortc's."""
    from aiortc.codecs import opus as aiortc_opus

    original = aiortc_opus.OpusEncoder.__init__

    def init(self) -> None:  # type: ignore[no-untyped-def]
        original(self)
        if bitrate:
            self.codec.bit_rate = bitrate
        self.codec.options = {"application": "voip", "fec": str(int(fec)),
                              "packet_loss": "10" if fec else "0"}

    aiortc_opus.OpusEncoder.__init__ = init
    try:
        yield
    finally:
        aiortc_opus.OpusEncoder.__init__ = original


def speech_track(pcm: np.ndarray) -> ToneTrack:
    """``pcm`` as a paced WebRTC track (then silence)."""

    def generate(index: int) -> np.ndarray:
        chunk = pcm[index * FRAME : (index + 1) * FRAME]
        return chunk if len(chunk) == FRAME else np.zeros(FRAME, np.int16)

    return ToneTrack(generator=generate)


class LossyPublisher(Publisher):
    """Publishes ``pcm``; the media packets whose index is in ``drop`` never leave.
    ``sent`` keeps (sequence number, Opus payload, dropped) of every media packet."""

    def __init__(self, base_url: str, stream: str, pcm: np.ndarray, drop: set[int],
                 red: bool = False) -> None:
        super().__init__(base_url, stream, speech_track(pcm))
        self.red = red
        self.sent: list[tuple[int, bytes, bool]] = []
        self._drop = drop
        self._previous: bytes | None = None
        transport = self.pc.getSenders()[0].transport
        self._send = transport._send_rtp
        transport._send_rtp = self._lossy

    def offer_sdp(self) -> str:
        sdp = super().offer_sdp()
        return with_red(sdp) if self.red else sdp

    async def _lossy(self, data: bytes) -> None:
        if 192 <= data[1] <= 223:  # RTCP goes through
            await self._send(data)
            return
        packet = RtpPacket.parse(data)
        dropped = len(self.sent) in self._drop
        self.sent.append((packet.sequence, packet.payload, dropped))
        if self.red:
            payload = red_with_previous(packet.payload_type, packet.payload, self._previous,
                                        FRAME)
            self._previous = packet.payload
            data = dataclasses.replace(packet, payload_type=RED_PT, payload=payload).build()
        if not dropped:
            await self._send(data)

    @property
    def lost(self) -> set[int]:
        return {i for i, (_, _, dropped) in enumerate(self.sent) if dropped}

    @property
    def payloads(self) -> list[bytes]:
        return [payload for _, payload, _ in self.sent]
