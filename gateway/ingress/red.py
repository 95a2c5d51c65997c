"""RED (RFC 2198) into a playout: the primary as its own packet, earlier copies as
candidates for packets that went missing.

A RED payload names no sequence numbers: a redundant block is ``offset`` RTP timestamp
units older than its packet. With Opus the duration of the block itself is in its first
byte (RFC 6716 §3.1), so a block of 960 samples 960 units back is the previous packet
(distance 1), 1920 back the one before (distance 2). A block whose offset is no whole
number of its own durations is not placed anywhere.
"""

from __future__ import annotations

from ..codecs.spec import CodecSpec
from ..rtp.red import RedError, parse_red

#: Samples (48 kHz) of one Opus frame for each TOC configuration (RFC 6716 §3.1):
#: SILK-only 10/20/40/60 ms, hybrid 10/20 ms, CELT-only 2.5/5/10/20 ms.
_OPUS_FRAME = (
    *(480, 960, 1920, 2880) * 3,
    *(480, 960) * 2,
    *(120, 240, 480, 960) * 4,
)


def opus_samples(packet: bytes) -> int:
    """Samples per channel at 48 kHz in an Opus packet (0 for an empty or cut one)."""
    if not packet:
        return 0
    toc = packet[0]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code < 3:
        frames = 2
    elif len(packet) < 2:
        return 0
    else:
        frames = packet[1] & 0x3F
    return _OPUS_FRAME[toc >> 3] * frames


class RedSplitter:
    """Splits one sender's RED payloads; counts what could not be used."""

    __slots__ = ("codecs", "malformed", "unplaced", "last_error")

    def __init__(self, codecs: dict[int, CodecSpec]) -> None:
        self.codecs = codecs  # the playout's: payload type -> codec
        self.malformed = 0  # RED payloads that did not parse (dropped whole)
        self.unplaced = 0  # redundant blocks of an unknown codec or an odd offset
        self.last_error = ""

    def split(self, payload: bytes) -> tuple[int, bytes, list[tuple[int, int, bytes]]] | None:
        """(primary payload type, primary, [(distance back, payload type, copy), ...]),
        or None for a payload that is not well-formed RED (counted, reason kept)."""
        try:
            red = parse_red(payload)
        except RedError as exc:
            self.malformed += 1
            self.last_error = str(exc)
            return None
        copies: list[tuple[int, int, bytes]] = []
        for block in red.redundant:
            spec = self.codecs.get(block.payload_type)
            step = opus_samples(block.data) if spec is not None and spec.name == "opus" else 0
            if not step or block.offset % step or not block.offset:
                self.unplaced += 1
                continue
            copies.append((block.offset // step, block.payload_type, block.data))
        return red.payload_type, red.primary, copies
