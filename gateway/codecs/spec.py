"""What the gateway knows about each codec it speaks: SDP name, rates, payload type."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CodecSpec:
    name: str  # SDP encoding name, as written in a=rtpmap
    clock_rate: int  # RTP timestamp clock
    sample_rate: int  # rate the codec encodes at (G.722: 16 kHz on an 8 kHz clock)
    channels: int  # channel count written in SDP (Opus is always "/2", RFC 7587)
    payload_type: int  # static or default dynamic payload type
    fmtp: str | None = None

    def timestamp_step(self, ptime_ms: int) -> int:
        return self.clock_rate * ptime_ms // 1000

    def frame_samples(self, ptime_ms: int) -> int:
        return self.sample_rate * ptime_ms // 1000

    @property
    def rtpmap(self) -> str:
        suffix = f"/{self.channels}" if self.channels > 1 else ""
        return f"{self.name}/{self.clock_rate}{suffix}"


OPUS = CodecSpec("opus", 48000, 48000, 2, 111, "minptime=10;useinbandfec=1")
PCMU = CodecSpec("PCMU", 8000, 8000, 1, 0)
PCMA = CodecSpec("PCMA", 8000, 8000, 1, 8)
G722 = CodecSpec("G722", 8000, 16000, 1, 9)
L16_8K = CodecSpec("L16", 8000, 8000, 1, 118)
L16_16K = CodecSpec("L16", 16000, 16000, 1, 119)
L16_48K = CodecSpec("L16", 48000, 48000, 1, 120)

#: Codecs negotiable over WebRTC (and the default choice of each name).
CODECS: dict[str, CodecSpec] = {c.name.lower(): c for c in (OPUS, PCMU, PCMA, G722)}
L16 = {c.clock_rate: c for c in (L16_8K, L16_16K, L16_48K)}
#: Packet times each codec accepts, in ms (Opus has no 30 ms frame).
PTIMES: dict[str, tuple[int, ...]] = {
    "opus": (10, 20, 40, 60),
    "pcmu": (10, 20, 30, 40),
    "pcma": (10, 20, 30, 40),
    "g722": (10, 20, 30, 40),
    "l16": (10, 20, 30, 40),
}


def codec_by_name(name: str, rate: int | None = None) -> CodecSpec:
    """Look a codec up by SDP name (any case); L16 takes a rate. ValueError names choices."""
    key = name.lower()
    if key == "l16":
        if (rate or 48000) not in L16:
            raise ValueError(f"L16 rate must be one of {sorted(L16)}, got {rate}")
        return L16[rate or 48000]
    try:
        return CODECS[key]
    except KeyError:
        known = ", ".join([*(c.name for c in CODECS.values()), "L16"])
        raise ValueError(f"unknown codec {name!r}; known: {known}") from None


def check_ptime(spec: CodecSpec, ptime: int) -> int:
    allowed = PTIMES[spec.name.lower()]
    if ptime not in allowed:
        raise ValueError(f"{spec.name} packet time must be one of {allowed} ms, got {ptime}")
    return ptime
